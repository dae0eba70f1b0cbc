"""Delivery confirmation: does a PTB this host accepted have an owner here, and did its path
MTU drop? (docs/confirmation.md)

``verdict.py`` holds the closed sets of verdicts and origins (pure); ``wire.py`` encodes and
decodes the netlink messages (pure, tested with bytes); ``lookup.py`` is the thin I/O adapter
that asks the kernel; ``service.py`` schedules lookups on the event loop, bounded.
"""

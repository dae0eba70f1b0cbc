"""pmtud-relay: relay ICMP Packet Too Big messages to the server that owns the flow.

The package is split into a pure, sans-IO core (:mod:`pmtud_relay.core`) that turns
bytes and a clock value into decisions, and thin adapters around it: capture,
emit, the asyncio daemon and the command line.
"""

__version__ = "0.1.0"

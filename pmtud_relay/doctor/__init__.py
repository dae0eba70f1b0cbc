"""``pmtud-relay doctor``: inspect a host for what breaks PMTUD or the relay.

Read-only. Checks live in submodules (``sysctls``, ``pmtu_cache``, ``counters``,
``links``, ``relayproc``); each returns :class:`Finding` values with a severity and a
fix. The command line is in :mod:`pmtud_relay.doctor.command`.
"""

from pmtud_relay.doctor.command import CHECKS, add_parser, main, run_checks
from pmtud_relay.doctor.findings import Finding, Severity, exit_code

__all__ = ["CHECKS", "Finding", "Severity", "add_parser", "exit_code", "main", "run_checks"]

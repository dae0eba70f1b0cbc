"""Errors the daemon survives: counted (metrics, summary), logged at most once every 10 s.

A send error is the kernel refusing one copy; an internal error is a bug or an unexpected
exception on a path that must go on (the packet path, link events, the kernel-hold timer).
Both share one log limiter, so a storm of either costs one line per interval.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable

from pmtud_relay import metrics

LOG_EVERY = 10.0  # seconds between two error lines


class Faults:
    def __init__(self, stats: metrics.Stats, log: logging.Logger, clock: Callable[[], float]):
        self.stats = stats
        self.log = log
        self.clock = clock
        self.internal_errors = 0
        self.send_errors: Counter[str] = Counter()  # errno name -> copies refused
        self._last_log = 0.0

    def internal(self, what: str, ifname: str) -> None:
        """Count an internal error and log it with its traceback; call from an ``except``."""
        self.internal_errors += 1
        self.stats.internal_errors += 1
        self.log_error(what, ifname)

    def log_error(self, what: str, ifname: str) -> None:
        """Log the exception being handled (rate-limited), without counting it."""
        now = self.clock()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            self.log.error(what, exc_info=True, extra={"kv": {"interface": ifname, "total": self.internal_errors}})

    def send_error(self, err: int, ifname: str) -> None:
        name = self.stats.send_error(ifname, err)
        self.send_errors[name] += 1
        now = self.clock()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            self.log.warning("send_failed", extra={"kv": {
                "interface": ifname, "errno": name, "total": sum(self.send_errors.values())}})

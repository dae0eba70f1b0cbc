"""Token buckets on a caller-supplied monotonic clock: per outer source and global.

A packet spends a token only if every bucket it passes through has one, so a flood
from one source exhausts only that source's bucket and never the global one.
"""

from __future__ import annotations

from pmtud_relay.core.reasons import Reason

# Defaults, justified in docs/rate-limits.md.
DEFAULT_SOURCE_RATE = 5.0  # tokens per second per outer source
DEFAULT_SOURCE_BURST = 10.0
DEFAULT_GLOBAL_RATE = 50.0
DEFAULT_GLOBAL_BURST = 100.0
DEFAULT_SOURCE_CAPACITY = 65536


class TokenBucket:
    """A single bucket. ``rate`` tokens per second up to ``burst``; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float):
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def has_token(self, now: float) -> bool:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        return self.tokens >= 1.0


class RateLimiter:
    """Per-source buckets in a bounded table, plus one global bucket.

    The per-source table holds at most ``capacity`` sources; when full, the source
    seen first is evicted (its bucket would have refilled long ago unless it is a
    flood that 65 536 other sources already outran, which the global bucket bounds).
    Per-source state is two floats in a list to keep the per-packet cost low.
    """

    __slots__ = ("source_rate", "source_burst", "capacity", "_sources", "_global", "evictions")

    def __init__(
        self,
        source_rate: float = DEFAULT_SOURCE_RATE,
        source_burst: float = DEFAULT_SOURCE_BURST,
        global_rate: float = DEFAULT_GLOBAL_RATE,
        global_burst: float = DEFAULT_GLOBAL_BURST,
        capacity: int = DEFAULT_SOURCE_CAPACITY,
        now: float = 0.0,
    ):
        if source_rate <= 0 or source_burst < 1:
            raise ValueError("per-source rate must be > 0 and burst >= 1")
        if capacity < 1:
            raise ValueError("source table capacity must be >= 1")
        self.source_rate = source_rate
        self.source_burst = source_burst
        self.capacity = capacity
        self._sources: dict[bytes, list[float]] = {}
        self._global = TokenBucket(global_rate, global_burst, now)
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._sources)

    def check(self, source: bytes, now: float) -> Reason | None:
        """Spend one token from ``source``'s bucket and the global one, or say which is empty."""
        state = self._sources.get(source)
        if state is None:
            if len(self._sources) >= self.capacity:
                del self._sources[next(iter(self._sources))]
                self.evictions += 1
            state = self._sources[source] = [self.source_burst, now]
        else:
            elapsed = now - state[1]
            if elapsed > 0:
                tokens = state[0] + elapsed * self.source_rate
                state[0] = tokens if tokens < self.source_burst else self.source_burst
                state[1] = now
        if state[0] < 1.0:
            return Reason.RATE_LIMITED_SOURCE
        bucket = self._global
        if not bucket.has_token(now):
            return Reason.RATE_LIMITED_GLOBAL
        state[0] -= 1.0
        bucket.tokens -= 1.0
        return None

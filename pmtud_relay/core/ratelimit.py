"""Token buckets on a caller-supplied monotonic clock: per outer source and global.

A packet spends a token only if every bucket it passes through has one, so a flood
from one source exhausts only that source's bucket and never the global one.
"""

from __future__ import annotations

from collections import OrderedDict

from pmtud_relay.core.reasons import Reason

# Defaults, justified in docs/rate-limits.md.
DEFAULT_SOURCE_RATE = 10.0  # tokens per second per outer source
DEFAULT_SOURCE_BURST = 50.0
DEFAULT_GLOBAL_RATE = 100.0
DEFAULT_GLOBAL_BURST = 500.0
DEFAULT_SOURCE_CAPACITY = 65536

_LIMITED_SOURCE = Reason.RATE_LIMITED_SOURCE
_LIMITED_GLOBAL = Reason.RATE_LIMITED_GLOBAL


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

    __slots__ = ("source_rate", "source_burst", "capacity", "_sources", "_global", "evictions", "source_drops")

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
        # An OrderedDict: evicting the oldest source is O(1) (a plain dict's first key is
        # found by scanning past every entry deleted from its front).
        self._sources: OrderedDict[bytes, list[float]] = OrderedDict()
        self._global = TokenBucket(global_rate, global_burst, now)
        self.evictions = 0
        #: PTBs dropped per source by its own bucket since :meth:`take_source_drops` (at most
        #: one entry per source in the table): what the flood shunner looks at.
        self.source_drops: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._sources)

    def take_source_drops(self) -> dict[bytes, int]:
        """Per-source drop counts since the previous call; starts counting afresh."""
        drops, self.source_drops = self.source_drops, {}
        return drops

    def add_source_drops(self, drops: dict[bytes, int]) -> None:
        """Count drops another limiter made (delivery confirmation's bucket for other relays' L2
        copies) as this one's, so the flood shunner sees a source flooding either way. Bounded
        like the counts this limiter makes itself."""
        mine = self.source_drops
        for source, n in drops.items():
            had = mine.get(source)
            if had is not None:
                mine[source] = had + n
            elif len(mine) < self.capacity:
                mine[source] = n

    def refund(self, source: bytes) -> None:
        """Give back the tokens the last successful :meth:`check` for ``source`` spent: the PTB
        was not relayed after all (its checksum failed, which is verified after the limits)."""
        state = self._sources.get(source)
        if state is not None:
            state[0] += 1.0
        self._global.tokens += 1.0

    def check(self, source: bytes, now: float) -> Reason | None:
        """Spend one token from ``source``'s bucket and the global one, or say which is empty."""
        sources = self._sources
        state = sources.get(source)
        if state is None:
            if len(sources) >= self.capacity:
                sources.popitem(last=False)
                self.evictions += 1
            state = sources[source] = [self.source_burst, now]
        else:
            elapsed = now - state[1]
            if elapsed > 0:
                tokens = state[0] + elapsed * self.source_rate
                burst = self.source_burst
                state[0] = tokens if tokens < burst else burst
                state[1] = now
        if state[0] < 1.0:
            drops = self.source_drops
            n = drops.get(source)
            if n is not None:
                drops[source] = n + 1
            elif len(drops) < self.capacity:  # bounded even if nobody takes the counts
                drops[source] = 1
            return _LIMITED_SOURCE
        bucket = self._global  # TokenBucket.has_token, inlined (one call less per packet)
        tokens = bucket.tokens
        elapsed = now - bucket.stamp
        if elapsed > 0:
            tokens += elapsed * bucket.rate
            if tokens > bucket.burst:
                tokens = bucket.burst
            bucket.stamp = now
        if tokens < 1.0:
            bucket.tokens = tokens
            return _LIMITED_GLOBAL
        state[0] -= 1.0
        bucket.tokens = tokens - 1.0
        return None

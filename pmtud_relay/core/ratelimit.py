"""Token buckets on a caller-supplied monotonic clock: per outer source and global.

A packet spends a token only if every bucket it passes through has one, so a flood
from one source exhausts only that source's bucket and never the global one.

The global budget is split into a general part and a reserve (``reserve`` share of the rate
and of the burst; docs/rate-limits.md). Every PTB takes from the general part; only when it is
empty may a PTB take from the reserve, and only if its outer source is *known*: it had a PTB
relayed before the current flood episode began (the last time a PTB found the general part
full before it ran dry) and since then not longer ago than ``known_expiry``. Sources enter
the known table only when a PTB of theirs is relayed (:meth:`RateLimiter.relayed`), so a
flood that is dropped never does, and flood sources that win a general token during the
flood are first relayed after the episode began. The reserve's work is done only on the
relayed path (bounded by the global rate) and on the global-limited path (one lookup).
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
DEFAULT_RESERVE = 0.2  # share of the global rate and burst kept for known sources (0: off)
MAX_RESERVE = 0.5
DEFAULT_KNOWN_CAPACITY = 4096  # known sources (relayed before), least recently relayed evicted
DEFAULT_KNOWN_EXPIRY = 600.0  # seconds since a known source's last relayed PTB

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

    __slots__ = ("source_rate", "source_burst", "capacity", "_sources", "_global", "evictions", "source_drops",
                 "reserve", "_reserve", "known_capacity", "known_expiry", "_known", "known_evictions",
                 "_full_mark", "_full_at", "_from_reserve", "reserve_relayed")

    def __init__(
        self,
        source_rate: float = DEFAULT_SOURCE_RATE,
        source_burst: float = DEFAULT_SOURCE_BURST,
        global_rate: float = DEFAULT_GLOBAL_RATE,
        global_burst: float = DEFAULT_GLOBAL_BURST,
        capacity: int = DEFAULT_SOURCE_CAPACITY,
        now: float = 0.0,
        reserve: float = 0.0,
        known_capacity: int = DEFAULT_KNOWN_CAPACITY,
        known_expiry: float = DEFAULT_KNOWN_EXPIRY,
    ):
        if source_rate <= 0 or source_burst < 1:
            raise ValueError("per-source rate must be > 0 and burst >= 1")
        if capacity < 1:
            raise ValueError("source table capacity must be >= 1")
        if not 0.0 <= reserve <= MAX_RESERVE:
            raise ValueError(f"reserve share must be within 0..{MAX_RESERVE}")
        if known_capacity < 1 or not known_expiry > 0:
            raise ValueError("known-source table capacity must be >= 1 and expiry > 0")
        # A reserve that could never hold a whole token (or would leave the general part
        # without one) is off: the split must not stop a small global burst from relaying.
        if reserve and (global_burst * reserve < 1.0 or global_burst * (1.0 - reserve) < 1.0):
            reserve = 0.0
        self.source_rate = source_rate
        self.source_burst = source_burst
        self.capacity = capacity
        # An OrderedDict: evicting the oldest source is O(1) (a plain dict's first key is
        # found by scanning past every entry deleted from its front).
        self._sources: OrderedDict[bytes, list[float]] = OrderedDict()
        self.reserve = reserve
        if reserve:
            self._global = TokenBucket(global_rate * (1.0 - reserve), global_burst * (1.0 - reserve), now)
            self._reserve: TokenBucket | None = TokenBucket(global_rate * reserve, global_burst * reserve, now)
        else:
            self._global = TokenBucket(global_rate, global_burst, now)
            self._reserve = None
        self.known_capacity = known_capacity
        self.known_expiry = known_expiry
        #: Known outer sources → [first relayed, last relayed], least recently relayed first.
        self._known: OrderedDict[bytes, list[float]] = OrderedDict()
        self.known_evictions = 0
        # Flood episodes: the general part counts as healthy when a PTB finds it within half a
        # token of full; an episode starts at the last such moment before it runs dry, and ends
        # when a PTB finds it healthy again. No PTB finds it healthy during an episode, so while
        # it is empty the last healthy moment *is* the episode's start: nothing to update on the
        # rate-limited path. The flood's first PTB finds it healthy (its source is first relayed
        # *at* the start, so it is not eligible); its second, unless it comes more than
        # 0.5 / rate later (6 ms at the defaults), finds burst - 1 + a little and moves nothing.
        # Exactly full would instead shut out a router whose PTB came up to 1 / rate (12 ms)
        # before the flood's first.
        self._full_mark = self._global.burst - 0.5
        self._full_at = float("-inf")
        self._from_reserve = False
        #: PTBs relayed with a token from the reserve.
        self.reserve_relayed = 0
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

    @property
    def episode_start(self) -> float:
        """Start of the current flood episode while the general part is empty (else the last
        time a PTB found it healthy); -inf before any PTB did."""
        return self._full_at

    def known_sources(self) -> int:
        """Entries in the known-source table (expired ones not yet evicted included)."""
        return len(self._known)

    def refund(self, source: bytes) -> None:
        """Give back the tokens the last successful :meth:`check` for ``source`` spent: the PTB
        was not relayed after all (its checksum failed, which is verified after the limits)."""
        state = self._sources.get(source)
        if state is not None:
            state[0] += 1.0
        if self._from_reserve:
            self._from_reserve = False
            self._reserve.tokens += 1.0  # type: ignore[union-attr]  # set only with a reserve
        else:
            self._global.tokens += 1.0

    def relayed(self, source: bytes, now: float) -> None:
        """Record that the PTB the last successful :meth:`check` passed was relayed: ``source``
        becomes (or stays) known. Called only on the relayed path, which the global rate bounds."""
        if self._from_reserve:
            self._from_reserve = False
            self.reserve_relayed += 1
        if self._reserve is None:
            return
        known = self._known
        entry = known.get(source)
        if entry is not None and now - entry[1] <= self.known_expiry:
            entry[1] = now
            known.move_to_end(source)
            return
        if entry is not None:  # expired: known afresh from now on
            del known[source]
        # Least recently relayed first: expired entries (which no longer count) are at the front
        # and go first when the table is full, so they need no sweep of their own.
        if len(known) >= self.known_capacity:
            _, oldest = known.popitem(last=False)
            if now - oldest[1] <= self.known_expiry:  # counted only when it still counted
                self.known_evictions += 1
        known[source] = [now, now]

    def is_known(self, source: bytes, now: float) -> bool:
        """Whether ``source`` may take from the reserve now (known before the current episode)."""
        entry = self._known.get(source)
        return entry is not None and entry[0] < self._full_at and now - entry[1] <= self.known_expiry

    def _take_reserve(self, entry: list[float], now: float) -> bool:
        """The general part is empty and the source (known ``entry``) was first relayed before the
        episode: spend a reserve token if it has not expired and one is left."""
        bucket = self._reserve
        if bucket is None or now - entry[1] > self.known_expiry or not bucket.has_token(now):
            return False
        bucket.tokens -= 1.0
        self._from_reserve = True
        return True

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
            known = self._known
            if known:  # empty without a reserve
                entry = known.get(source)
                if entry is not None and entry[0] < self._full_at and self._take_reserve(entry, now):
                    state[0] -= 1.0
                    return None
            return _LIMITED_GLOBAL
        if tokens >= self._full_mark:  # healthy: ends any episode
            self._full_at = now
        state[0] -= 1.0
        bucket.tokens = tokens - 1.0
        return None

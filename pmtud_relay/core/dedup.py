"""Duplicate suppression keyed on the inner flow and the announced MTU.

The key includes the quoted flow, not just the destination: two flows to the same
client owned by different servers each need their own copy.
"""

from __future__ import annotations

from collections import OrderedDict

from pmtud_relay.core.packet import PTB

DEFAULT_WINDOW = 1.0
DEFAULT_CAPACITY = 65536
_NEVER = float("inf")


def dedup_key(ptb: PTB) -> tuple:
    """(family, inner src, inner dst, proto, sport, dport, MTU)."""
    return (ptb.family, ptb.inner_src, ptb.inner_dst, ptb.proto, ptb.sport, ptb.dport, ptb.mtu)


class Deduplicator:
    """Remembers relayed keys for ``window`` seconds, at most ``capacity`` of them.

    Keys live in an OrderedDict in insertion order; because the clock is monotonic,
    insertion order is also expiry order, so expiry and eviction both pop from the front:
    O(1), no timers, no sorting. (Not a plain dict: finding a plain dict's first key scans
    past every entry deleted from its front since the last resize, which made each
    eviction cost tens of microseconds once the table was at capacity.)
    """

    __slots__ = ("window", "capacity", "_seen", "evictions", "_sweep_at")

    def __init__(self, window: float = DEFAULT_WINDOW, capacity: int = DEFAULT_CAPACITY):
        if window < 0:
            raise ValueError("dedup window must be >= 0")
        if capacity < 1:
            raise ValueError("dedup capacity must be >= 1")
        self.window = window
        self.capacity = capacity
        self._seen: OrderedDict[tuple, float] = OrderedDict()
        self.evictions = 0  # entries dropped for capacity before they expired
        # When the oldest entry expires: until then a remember() only inserts (no look at the
        # front of the table), so the per-PTB cost is two dict operations.
        self._sweep_at = _NEVER

    def __len__(self) -> int:
        return len(self._seen)

    def is_duplicate(self, key: tuple, now: float) -> bool:
        """True if ``key`` was remembered less than ``window`` seconds before ``now``."""
        stamp = self._seen.get(key)
        return stamp is not None and now - stamp < self.window

    def remember(self, key: tuple, now: float) -> None:
        """Record that ``key`` was relayed at ``now``."""
        if not self.window:  # nothing can be a duplicate within a zero window: keep nothing
            return
        seen = self._seen
        if key in seen:
            seen.move_to_end(key)  # to the back, keeping expiry order
        seen[key] = now
        if now >= self._sweep_at or len(seen) > self.capacity:
            self._expire(now)
        elif self._sweep_at is _NEVER:
            self._sweep_at = next(iter(seen.values())) + self.window

    def _expire(self, now: float) -> None:
        seen = self._seen
        horizon = now - self.window
        pop = seen.popitem
        while seen:
            key, stamp = pop(last=False)  # one C call per entry dropped
            if stamp > horizon:
                if len(seen) < self.capacity:  # fresh, and there is room: back to the front
                    seen[key] = stamp
                    seen.move_to_end(key, last=False)
                    break
                self.evictions += 1
        # The front entry is now the oldest remembered; nothing expires before it does. (A key
        # moved to the back later only makes this early: the sweep then finds nothing to do.)
        self._sweep_at = next(iter(seen.values())) + self.window if seen else _NEVER

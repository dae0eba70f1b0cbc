"""Duplicate suppression: PTBs that would have the same effect on the owner are relayed once.

The owner's kernel acts on a PTB only if the quoted packet matches a socket: the flow (addresses,
protocol, ports) and, for TCP, a sequence number inside the send window (for SCTP, the
association's verification tag). A PTB quoting a wrong sequence number is discarded there. So
a key that ignored who sent the PTB and what it quotes would let anyone suppress a router's
genuine PTB: send one for the same flow and MTU from any address with a wrong sequence number,
and the genuine one arriving within the window would be dropped as its duplicate.

The key is therefore (outer source, outer destination, MTU, inner flow), and every entry keeps
the quoted word (:func:`~pmtud_relay.core.quoted.quoted_tag`) of the PTB last relayed under it.
A PTB is a duplicate only if its key was relayed within the window *and* its word is that one
or, for TCP, lies less than :data:`SEQ_SPAN` bytes after it:

- a router's PTBs for retransmissions of one segment quote the same sequence number: collapsed;
- its PTBs for the successive segments of one flight (an initial window of 10 segments yields
  10 PTBs in one round trip) quote sequence numbers a few segments apart: collapsed too, so the
  rate limits are spent on distinct flows, not on the segments of one. The owner acts on the
  first in-window one; later ones with the same MTU change nothing;
- a PTB from another source never collapses into it (its own key), and a PTB carrying the
  router's own address collapses only if its sequence number lies within ``SEQ_SPAN`` after the
  relayed one. A forged PTB relayed first therefore suppresses a genuine one only if the forger
  guessed the genuine sequence number to within 64 KiB below it (odds 2^-16 a guess, each guess
  relayed, so paid from the router's own rate-limit bucket); whatever it quotes, a forged PTB
  relayed in between only makes the next genuine one be relayed too (it re-bases the entry).

The key includes the quoted flow, not just the destination: two flows to the same client owned
by different servers each need their own copy.
"""

from __future__ import annotations

from collections import OrderedDict

from pmtud_relay.core.packet import IPPROTO_TCP, PTB

DEFAULT_WINDOW = 1.0
DEFAULT_CAPACITY = 65536
#: A TCP PTB collapses into the entry whose sequence number lies at most this far before its own.
SEQ_SPAN = 65536
MASK = 0xFFFFFFFF  # TCP sequence numbers are modulo 2^32
_MASK = MASK
_NEVER = float("inf")


def dedup_key(ptb: PTB) -> tuple:
    """(outer src, outer dst, MTU, inner src, inner dst, proto, sport, dport): one C slice of
    the record (the family is the length of the addresses)."""
    return ptb[1:9]


def span_of(ptb: PTB) -> int:
    """How far after an entry's quoted word a PTB's may lie and still be its duplicate."""
    return SEQ_SPAN if ptb.proto == IPPROTO_TCP else 1


class Deduplicator:
    """Remembers relayed keys, each with the quoted word it was relayed with, for ``window``
    seconds, at most ``capacity`` of them.

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
        # key -> (stamp, quoted word)
        self._seen: OrderedDict[tuple, tuple[float, int]] = OrderedDict()
        self.evictions = 0  # entries dropped for capacity before they expired
        # When the oldest entry expires: until then a remember() only inserts (no look at the
        # front of the table), so the per-PTB cost is two dict operations.
        self._sweep_at = _NEVER

    def __len__(self) -> int:
        return len(self._seen)

    def recent(self, key: tuple, now: float) -> int | None:
        """The quoted word ``key`` was last relayed with, if that was less than ``window``
        seconds before ``now``; else None. (Split from :meth:`is_duplicate` so a caller reads
        the PTB's own word only when there is something to compare it with.)"""
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.window:
            return entry[1]
        return None

    def is_duplicate(self, key: tuple, now: float, tag: int = 0, span: int = 1) -> bool:
        """True if ``key`` was remembered less than ``window`` seconds before ``now`` with a word
        at most ``span - 1`` before ``tag`` (modulo 2^32; ``span`` 1: the same word)."""
        base = self.recent(key, now)
        return base is not None and (tag - base) & _MASK < span

    def remember(self, key: tuple, now: float, tag: int = 0) -> None:
        """Record that ``key`` was relayed at ``now`` quoting ``tag``."""
        if not self.window:  # nothing can be a duplicate within a zero window: keep nothing
            return
        seen = self._seen
        if key in seen:
            seen.move_to_end(key)  # to the back, keeping expiry order
        seen[key] = (now, tag)
        if now >= self._sweep_at or len(seen) > self.capacity:
            self._expire(now)
        elif self._sweep_at is _NEVER:
            self._sweep_at = next(iter(seen.values()))[0] + self.window

    def _expire(self, now: float) -> None:
        seen = self._seen
        horizon = now - self.window
        pop = seen.popitem
        while seen:
            key, entry = pop(last=False)  # one C call per entry dropped
            if entry[0] > horizon:
                if len(seen) < self.capacity:  # fresh, and there is room: back to the front
                    seen[key] = entry
                    seen.move_to_end(key, last=False)
                    break
                self.evictions += 1
        # The front entry is now the oldest remembered; nothing expires before it does. (A key
        # moved to the back later only makes this early: the sweep then finds nothing to do.)
        self._sweep_at = next(iter(seen.values()))[0] + self.window if seen else _NEVER

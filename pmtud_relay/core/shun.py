"""Which outer sources to drop in the kernel: a pure decision on a caller-supplied clock.

A single source flooding spoofed PTBs is held by its own token bucket, but every frame still
costs the relay a wake-up share, a copy out of the capture ring and a parse. Past what the
relay can parse, the capture ring overflows and the kernel drops frames without looking at
them: legitimate PTBs from other routers are lost in proportion. The shunner spots a source
its bucket drops at more than ``min_rate`` PTB/s (hundreds of times any legitimate rate) and
asks the capture adapter to drop that source's frames in the kernel (a BPF prefix) for
``hold`` seconds; a source that floods again right after its hold gets twice the hold, up to
``max_hold``. At most ``max_sources`` sources are held (the heaviest first): a flood from
many sources is bounded by the global bucket as before.

While a source is held, the kernel passes only one in ``SAMPLE`` (256) of its frames, chosen at
random; the rest are never seen (not even counted). The sample keeps a path for the genuine
PTBs of a router whose address the flood spoofs: they still meet that source's bucket, now
competing with 1/256 of the flood, so a genuine PTB's chance of being relayed while the source
is held is the chance it had without the hold (the bucket's rate over the flood's), at 1/256 of
the userspace cost (docs/rate-limits.md, "Holds in the kernel").

A hold ends on time even when nothing reaches userspace: the caller asks :attr:`next_expiry`
and calls :meth:`expire` then (the daemon arms a timer). Without that, a held source on a quiet
host would stay held until some other frame happened to wake the relay.
"""

from __future__ import annotations

DEFAULT_INTERVAL = 0.02  # seconds between decisions
DEFAULT_MIN_RATE = 4000.0  # PTB/s dropped by a source's own bucket before it is held
DEFAULT_HOLD = 10.0
DEFAULT_MAX_HOLD = 300.0
DEFAULT_MAX_SOURCES = 16
#: One in SAMPLE frames of a held source still reaches userspace (a power of two: the kernel
#: filter tests the low bits of a random number). At most min_rate / the per-source rate
#: (4 000 / 10 = 400): then a source flooding fast enough to be held still offers its bucket
#: more sampled frames than it has tokens, so a genuine PTB keeps exactly the chance it had
#: without the hold (docs/rate-limits.md, "Holds in the kernel").
SAMPLE = 256


class Shunner:
    __slots__ = ("interval", "min_rate", "hold", "max_hold", "max_sources", "_last", "_held", "_strikes", "shuns")

    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL,
        min_rate: float = DEFAULT_MIN_RATE,
        hold: float = DEFAULT_HOLD,
        max_hold: float = DEFAULT_MAX_HOLD,
        max_sources: int = DEFAULT_MAX_SOURCES,
        now: float = 0.0,
    ):
        if interval <= 0 or min_rate <= 0 or hold <= 0 or max_hold < hold or max_sources < 0:
            raise ValueError("shunner: interval, min_rate, hold > 0; max_hold >= hold; max_sources >= 0")
        self.interval = interval
        self.min_rate = min_rate
        self.hold = hold
        self.max_hold = max_hold
        self.max_sources = max_sources
        self._last = now
        self._held: dict[bytes, float] = {}  # source -> held until
        self._strikes: dict[bytes, tuple[float, float]] = {}  # source -> (last hold length, its end)
        self.shuns = 0  # holds started

    def due(self, now: float) -> bool:
        """Whether :meth:`update` would look at the counts now (cheap: call it per batch)."""
        return now - self._last >= self.interval

    @property
    def held(self) -> frozenset[bytes]:
        return frozenset(self._held)

    def __len__(self) -> int:
        """Sources held now (as of the last :meth:`update`)."""
        return len(self._held)

    @property
    def next_expiry(self) -> float | None:
        """When the earliest hold ends (clock of the ``now`` values), or None if none is held."""
        return min(self._held.values()) if self._held else None

    def expire(self, now: float) -> frozenset[bytes] | None:
        """End the holds due by ``now``; the new set of held sources if it changed, else None.
        Leaves the drop-count interval alone (:meth:`update` still sees every drop)."""
        done = [s for s, until in self._held.items() if until <= now]
        if not done:
            return None
        for src in done:
            del self._held[src]
        return frozenset(self._held)

    def update(self, drops: dict[bytes, int], now: float) -> frozenset[bytes] | None:
        """Feed the per-source drop counts since the previous call; return the new set of
        held sources if it changed, else None."""
        elapsed = now - self._last
        self._last = now
        changed = self.expire(now) is not None
        if elapsed > 0 and self.max_sources:
            threshold = self.min_rate * elapsed
            heavy = sorted(((n, s) for s, n in drops.items() if n >= threshold and s not in self._held), reverse=True)
            for _n, src in heavy:
                if len(self._held) >= self.max_sources:
                    break
                last = self._strikes.get(src)
                length = self.hold
                if last is not None and now - last[1] <= 2 * last[0]:  # back right after its hold
                    length = min(self.max_hold, 2 * last[0])
                self._held[src] = now + length
                self._strikes[src] = (length, now + length)
                self.shuns += 1
                changed = True
        for src in [s for s, (length, end) in self._strikes.items() if now - end > 2 * length]:
            del self._strikes[src]
        return frozenset(self._held) if changed else None

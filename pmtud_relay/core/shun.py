"""Which outer sources to drop in the kernel: a pure decision on a caller-supplied clock.

A single source flooding spoofed PTBs is held by its own token bucket, but every frame still
costs the relay a wake-up share, a copy out of the capture ring and a parse. Past what the
relay can parse, the capture ring overflows and the kernel drops frames without looking at
them: legitimate PTBs from other routers are lost in proportion. The shunner spots a source
its bucket drops at more than ``min_rate`` PTB/s (hundreds of times any legitimate rate) and
asks the capture adapter to drop that source's frames in the kernel (a BPF prefix) for
``hold`` seconds; a source that floods again right after its hold gets twice the hold, up to
``max_hold``. At most ``max_sources`` sources are held (the heaviest first): a flood from
many sources is bounded by the global bucket.

While a source is held, the kernel passes one in N of its frames, chosen at random (N a power
of two: the filter tests the low bits of a random number); the rest are never seen (not even
counted). N is picked per source from the rate it was flooding at, so that the sampled stream
is one to two times what its token bucket passes (N = the largest power of two <= flood rate /
bucket rate), and raised while it is held if it floods four times faster or more. The sample keeps a path for the
genuine PTBs of a router whose address the flood spoofs: they meet that source's bucket,
competing with a sample of the flood that still empties it, so a genuine PTB's
chance of being relayed while the source is held is the chance it had without the hold (the
bucket's rate over the flood's), at a cost of ten to twenty frames/s per held source
(docs/rate-limits.md, "Holds in the kernel").

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
DEFAULT_BUCKET_RATE = 10.0  # the per-source bucket's rate (ratelimit.DEFAULT_SOURCE_RATE)
#: Bounds of N, the "one in N" sample of a held source's frames the kernel still passes.
MIN_SAMPLE = 2
MAX_SAMPLE = 1 << 16
#: N for a capture given held sources without their own N (tests, set_blocked of a plain set).
SAMPLE = 256
RESAMPLE_WINDOW = 1.0  # seconds of a held source's sampled drops behind a new N …
RESAMPLE_COUNT = 100  # … or this many of them, if sooner


def sample_for(rate: float, bucket_rate: float) -> int:
    """The largest power of two N with rate / N >= bucket_rate, within MIN_SAMPLE..MAX_SAMPLE:
    a held source flooding at ``rate`` still offers its bucket at least as many frames as it
    passes, and at most twice as many."""
    ratio = int(rate / bucket_rate) if bucket_rate > 0 else MAX_SAMPLE
    n = 1 << max(0, ratio.bit_length() - 1) if ratio >= 1 else 1
    return max(MIN_SAMPLE, min(MAX_SAMPLE, n))


class Shunner:
    __slots__ = ("interval", "min_rate", "hold", "max_hold", "max_sources", "bucket_rate", "_last", "_held",
                 "_sample", "_window", "_strikes", "shuns")

    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL,
        min_rate: float = DEFAULT_MIN_RATE,
        hold: float = DEFAULT_HOLD,
        max_hold: float = DEFAULT_MAX_HOLD,
        max_sources: int = DEFAULT_MAX_SOURCES,
        now: float = 0.0,
        bucket_rate: float = DEFAULT_BUCKET_RATE,
    ):
        if interval <= 0 or min_rate <= 0 or hold <= 0 or max_hold < hold or max_sources < 0:
            raise ValueError("shunner: interval, min_rate, hold > 0; max_hold >= hold; max_sources >= 0")
        self.interval = interval
        self.min_rate = min_rate
        self.hold = hold
        self.max_hold = max_hold
        self.max_sources = max_sources
        self.bucket_rate = bucket_rate
        self._last = now
        self._held: dict[bytes, float] = {}  # source -> held until
        self._sample: dict[bytes, int] = {}  # held source -> N: the kernel passes 1 in N of its frames
        self._window: dict[bytes, list] = {}  # held source -> [drops counted, since when]
        self._strikes: dict[bytes, tuple[float, float]] = {}  # source -> (last hold length, its end)
        self.shuns = 0  # holds started

    def due(self, now: float) -> bool:
        """Whether :meth:`update` would look at the counts now (cheap: call it per batch)."""
        return now - self._last >= self.interval

    @property
    def held(self) -> frozenset[bytes]:
        return frozenset(self._held)

    @property
    def samples(self) -> dict[bytes, int]:
        """Held sources and, for each, N: the kernel filter passes one in N of its frames."""
        return dict(self._sample)

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
            del self._sample[src]
            del self._window[src]
        return frozenset(self._held)

    def update(self, drops: dict[bytes, int], now: float) -> frozenset[bytes] | None:
        """Feed the per-source drop counts since the previous call; return the new set of
        held sources if it or a held source's sample (:attr:`samples`) changed, else None."""
        elapsed = now - self._last
        self._last = now
        changed = self.expire(now) is not None
        # A held source's sampled frames still meet its bucket: if, over a window of
        # RESAMPLE_WINDOW seconds or RESAMPLE_COUNT sampled drops, whichever comes first, it
        # floods four or more times faster than its sample was sized for, sample it more thinly
        # (a factor of 4, not 2, so that the noise of a few sampled frames cannot ratchet N up;
        # the count ends the window early when the first estimate, from one short interval,
        # was far too low).
        for src, n in self._sample.items():
            window = self._window[src]
            window[0] += drops.get(src, 0)
            span = now - window[1]
            if span >= RESAMPLE_WINDOW or (span > 0 and window[0] >= RESAMPLE_COUNT):
                rate = (window[0] / span + self.bucket_rate) * n  # sampled = dropped + passed, times N
                wanted = sample_for(rate, self.bucket_rate)
                if wanted >= 4 * n:
                    self._sample[src] = wanted
                    changed = True
                window[0], window[1] = 0, now
        if elapsed > 0 and self.max_sources:
            threshold = self.min_rate * elapsed
            heavy = sorted(((n, s) for s, n in drops.items() if n >= threshold and s not in self._held), reverse=True)
            for n, src in heavy:
                if len(self._held) >= self.max_sources:
                    break
                self._sample[src] = sample_for(n / elapsed, self.bucket_rate)
                self._window[src] = [0, now]
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

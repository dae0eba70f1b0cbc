"""When to ask nfnetlink_log to batch deliveries, and when to stop: a pure state machine.

The kernel flushes an NFLOG group's queue to userspace when it holds QTHRESH packets or
when its flush timer fires (TIMEOUT 0: on the next timer tick, up to 1/HZ, 4 ms at HZ 250).
QTHRESH 1 hands every PTB over at once, so NFLOG capture is as quick as AF_PACKET, at one
datagram (one recv()) and usually one wake-up per packet; a larger QTHRESH packs a burst
into few datagrams at the price of up to a tick of delay. PTBs are rare, and the in-kernel
pre-limit keeps them rare even under a flood, so the tuner starts at 1 and batches only
while they are not: when one wake-up finds ``high`` or more packets queued (the reader fell
behind), or when PTBs arrive at ``high_rate`` per second or more (measured over ``window``
seconds); it goes back to 1 after a quiet gap of a window or once a window saw at most
``low_rate`` per second, unless the wake-up that tells it found a backlog itself.
"""

from __future__ import annotations

IMMEDIATE = 1
DEFAULT_BATCH = 100  # the kernel's own default QTHRESH
DEFAULT_HIGH = 32
DEFAULT_HIGH_RATE = 5000.0
DEFAULT_LOW_RATE = 1000.0
DEFAULT_WINDOW = 0.1


class BatchTuner:
    """Feed it each wake-up's packet count and a clock value; it says when QTHRESH should change."""

    __slots__ = ("batch", "high", "high_rate", "low_rate", "window", "qthresh", "switches", "_since", "_count", "_last")

    def __init__(self, batch: int = DEFAULT_BATCH, high: int = DEFAULT_HIGH, high_rate: float = DEFAULT_HIGH_RATE,
                 low_rate: float = DEFAULT_LOW_RATE, window: float = DEFAULT_WINDOW, now: float = 0.0):
        if not (IMMEDIATE < batch and high >= 1 and 0 <= low_rate < high_rate and window > 0):
            raise ValueError("need batch > 1, high >= 1, 0 <= low_rate < high_rate and window > 0")
        self.batch = batch
        self.high = high
        self.high_rate = high_rate
        self.low_rate = low_rate
        self.window = window
        self.qthresh = IMMEDIATE  # what the kernel was last asked for
        self.switches = 0
        self._since = now  # start of the current rate window
        self._count = 0  # packets seen in it
        self._last = now  # the previous wake-up that brought packets

    def observe(self, packets: int, now: float) -> int | None:
        """One wake-up read ``packets`` packets at ``now``: the QTHRESH to set, or None.

        A read that found nothing (a spurious wake-up, or the second of two ports sharing the
        socket) is ignored."""
        if not packets:
            return None
        self._count += packets
        gap, self._last = now - self._last, now
        elapsed = now - self._since
        rate = None
        if elapsed >= self.window:
            rate = self._count / elapsed
            self._since = now
            self._count = 0
        if self.qthresh == IMMEDIATE:
            if packets >= self.high or (rate is not None and rate >= self.high_rate):
                return self._switch(self.batch, now)
        elif packets < self.high and (gap >= self.window or (rate is not None and rate <= self.low_rate)):
            # Calm: a quiet gap of a window or more before this wake-up, or a window at a low
            # rate. (A wake-up that itself brought a backlog is busy, whatever the window says.)
            return self._switch(IMMEDIATE, now)
        return None

    def _switch(self, qthresh: int, now: float) -> int:
        self.qthresh = qthresh
        self.switches += 1
        self._since = now
        self._count = 0
        return qthresh

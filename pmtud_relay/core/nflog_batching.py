"""When to ask nfnetlink_log to batch deliveries, and when to stop: a pure state machine.

The kernel flushes an NFLOG group's queue to userspace when it holds QTHRESH packets or
when its flush timer fires (TIMEOUT 0: on the next timer tick, up to 1/HZ, 4 ms at HZ 250).
QTHRESH 1 hands every PTB over at once, so NFLOG capture is as quick as AF_PACKET, at one
datagram (one recv()) per packet; a larger QTHRESH packs a burst into few datagrams at the
price of up to a tick of delay. PTBs are rare, and the in-kernel pre-limit keeps them rare
even under a flood, so the tuner starts at 1 and batches only while the reader falls
behind: one wake-up that finds ``high`` or more packets queued switches to ``batch``;
``calm`` wake-ups in a row with 1 to ``low`` packets each switch back to 1.
"""

from __future__ import annotations

IMMEDIATE = 1
DEFAULT_BATCH = 100  # the kernel's own default QTHRESH
DEFAULT_HIGH = 32
DEFAULT_LOW = 4
DEFAULT_CALM = 8


class BatchTuner:
    """Feed it the packet count of each wake-up; it says when QTHRESH should change."""

    __slots__ = ("batch", "high", "low", "calm", "qthresh", "_calm_seen", "switches")

    def __init__(self, batch: int = DEFAULT_BATCH, high: int = DEFAULT_HIGH, low: int = DEFAULT_LOW,
                 calm: int = DEFAULT_CALM):
        if not (IMMEDIATE < batch and 0 <= low < high and calm >= 1):
            raise ValueError("need batch > 1, 0 <= low < high and calm >= 1")
        self.batch = batch
        self.high = high
        self.low = low
        self.calm = calm
        self.qthresh = IMMEDIATE  # what the kernel was last asked for
        self._calm_seen = 0
        self.switches = 0

    def observe(self, packets: int) -> int | None:
        """One wake-up read ``packets`` packets: the QTHRESH to set now, or None for no change.

        A read that found nothing (a spurious wake-up, or the second of two ports sharing the
        socket) says nothing about the load and is ignored."""
        if not packets:
            return None
        if self.qthresh == IMMEDIATE:
            if packets >= self.high:
                return self._switch(self.batch)
            return None
        if packets > self.low:
            self._calm_seen = 0
            return None
        self._calm_seen += 1
        if self._calm_seen >= self.calm:
            return self._switch(IMMEDIATE)
        return None

    def _switch(self, qthresh: int) -> int:
        self.qthresh = qthresh
        self._calm_seen = 0
        self.switches += 1
        return qthresh

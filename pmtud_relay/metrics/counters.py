"""The plain counters the packet path writes: :class:`Stats` and :class:`LatencyHistogram`.

No prometheus_client object is touched here: one ``dict.get`` and store per frame, a list of
bucket counts per latency observation; :mod:`pmtud_relay.metrics.collectors` turns them into
metric families at scrape time. Also the overrun probes the daemon registers in
``Stats.overrun_probes`` (:func:`afpacket_drops`, :func:`delta_probe`).
"""

from __future__ import annotations

import bisect
import errno as _errno
import socket
import struct
import time
from collections.abc import Iterable
from typing import Callable

from pmtud_relay.core.reasons import Reason
from pmtud_relay.packetsocket import SOL_PACKET

#: Processing latency buckets (seconds): 5 µs … 100 ms.
LATENCY_BUCKETS = (
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)


# -- plain counters, written on the packet path ----------------------------------------------


class LatencyHistogram:
    """A histogram without locks or objects per observation: bucket counts in a list.

    The daemon observes once per capture batch (see docs/metrics.md), not once per frame."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last: above the highest bound
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class Stats:
    """Everything the collector reports, as plain Python values the daemon updates.

    ``decisions[(ifname, family, reason)]``: family is 4, 6, or 0 when the frame did not
    parse as a PTB. ``send_errors[(ifname, errno_name)]``. ``overruns[ifname]``: frames the
    kernel dropped before the daemon read them; ``overrun_probes`` are polled at scrape time
    and added to it. ``capture_counters[ifname]`` returns an open capture's own cumulative
    counts ({kind: n}); :meth:`retire_capture` keeps a closed one's totals.
    """

    __slots__ = (
        "interfaces", "decisions", "send_errors", "overruns", "overrun_probes", "capture_counters",
        "_capture_retired", "latency", "internal_errors", "reloads", "last_reload_success", "ready", "started",
        "waiting",
    )

    def __init__(self, interfaces: Iterable[str] = ()):
        self.interfaces: list[str] = list(interfaces)  # zero-valued series are exported for these
        self.decisions: dict[tuple[str, int, Reason], int] = {}
        self.send_errors: dict[tuple[str, str], int] = {}
        self.overruns: dict[str, int] = {}
        self.overrun_probes: dict[str, Callable[[], int]] = {}
        self.capture_counters: dict[str, Callable[[], dict[str, int]]] = {}
        self._capture_retired: dict[tuple[str, str], int] = {}
        self.latency = LatencyHistogram()
        self.internal_errors = 0
        self.reloads = {"success": 0, "failure": 0}
        self.last_reload_success = time.time()  # the start-up load counts as one
        self.ready = False  # start-up done (sockets open, event loop serving)
        self.started = time.time()
        #: Configured interfaces with no open capture (absent, down, renamed away): the daemon
        #: binds each as soon as an interface of that name is up. Shared with the daemon.
        self.waiting: set[str] = set()

    def not_ready_reason(self) -> str | None:
        """Why /readyz says 503, or None when ready: still starting, or waiting for interfaces."""
        if not self.ready:
            return "capture not open yet"
        if self.waiting:
            return "waiting for interface " + ",".join(sorted(self.waiting)) + " (absent or down)"
        return None

    # Helpers; the hot path may inline the dict update instead of calling count().
    def count(self, ifname: str, decision) -> None:
        ptb = decision.ptb
        key = (ifname, ptb.family if ptb is not None else 0, decision.reason)
        d = self.decisions
        d[key] = d.get(key, 0) + 1

    def send_error(self, ifname: str, err: int) -> str:
        name = _errno.errorcode.get(err, "E" + str(err) if err > 0 else "EUNKNOWN")
        key = (ifname, name)
        self.send_errors[key] = self.send_errors.get(key, 0) + 1
        return name

    def reloaded(self, ok: bool) -> None:
        self.reloads["success" if ok else "failure"] += 1
        if ok:
            self.last_reload_success = time.time()

    def poll_overruns(self) -> None:
        for ifname, probe in list(self.overrun_probes.items()):
            try:
                n = probe()
            except OSError:
                continue
            if n:
                self.overruns[ifname] = self.overruns.get(ifname, 0) + n

    def capture_totals(self) -> dict[tuple[str, str], int]:
        """{(ifname, kind): n} over every capture an interface has had (one per re-binding)."""
        out = dict(self._capture_retired)
        for ifname, read in list(self.capture_counters.items()):
            for kind, n in read().items():
                out[(ifname, kind)] = out.get((ifname, kind), 0) + n
        return out

    def retire_capture(self, ifname: str) -> None:
        """The capture of ``ifname`` is closing: keep what it counted (the next one starts at 0)."""
        read = self.capture_counters.pop(ifname, None)
        if read is not None:
            retired = self._capture_retired
            for kind, n in read().items():
                retired[(ifname, kind)] = retired.get((ifname, kind), 0) + n

    def totals(self) -> dict[Reason, int]:
        out = dict.fromkeys(Reason, 0)
        for (_i, _f, reason), n in self.decisions.copy().items():
            out[reason] += n
        return out


PACKET_STATISTICS = 6
_TPACKET_STATS = struct.Struct("=II")  # struct tpacket_stats {tp_packets, tp_drops}


def afpacket_drops(sock: socket.socket) -> int:
    """Frames an AF_PACKET socket dropped (receive buffer full) since the previous call.

    PACKET_STATISTICS resets the kernel's counters on every read, so call it from one place
    only (:meth:`Stats.poll_overruns`).
    """
    raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
    _packets, drops = _TPACKET_STATS.unpack(raw[: _TPACKET_STATS.size])
    return drops


def delta_probe(total: Callable[[], int]) -> Callable[[], int]:
    """Turn a cumulative counter (e.g. ``lambda: nflog.lost``) into an overrun probe that
    returns what was added since the previous call."""
    last = [total()]

    def probe() -> int:
        now = total()
        delta, last[0] = now - last[0], now
        return max(delta, 0)

    return probe

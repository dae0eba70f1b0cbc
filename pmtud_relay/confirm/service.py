"""The confirmation service: owner lookups on the event loop, after the copy has gone out.

:meth:`Confirmer.submit` only parses the PTB's quoted flow and queues it (bounded); the lookup
runs on a later turn of the event loop (``loop.call_soon``), so the copy's latency does not
change. A TCP owner's path MTU is read from ``tcp_info`` (``tcpi_pmtu``); a UDP owner's from
the route the kernel uses from the VIP to the client (UDP sockets keep no PMTU of their own:
the kernel stores it in that route's exception). The kernel handles the PTB in its own time
(a socket its owner holds locked defers the reduction), so an owned flow whose PMTU has not
dropped yet is looked at again, a few times with growing pauses, for at most ``settle``
seconds after capture; then the verdict is NOT_APPLIED.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Callable, NamedTuple, Optional, Protocol

from ..core.packet import IPPROTO_TCP, IPPROTO_UDP, PTB, parse_ipv4, parse_ipv6
from ..metrics import LatencyHistogram
from . import wire
from .verdict import Origin, OwnerVerdict

OnVerdict = Callable[[OwnerVerdict, float], None]
#: observer(origin, verdict, seconds from capture to verdict, ptb or None, path MTU read or None)
Observer = Callable[[Origin, OwnerVerdict, float, Optional[PTB], Optional[int]], None]

#: Lookups queued or being polled at once; more are answered UNKNOWN at once (counted).
DEFAULT_QUEUE_LIMIT = 256
#: How long after capture an owned flow's PMTU is looked at again before NOT_APPLIED.
DEFAULT_SETTLE = 0.05
#: First pause before looking again; it doubles each time (1, 2, 4, … ms).
FIRST_RETRY = 0.001
#: Buckets of the capture-to-applied-PMTU histogram (seconds): 0.25 ms … 250 ms.
TO_PMTU_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class Lookup(Protocol):
    def owner(self, family: int, proto: int, local: bytes, lport: int, remote: bytes,
              rport: int) -> tuple[int, int, int, int | None] | None: ...

    def route_mtu(self, family: int, src: bytes, dst: bytes) -> int | None: ...


class _Job(NamedTuple):
    ptb: PTB
    origin: Origin
    now: float
    on_verdict: OnVerdict | None
    pmtu: list  # [the last path MTU read for the flow, or None]


def quoted_flow(packet: bytes) -> PTB | None:
    """The PTB in an IP packet (outer IP header first), fully checked, or None."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        result = parse_ipv4(packet, 0)
    elif version == 6:
        result = parse_ipv6(packet, 0)
    else:
        return None
    return result if isinstance(result, PTB) else None


class Confirmer:
    """Bounded owner lookups for accepted PTBs. One per daemon, used from its event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, lookup: Lookup | None, *,
                 enabled: bool = True, queue_limit: int = DEFAULT_QUEUE_LIMIT,
                 settle: float = DEFAULT_SETTLE, clock: Callable[[], float] = time.monotonic,
                 observer: Observer | None = None) -> None:
        self.loop = loop
        self.lookup = lookup
        self.enabled = enabled and lookup is not None
        self.queue_limit = queue_limit
        self.settle = settle
        self.clock = clock
        self.observer = observer
        self._queue: collections.deque[_Job] = collections.deque()
        self._scheduled = False
        self._in_flight = 0  # queued + waiting for a retry
        #: (origin, verdict) -> count
        self.verdicts: dict[tuple[Origin, OwnerVerdict], int] = {}
        self.queue_full = 0  # PTBs answered UNKNOWN because the queue was full
        self.lookup_errors = 0  # lookups the kernel did not answer usefully
        self.lookups = 0  # sock_diag requests sent
        self.callback_errors = 0
        #: time from capture to the lookup that saw the PMTU down (APPLIED verdicts only)
        self.to_pmtu = LatencyHistogram(TO_PMTU_BUCKETS)

    # -- the contract -------------------------------------------------------------------------
    def submit(self, packet: bytes, origin: Origin, now: float,
               on_verdict: OnVerdict | None = None) -> None:
        """Queue the owner lookup of the flow ``packet`` (a PTB's IP packet) quotes; call
        ``on_verdict(verdict, seconds from capture to verdict)`` once, later, on the loop."""
        if not self.enabled:
            if on_verdict is not None:
                self.loop.call_soon(self._call, on_verdict, OwnerVerdict.UNKNOWN, 0.0)
            return
        ptb = quoted_flow(packet)
        if ptb is None:
            self.loop.call_soon(self._finish, _Job(None, origin, now, on_verdict, [None]),  # type: ignore[arg-type]
                                OwnerVerdict.UNKNOWN)
            return
        self.submit_ptb(ptb, origin, now, on_verdict)

    def submit_ptb(self, ptb: PTB, origin: Origin, now: float,
                   on_verdict: OnVerdict | None = None) -> None:
        """:meth:`submit` for a PTB the caller has already parsed and checked."""
        if not self.enabled:
            if on_verdict is not None:
                self.loop.call_soon(self._call, on_verdict, OwnerVerdict.UNKNOWN, 0.0)
            return
        job = _Job(ptb, origin, now, on_verdict, [None])
        if (ptb.proto != IPPROTO_TCP and ptb.proto != IPPROTO_UDP) or ptb.sport < 0:
            self.loop.call_soon(self._finish, job, OwnerVerdict.UNKNOWN)
            return
        if self._in_flight >= self.queue_limit:
            self.queue_full += 1
            self.loop.call_soon(self._finish, job, OwnerVerdict.UNKNOWN)
            return
        self._in_flight += 1
        self._queue.append(job)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._drain)

    # -- the work ----------------------------------------------------------------------------
    def _drain(self) -> None:
        self._scheduled = False
        queue = self._queue
        while queue:
            self._check(queue.popleft(), FIRST_RETRY)

    def _check(self, job: _Job, retry: float) -> None:
        try:
            verdict = self._look(job.ptb, job.pmtu)
        except Exception:  # a bug or an unreadable answer must not strand the job (or the queue)
            self.lookup_errors += 1
            verdict = OwnerVerdict.UNKNOWN
        if verdict is None:  # owned, PMTU not (yet) down
            wait = min(retry, job.now + self.settle - self.clock())
            if wait > 0:
                self.loop.call_later(wait, self._check, job, retry * 2)
                return
            verdict = OwnerVerdict.NOT_APPLIED
        self._in_flight -= 1
        self._finish(job, verdict)

    def _look(self, ptb: PTB, seen: list) -> OwnerVerdict | None:
        """ORPHAN, APPLIED, UNKNOWN, or None: owned and the PMTU is still above the PTB's.
        ``seen[0]`` gets the path MTU read."""
        lookup = self.lookup
        assert lookup is not None
        family = ptb.family
        self.lookups += 1
        try:
            found = lookup.owner(family, ptb.proto, ptb.inner_src, ptb.sport, ptb.inner_dst, ptb.dport)
        except OSError:
            self.lookup_errors += 1
            return OwnerVerdict.UNKNOWN
        if found is None:
            return OwnerVerdict.ORPHAN
        tcp = ptb.proto == IPPROTO_TCP
        if tcp and found[0] == wire.TCP_TIME_WAIT:
            # The flow ended here, possibly after this very PTB let it finish (on a fast path a
            # transfer can end within the lookup's delay): what the socket learnt outlives it in
            # the route towards the client. Applied if that is at or below the PTB's MTU, else
            # an orphan (the kernel ignores a PTB for a TIME_WAIT socket).
            pmtu = lookup.route_mtu(family, ptb.inner_src, ptb.inner_dst)
            seen[0] = pmtu
            return OwnerVerdict.APPLIED if pmtu and pmtu <= ptb.mtu else OwnerVerdict.ORPHAN
        if tcp and found[0] in wire.NOT_AN_OWNER:
            return OwnerVerdict.ORPHAN
        if tcp:
            pmtu = found[3]
        else:
            pmtu = lookup.route_mtu(family, ptb.inner_src, ptb.inner_dst)
        seen[0] = pmtu
        if pmtu is None:
            self.lookup_errors += 1
            return OwnerVerdict.UNKNOWN
        if 0 < pmtu <= ptb.mtu:
            return OwnerVerdict.APPLIED
        return None

    def _finish(self, job: _Job, verdict: OwnerVerdict) -> None:
        elapsed = max(0.0, self.clock() - job.now)
        key = (job.origin, verdict)
        self.verdicts[key] = self.verdicts.get(key, 0) + 1
        if verdict is OwnerVerdict.APPLIED:
            self.to_pmtu.observe(elapsed)
        if self.observer is not None:
            try:
                self.observer(job.origin, verdict, elapsed, job.ptb, job.pmtu[0])
            except Exception:
                self.callback_errors += 1
        if job.on_verdict is not None:
            self._call(job.on_verdict, verdict, elapsed)

    def _call(self, fn: OnVerdict, verdict: OwnerVerdict, elapsed: float) -> None:
        try:
            fn(verdict, elapsed)
        except Exception:
            self.callback_errors += 1

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def close(self) -> None:
        self.enabled = False
        close = getattr(self.lookup, "close", None)
        if close is not None:
            close()

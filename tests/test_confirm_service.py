"""The Confirmer's scheduling and verdicts (pmtud_relay/confirm/service.py) on a real event loop,
with a scripted lookup standing in for the kernel (the kernel itself: tests/test_e2e_confirm.py)."""

from __future__ import annotations

import asyncio
import errno
import time

from pmtud_relay.confirm import wire
from pmtud_relay.confirm.service import Confirmer
from pmtud_relay.confirm.verdict import Origin, OwnerVerdict
from tests.support import frames as F


class Scripted:
    """owner() answers from ``answers`` in turn (the last repeats); an exception is raised."""

    def __init__(self, *answers, route=None):
        self.answers = list(answers)
        self.route = route
        self.calls = []

    def owner(self, family, proto, local, lport, remote, rport):
        self.calls.append((family, proto, local, lport, remote, rport))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def route_mtu(self, family, src, dst):
        return self.route


def owned(pmtu, state=wire.TCP_ESTABLISHED):
    return (state, 0, 1, pmtu)


def run(lookup, packets, *, settle=0.05, queue_limit=256, enabled=True, wait=0.3):
    """Submit each (packet, origin); return [(verdict, elapsed)] per packet, the confirmer, and
    how many lookups had run when submit() returned."""
    async def main():
        loop = asyncio.get_running_loop()
        c = Confirmer(loop, lookup, settle=settle, queue_limit=queue_limit, enabled=enabled)
        out = [[] for _ in packets]
        now = time.monotonic()
        for i, (pkt, origin) in enumerate(packets):
            c.submit(pkt, origin, now, lambda v, s, i=i: out[i].append((v, s)))
        at_submit = len(getattr(lookup, "calls", ()))
        deadline = loop.time() + wait
        while loop.time() < deadline and not all(out):
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)  # nothing more may come
        return out, c, at_submit
    return asyncio.run(main())


PTB4 = F.ptb_v4(dport=50123)[14:]  # the IP packet, as the contract takes it
PTB6_UDP = F.ptb_v6(proto="udp", dport=40000)[14:]


def test_lookup_runs_after_submit_returns_and_reads_the_quoted_flow():
    lookup = Scripted(owned(1400))
    (res,), c, at_submit = run(lookup, [(PTB4, Origin.CAPTURED)])
    assert at_submit == 0  # nothing before the caller's own work (the copy) is done
    assert [v for v, _ in res] == [OwnerVerdict.APPLIED]
    family, proto, local, lport, remote, rport = lookup.calls[0]
    assert (family, proto, lport, rport) == (4, 6, F.SERVICE_PORT, 50123)
    assert local == bytes(map(int, F.VIP4.split("."))) and remote == bytes(map(int, F.CLIENT4.split(".")))
    assert c.verdicts == {(Origin.CAPTURED, OwnerVerdict.APPLIED): 1} and c.to_pmtu.count == 1


def test_pmtu_that_drops_later_is_applied_after_a_few_looks():
    lookup = Scripted(owned(1500), owned(1500), owned(1400))
    (res,), c, _ = run(lookup, [(PTB4, Origin.L2_COPY)])
    assert [v for v, _ in res] == [OwnerVerdict.APPLIED] and len(lookup.calls) == 3
    assert 0.002 <= res[0][1] < 0.05  # 1 ms + 2 ms of pauses


def test_pmtu_that_never_drops_is_not_applied_within_the_bound():
    lookup = Scripted(owned(1500))
    (res,), _, _ = run(lookup, [(PTB4, Origin.CAPTURED)], settle=0.05)
    assert [v for v, _ in res] == [OwnerVerdict.NOT_APPLIED]
    assert 0.04 <= res[0][1] < 0.2
    assert len(lookup.calls) <= 8  # 0, 1, 2, 4, 8, 16, 32 ms: bounded, not a busy poll


def test_no_socket_listener_and_time_wait_are_orphans():
    for answer in (None, owned(0, wire.TCP_LISTEN), owned(None, wire.TCP_TIME_WAIT)):
        (res,), _, _ = run(Scripted(answer, route=0), [(PTB4, Origin.CAPTURED)])
        assert [v for v, _ in res] == [OwnerVerdict.ORPHAN], answer


def test_time_wait_whose_route_learnt_the_pmtu_is_applied():
    """A flow that finished between the PTB and the lookup (TIME_WAIT) left its PMTU in the route."""
    (res,), _, _ = run(Scripted(owned(None, wire.TCP_TIME_WAIT), route=1400), [(PTB4, Origin.CAPTURED)])
    assert [v for v, _ in res] == [OwnerVerdict.APPLIED]
    (res,), _, _ = run(Scripted(owned(None, wire.TCP_TIME_WAIT), route=1500), [(PTB4, Origin.CAPTURED)])
    assert [v for v, _ in res] == [OwnerVerdict.ORPHAN]


def test_udp_owner_is_judged_by_its_route_pmtu():
    unconnected = owned(None, wire.TCP_CLOSE)  # a bound, unconnected UDP socket owns the flow
    verdicts = run(Scripted(unconnected, route=1280), [(PTB6_UDP, Origin.PEER)])[0][0]
    assert [v for v, _ in verdicts] == [OwnerVerdict.APPLIED]
    assert [v for v, _ in run(Scripted(unconnected, route=0), [(PTB6_UDP, Origin.PEER)], settle=0.01)[0][0]] \
        == [OwnerVerdict.NOT_APPLIED]


def test_failures_unsupported_and_off_are_unknown():
    (res,), c, _ = run(Scripted(OSError(errno.EPERM, "no")), [(PTB4, Origin.CAPTURED)])
    assert [v for v, _ in res] == [OwnerVerdict.UNKNOWN] and c.lookup_errors == 1
    sctp = F.ptb_v4(proto="sctp")[14:]
    lookup = Scripted(owned(1400))
    (res,), _, _ = run(lookup, [(sctp, Origin.CAPTURED)])
    assert [v for v, _ in res] == [OwnerVerdict.UNKNOWN] and not lookup.calls
    (res,), _, _ = run(lookup, [(b"\x45garbage", Origin.CAPTURED)])
    assert [v for v, _ in res] == [OwnerVerdict.UNKNOWN]
    (res,), c, _ = run(lookup, [(PTB4, Origin.CAPTURED)], enabled=False)
    assert [v for v, _ in res] == [OwnerVerdict.UNKNOWN] and not lookup.calls and not c.verdicts


def test_queue_is_bounded():
    lookup = Scripted(owned(1500))  # each stays in flight for the whole settle time
    res, c, _ = run(lookup, [(PTB4, Origin.CAPTURED)] * 12, queue_limit=5, settle=0.03)
    verdicts = [r[0][0] for r in res]
    assert verdicts.count(OwnerVerdict.NOT_APPLIED) == 5 and verdicts.count(OwnerVerdict.UNKNOWN) == 7
    assert c.queue_full == 7 and c.in_flight == 0
    assert all(len(r) == 1 for r in res)  # once each


def test_a_lookup_bug_is_unknown_and_does_not_strand_the_queue():
    lookup = Scripted(ValueError("bug"), owned(1400))
    res, c, _ = run(lookup, [(PTB4, Origin.CAPTURED), (PTB4, Origin.CAPTURED)])
    assert [r[0][0] for r in res] == [OwnerVerdict.UNKNOWN, OwnerVerdict.APPLIED]
    assert c.in_flight == 0 and c.lookup_errors == 1

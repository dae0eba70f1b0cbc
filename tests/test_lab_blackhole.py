"""The lab reproduces the ECMP PMTUD black hole (no relay involved).

Every flow the router's ICMP reaches (s1) completes; every flow on another server stalls; only
s1 learns the 1400-byte path MTU towards the client.
"""

from __future__ import annotations

import time

import pytest

from pmtud_relay.lab import Lab, LabProcess, list_netns, parse_route_get_mtu
from tests.support.netns import PROGRAM_ENV, program
from tests.support.relays import SIZE, STALL_TIMEOUT, by_server, describe


@pytest.mark.netns
@pytest.mark.timeout(90)
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_ecmp_blackhole_without_relay(lab: Lab, family: int) -> None:
    lab.flush_pmtu()
    t0 = time.monotonic()
    flows = lab.run_transfers_spread(family, flows=12, size=SIZE, timeout=STALL_TIMEOUT)
    elapsed = time.monotonic() - t0
    groups = by_server(flows)
    table = describe(flows)

    assert all(f.server for f in flows), f"some flows never got the identity line:\n{table}"
    assert "s1" in groups, f"no flow hashed to s1 after retries:\n{table}"
    others = sorted(set(groups) - {"s1"})
    assert others, f"every flow hashed to s1 after retries:\n{table}"

    for f in groups["s1"]:
        assert f.completed and f.bytes == SIZE, f"s1 (gets the router's ICMP) stalled:\n{table}"
    for name in others:
        for f in groups[name]:
            assert not f.completed and f.bytes < SIZE, \
                f"{name} completed a flow although its PTBs go to s1:\n{table}"
            assert f.seconds >= STALL_TIMEOUT * 0.9, table
    assert elapsed < STALL_TIMEOUT * 4 + 10

    client = lab.client_addr(family)
    assert lab.learned_pmtu("s1", client) == 1400
    for s in lab.servers[1:]:
        assert lab.learned_pmtu(s.name, client) is None, f"{s.name} learned a PMTU"


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_lab_tears_down_when_body_raises(netns_ok) -> None:
    lab = Lab(servers=2)
    procs: list[LabProcess] = []
    with pytest.raises(RuntimeError, match="boom"):
        with lab:
            assert set(lab.namespaces) <= set(list_netns())
            assert all(n.startswith(lab.tag) for n in lab.namespaces)
            procs += lab.start_transfer_servers().values()
            procs.append(lab.spawn("s2", ["sleep", "60"]))
            raise RuntimeError("boom")
    assert not lab.is_up
    assert [n for n in list_netns() if n.startswith(lab.tag)] == []
    assert all(p.poll() is not None for p in procs), procs
    lab.down()  # idempotent


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_labprocess_stop_escalates_to_sigkill(netns_ok) -> None:
    with Lab(servers=1, injector=False) as lab:
        p = lab.spawn_python("s1", "pmtud_relay.lab.transfer", "server", "--name", "s1")
        p.wait_for("^listening", stream="stdout", timeout=10)
        assert p.stop(timeout=5) == 0          # SIGTERM honoured: exit 0
        stubborn = lab.spawn(lab.server_names[0], program("stubborn"), env=PROGRAM_ENV)  # ignores SIGTERM
        stubborn.wait_for("armed", stream="stdout", timeout=10)
        t0 = time.monotonic()
        assert stubborn.stop(timeout=0.5) == -9
        assert time.monotonic() - t0 < 5


def test_parse_route_get_mtu() -> None:
    v4 = ("203.0.113.2 from 192.0.2.10 via 198.51.100.1 dev eth0 uid 0 \n"
          "    cache expires 596sec mtu 1400 \n")
    v4_none = "203.0.113.2 from 192.0.2.10 via 198.51.100.1 dev eth0 uid 0 \n    cache \n"
    v6 = ("2001:db8:c::2 from 2001:db8:ffff::10 via 2001:db8:5::1 dev eth0 src 2001:db8:5::11 "
          "metric 1024 expires 596sec mtu 1400 pref medium\n")
    v6_none = ("2001:db8:c::2 from 2001:db8:ffff::10 via 2001:db8:5::1 dev eth0 "
               "src 2001:db8:5::12 metric 1024 pref medium\n")
    assert parse_route_get_mtu(v4) == 1400
    assert parse_route_get_mtu(v4_none) is None
    assert parse_route_get_mtu(v6) == 1400
    assert parse_route_get_mtu(v6_none) is None

"""End to end: the relay, running on every server of the lab, closes the ECMP PMTUD black hole.

Contract exercised (``python -m pmtud_relay``, run with this interpreter in each server ns):
  * ``run -i eth0`` logs a line containing ``event=ready`` on stderr once capturing, relays
    unicast PTBs as L2 broadcast/multicast copies, exits 0 on SIGTERM;
  * ``dry-run -i eth0 --json`` prints one JSON object per decision on stdout with at least
    verdict, reason, family, outer_src, outer_dst, mtu, inner_src, inner_dst, proto, sport,
    dport; verdict is "relay" or "drop"; it sends nothing.
"""

from __future__ import annotations

import ipaddress
import time

import pytest

from pmtud_relay.lab import Lab, LabProcess
from tests.support import wire
from tests.support.relays import (
    FLOW_TIMEOUT,
    SIZE,
    STALL_TIMEOUT,
    assert_blackhole_closed,
    by_server,
    describe,
    start_relays,
    stop_relays,
)

REQUIRED_KEYS = {"verdict", "reason", "family", "outer_src", "outer_dst", "mtu", "inner_src",
                 "inner_dst", "proto", "sport", "dport"}
BOGUS_SRC = {4: "198.51.100.99", 6: "2001:db8:5::99"}   # on-link, but not a VIP


def same_ip(a, b) -> bool:
    try:
        return ipaddress.ip_address(str(a)) == ipaddress.ip_address(str(b))
    except ValueError:
        return False


def wait_json(proc: LabProcess, done, timeout: float = 5.0) -> list[dict]:
    """Poll ``proc``'s JSON stdout lines until ``done(lines)``; return all lines."""
    deadline = time.monotonic() + timeout
    while True:
        lines = proc.json_lines()
        if done(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_relay_closes_the_blackhole(lab: Lab) -> None:
    lab.start_transfer_servers()
    relays = start_relays(lab, dict.fromkeys(lab.server_names, ["run", "-i", "eth0"]))
    lab.flush_pmtu()
    for family in (4, 6):
        flows = lab.run_transfers_spread(family, flows=12, size=SIZE, timeout=FLOW_TIMEOUT)
        assert_blackhole_closed(lab, family, flows, relays)
    stop_relays(relays)


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_dry_run_reports_and_sends_nothing(lab: Lab) -> None:
    lab.start_transfer_servers()
    relays = start_relays(lab, dict.fromkeys(lab.server_names, ["dry-run", "-i", "eth0", "--json"]))
    lab.flush_pmtu()
    for family in (4, 6):
        flows = lab.run_transfers_spread(family, flows=12, size=SIZE, timeout=STALL_TIMEOUT)
        table = describe(flows)
        groups = by_server(flows)
        assert all(f.server for f in flows), table
        others = sorted(set(groups) - {"s1"})
        assert others, f"IPv{family}: every flow hashed to s1 after retries:\n{table}"
        stalled = [f for name in others for f in groups[name]]
        for f in groups.get("s1", []):
            assert f.completed, f"IPv{family}: s1 flow stalled:\n{table}"
        for f in stalled:
            assert not f.completed, f"IPv{family}: dry-run must not fix {f.server}:\n{table}"
        client = lab.client_addr(family)
        for name in others:
            assert lab.learned_pmtu(name, client) is None, f"{name} learned a PMTU in dry-run"

        vip = lab.vip(family)
        want_ports = {f.client_port for f in stalled}

        def relayed_ports(lines):
            return {int(rec["dport"]) for rec in lines
                    if rec.get("verdict") == "relay" and same_ip(rec.get("inner_src"), vip)
                    and same_ip(rec.get("inner_dst"), client) and rec.get("dport") is not None
                    and int(rec.get("sport") or -1) == lab.port}

        lines = wait_json(relays["s1"], lambda ls: want_ports <= relayed_ports(ls), timeout=3.0)
        assert lines, f"s1 dry-run printed nothing\n{relays['s1'].stderr}"
        for rec in lines:
            missing = REQUIRED_KEYS - set(rec)
            assert not missing, f"dry-run JSON line lacks {missing}: {rec}"
            assert rec["verdict"] in ("relay", "drop"), rec
        missing_ports = want_ports - relayed_ports(lines)
        assert not missing_ports, (
            f"IPv{family}: no relay verdict for stalled flows' ports {sorted(missing_ports)}\n"
            f"{table}\n" + "\n".join(str(rec) for rec in lines))
        for rec in lines:
            if rec["verdict"] == "relay" and same_ip(rec["inner_src"], vip):
                assert int(rec["mtu"]) == 1400, rec
                assert same_ip(rec["outer_dst"], vip), rec
    stop_relays(relays)


def _ptb_frame(lab: Lab, family: int, inner_src: str, dport: int) -> bytes:
    """A PTB (MTU 1400) from the router to the VIP, unicast to s1's MAC, quoting a 1500-byte
    TCP segment inner_src:8080 -> client:dport."""
    return wire.flow_ptb_frame(family, lab.server("s1").mac, lab.mac("injector"), outer_src=lab.router_addr(family),
                               vip=lab.vip(family), client=lab.client_addr(family), sport=lab.port, dport=dport,
                               mtu=1400, seq=1000, ack=1, tcp_flags=0x18, full_l4=True, inner_src=inner_src)


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_injected_ptb_for_non_vip_is_dropped(lab: Lab, family: int) -> None:
    others = lab.server_names[1:]
    bogus = BOGUS_SRC[family]
    vip = lab.vip(family)

    sniffers = {name: lab.sniff(name) for name in others}
    # 1) dry-run on s1: the forged PTB is dropped, a well-formed one (control) would be relayed
    relay = start_relays(lab, {"s1": ["dry-run", "-i", "eth0", "--json"]})["s1"]
    lab.inject(_ptb_frame(lab, family, bogus, 40001))
    lab.inject(_ptb_frame(lab, family, vip, 40002))
    lines = wait_json(relay, lambda ls: any(rec.get("dport") is not None and int(rec["dport"]) == 40002
                                            for rec in ls))
    bad = [rec for rec in lines if same_ip(rec.get("inner_src"), bogus)]
    good = [rec for rec in lines if same_ip(rec.get("inner_src"), vip)
            and rec.get("dport") is not None and int(rec["dport"]) == 40002]
    dump = "\n".join(str(rec) for rec in lines) + f"\n--- stderr ---\n{relay.stderr}"
    assert bad, f"dry-run did not report the forged PTB:\n{dump}"
    assert all(rec["verdict"] == "drop" and rec["reason"] in ("not_vip", "dst_not_quoted_src")
               for rec in bad), dump
    assert good and good[0]["verdict"] == "relay", f"control PTB not relayed:\n{dump}"
    stop_relays({"s1": relay})

    # 2) the real relay on s1: the control PTB is broadcast, the forged one is not
    relay = start_relays(lab, {"s1": ["run", "-i", "eth0"]})["s1"]
    lab.inject(_ptb_frame(lab, family, bogus, 40003))
    lab.inject(_ptb_frame(lab, family, vip, 40004))
    time.sleep(0.5)
    stop_relays({"s1": relay})

    for name, sniffer in sniffers.items():
        seen = lab.sniff_result(sniffer)
        copies = [f for f in seen if f.get("pkttype") in ("host", "broadcast", "multicast")]
        assert not [f for f in seen if same_ip(f.get("inner_src"), bogus)], \
            f"{name} saw a copy of the forged PTB: {seen}"
        assert not [f for f in copies if f.get("dport") == 40002], \
            f"{name} saw a copy sent by dry-run: {seen}"
        control = [f for f in copies if f.get("dport") == 40004 and same_ip(f["inner_src"], vip)]
        assert control, f"{name} saw no relayed copy of the control PTB: {seen}"
        want = "broadcast" if family == 4 else "multicast"
        assert all(f["pkttype"] == want for f in control), control

"""End to end: the relay, running on every server of the lab, closes the ECMP PMTUD black hole.

Contract exercised (``python -m pmtud_relay``, run with this interpreter in each server ns):
  * ``run -i eth0`` logs a line containing ``event=ready`` on stderr once capturing, relays
    unicast PTBs as L2 broadcast/multicast copies, exits 0 on SIGTERM;
  * ``dry-run -i eth0 --json`` prints one JSON object per decision on stdout with at least
    verdict, reason, family, outer_src, outer_dst, mtu, inner_src, inner_dst, proto, sport,
    dport; verdict is "relay" or "drop"; it sends nothing.
"""

from __future__ import annotations

import collections
import ipaddress
import time

import pytest

from pmtud_relay.lab import Lab, LabError, LabProcess

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
E2E_FLOW_TIMEOUT = 6.0     # with the relay every flow should finish in well under a second
STALL_TIMEOUT = 3.0        # dry-run: flows on s2.. must still stall this long
SIZE = 262144
REQUIRED_KEYS = {"verdict", "reason", "family", "outer_src", "outer_dst", "mtu", "inner_src",
                 "inner_dst", "proto", "sport", "dport"}
BOGUS_SRC = {4: "198.51.100.99", 6: "2001:db8:5::99"}   # on-link, but not a VIP


def start_relays(lab: Lab, *args: str, nodes: list[str] | None = None) -> dict[str, LabProcess]:
    """``python -m pmtud_relay ARGS`` in each server (default: all); wait for event=ready."""
    procs = {name: lab.spawn_python(name, "pmtud_relay", *args)
             for name in (nodes or lab.server_names)}
    for name, p in procs.items():
        try:
            p.wait_for(r"event=ready", stream="stderr", timeout=READY_TIMEOUT)
        except (TimeoutError, LabError) as e:
            pytest.fail(f"relay in {name} not ready: {e}", pytrace=False)
    return procs


def stop_relays(procs: dict[str, LabProcess]) -> dict[str, int]:
    for p in procs.values():
        assert p.poll() is None, f"relay in {p.node} died early rc={p.poll()}\n{p.stderr}"
    for p in procs.values():
        p.terminate()
    t0 = time.monotonic()
    rcs = {name: p.stop(timeout=STOP_TIMEOUT) for name, p in procs.items()}
    assert time.monotonic() - t0 < STOP_TIMEOUT + 1
    return rcs


def by_server(flows):
    out = collections.defaultdict(list)
    for f in flows:
        out[f.server].append(f)
    return dict(out)


def describe(flows) -> str:
    return "\n".join(f"  #{f.index} {f.server} port={f.client_port} bytes={f.bytes} "
                     f"completed={f.completed} {f.seconds:.3f}s err={f.error}" for f in flows)


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
    relays = start_relays(lab, "run", "-i", "eth0")
    lab.flush_pmtu()
    for family in (4, 6):
        flows = lab.run_transfers_spread(family, flows=12, size=SIZE, timeout=E2E_FLOW_TIMEOUT)
        table = describe(flows)
        groups = by_server(flows)
        assert all(f.completed and f.bytes == SIZE for f in flows), \
            f"IPv{family}: flows stalled with the relay running:\n{table}\n" + \
            "\n".join(f"--- {n} stderr ---\n{p.stderr}" for n, p in relays.items())
        assert len(groups) >= 2, f"IPv{family}: flows on one server only:\n{table}"
        client = lab.client_addr(family)
        assert lab.learned_pmtu("s1", client) == 1400
        for name in sorted(set(groups) - {"s1"}):
            assert lab.learned_pmtu(name, client) == 1400, \
                f"IPv{family}: {name} completed its flows but learned no PMTU"
    rcs = stop_relays(relays)
    assert rcs == {name: 0 for name in relays}, \
        "\n".join(f"--- {n} rc={rcs[n]} ---\n{p.stderr}" for n, p in relays.items())


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_dry_run_reports_and_sends_nothing(lab: Lab) -> None:
    lab.start_transfer_servers()
    relays = start_relays(lab, "dry-run", "-i", "eth0", "--json")
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
            return {int(l["dport"]) for l in lines
                    if l.get("verdict") == "relay" and same_ip(l.get("inner_src"), vip)
                    and same_ip(l.get("inner_dst"), client) and l.get("dport") is not None
                    and int(l.get("sport") or -1) == lab.port}

        lines = wait_json(relays["s1"], lambda ls: want_ports <= relayed_ports(ls), timeout=3.0)
        assert lines, f"s1 dry-run printed nothing\n{relays['s1'].stderr}"
        for l in lines:
            missing = REQUIRED_KEYS - set(l)
            assert not missing, f"dry-run JSON line lacks {missing}: {l}"
            assert l["verdict"] in ("relay", "drop"), l
        missing_ports = want_ports - relayed_ports(lines)
        assert not missing_ports, (
            f"IPv{family}: no relay verdict for stalled flows' ports {sorted(missing_ports)}\n"
            f"{table}\n" + "\n".join(str(l) for l in lines))
        for l in lines:
            if l["verdict"] == "relay" and same_ip(l["inner_src"], vip):
                assert int(l["mtu"]) == 1400, l
                assert same_ip(l["outer_dst"], vip), l
    rcs = stop_relays(relays)
    assert rcs == {name: 0 for name in relays}, \
        "\n".join(f"--- {n} rc={rcs[n]} ---\n{p.stderr}" for n, p in relays.items())


def _ptb_frame(lab: Lab, family: int, inner_src: str, dport: int) -> bytes:
    """A PTB (MTU 1400) from the router to the VIP, unicast to s1's MAC, quoting a 1500-byte
    TCP segment inner_src:8080 -> client:dport."""
    from scapy.layers.inet import ICMP, IP, TCP
    from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
    from scapy.layers.l2 import Ether

    s1 = lab.server("s1")
    eth = Ether(dst=s1.mac, src=lab.mac("injector"))
    tcp = TCP(sport=lab.port, dport=dport, flags="PA", seq=1000, ack=1)
    if family == 4:
        pkt = (eth / IP(src=lab.router_addr(4), dst=lab.vip(4), ttl=64)
               / ICMP(type=3, code=4, nexthopmtu=1400)
               / IP(src=inner_src, dst=lab.client_addr(4), len=1500, flags="DF", ttl=63) / tcp)
    else:
        pkt = (eth / IPv6(src=lab.router_addr(6), dst=lab.vip(6), hlim=64)
               / ICMPv6PacketTooBig(mtu=1400)
               / IPv6(src=inner_src, dst=lab.client_addr(6), plen=1460, hlim=63) / tcp)
    return bytes(pkt)


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_injected_ptb_for_non_vip_is_dropped(lab: Lab, family: int) -> None:
    pytest.importorskip("scapy")
    others = lab.server_names[1:]
    bogus = BOGUS_SRC[family]
    vip = lab.vip(family)

    sniffers = {name: lab.sniff(name) for name in others}
    # 1) dry-run on s1: the forged PTB is dropped, a well-formed one (control) would be relayed
    relay = start_relays(lab, "dry-run", "-i", "eth0", "--json", nodes=["s1"])["s1"]
    lab.inject(_ptb_frame(lab, family, bogus, 40001))
    lab.inject(_ptb_frame(lab, family, vip, 40002))
    lines = wait_json(relay, lambda ls: any(l.get("dport") is not None and int(l["dport"]) == 40002
                                            for l in ls))
    bad = [l for l in lines if same_ip(l.get("inner_src"), bogus)]
    good = [l for l in lines if same_ip(l.get("inner_src"), vip)
            and l.get("dport") is not None and int(l["dport"]) == 40002]
    dump = "\n".join(str(l) for l in lines) + f"\n--- stderr ---\n{relay.stderr}"
    assert bad, f"dry-run did not report the forged PTB:\n{dump}"
    assert all(l["verdict"] == "drop" and l["reason"] in ("not_vip", "dst_not_quoted_src")
               for l in bad), dump
    assert good and good[0]["verdict"] == "relay", f"control PTB not relayed:\n{dump}"
    assert stop_relays({"s1": relay}) == {"s1": 0}

    # 2) the real relay on s1: the control PTB is broadcast, the forged one is not
    relay = start_relays(lab, "run", "-i", "eth0", nodes=["s1"])["s1"]
    lab.inject(_ptb_frame(lab, family, bogus, 40003))
    lab.inject(_ptb_frame(lab, family, vip, 40004))
    time.sleep(0.5)
    assert stop_relays({"s1": relay}) == {"s1": 0}

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

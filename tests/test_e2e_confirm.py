"""End to end: delivery confirmation on real kernels, through the ECMP lab (L2).

A relay runs on every server (``run -i eth0 --log-level debug``); each logs one
``event=owner_verdict`` line per PTB it accepted (captured, or another relay's L2 copy) with the
quoted flow and the owner verdict. Real TCP flows (the lab's transfers) and real UDP sockets;
crafted PTBs only where the test needs a flow state no transfer gives (a closed flow, a quoted
sequence number out of the window).
"""

from __future__ import annotations

import ipaddress
import time

import pytest

from pmtud_relay.lab import Lab
from tests.support import wire
from tests.support.netns import PROGRAM_ENV, program
from tests.support.relays import FLOW_TIMEOUT, describe, dump, log_events, start_relays, stop_relays

RELAY_ARGV = ["run", "-i", "eth0", "--log-level", "debug"]


def _ip(a) -> str:
    return str(ipaddress.ip_address(str(a)))


def verdicts(relays, family: int, lab: Lab) -> dict[tuple[str, int, int], dict[str, set[str]]]:
    """{(proto, sport, client port): {server: {verdicts}}} of every owner_verdict line about the
    lab's VIP and client of ``family``."""
    out: dict = {}
    vip, client = _ip(lab.vip(family)), _ip(lab.client_addr(family))
    for name, p in relays.items():
        for rec in log_events(p, "owner_verdict"):
            if _ip(rec.get("inner_src")) != vip or _ip(rec.get("inner_dst")) != client:
                continue
            key = (rec["proto"], int(rec["sport"]), int(rec["dport"]))
            out.setdefault(key, {}).setdefault(name, set()).add(rec["owner"])
    return out


def wait_verdicts(relays, family, lab, want, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        got = verdicts(relays, family, lab)
        if want(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def ptb_frame(lab: Lab, family: int, proto: str, sport: int, dport: int, seq: int = 1000) -> bytes:
    """A PTB (MTU 1400) from the router to the VIP, unicast to s1, quoting a 1500-byte segment
    VIP:sport -> client:dport (TCP with sequence number ``seq``, or UDP)."""
    return wire.flow_ptb_frame(family, lab.server("s1").mac, lab.mac("injector"), outer_src=lab.router_addr(family),
                               vip=lab.vip(family), client=lab.client_addr(family), sport=sport, dport=dport,
                               mtu=1400, proto=proto, seq=seq, ack=1, tcp_flags=0x18, full_l4=True)


@pytest.mark.netns
@pytest.mark.timeout(150)
def test_owner_found_on_exactly_the_right_server(lab: Lab) -> None:
    """Real TCP flows spread over the servers by ECMP, each asking for 1 MB and reading it only
    after a pause (so each flow is still open when it is looked up: a lab transfer over veth ends
    within a millisecond of its PMTU dropping). The router's PTBs all reach s1, which relays them;
    the server whose flow a PTB quotes says applied, every other server says orphan."""
    lab.start_transfer_servers()
    relays = start_relays(lab, dict.fromkeys(lab.server_names, RELAY_ARGV))
    try:
        lab.flush_pmtu()
        for family in (4, 6):
            for _attempt in range(3):  # the L4 hash is random per port: retry a lopsided draw
                client = lab.spawn("client", program("sockets", "hold-flows", lab.vip(family), lab.port, 12),
                                   env=PROGRAM_ENV)
                client.wait_for(r"^held", stream="stdout", timeout=15)
                owner_of = {int(port): name for name, port in
                            (line.split() for line in client.lines("stdout") if line.startswith("s"))}
                if len(set(owner_of.values())) >= 2:
                    break
                client.stop(5)
            assert len(set(owner_of.values())) >= 2, owner_of

            # A server lowers its PMTU towards the client for all its flows at once (a route
            # exception per destination), so one relayed PTB per server is enough: the flows whose
            # PTB came are those with verdicts. Every server that carries a flow gets at least one.
            servers = set(owner_of.values())

            def complete(got):
                flows = {p for p in owner_of if len(got.get(("6", lab.port, p), {})) == len(lab.server_names)}
                return {owner_of[p] for p in flows} >= servers

            got = wait_verdicts(relays, family, lab, complete, timeout=8.0)
            client.stop(5)
            judged = {p: got[("6", lab.port, p)] for p in owner_of if ("6", lab.port, p) in got}
            assert {owner_of[p] for p in judged} >= servers, f"IPv{family}: {owner_of}\n{judged}\n{dump(relays)}"
            for cport, by_node in sorted(judged.items()):
                owner = owner_of[cport]
                assert by_node.get(owner) == {"applied"}, \
                    f"IPv{family} port {cport} owner {owner}: {by_node}\n{owner_of}\n{dump(relays)}"
                for name in lab.server_names:
                    if name != owner:
                        assert by_node.get(name) == {"orphan"}, \
                            f"IPv{family} port {cport} ({owner}) on {name}: {by_node}"
        for name, p in relays.items():
            assert not [r for r in log_events(p, "owner_verdict") if r["owner"] == "unknown"], dump(relays)
            if name != "s1":  # they received copies only: looked up, never relayed again
                assert not log_events(p, "relayed"), dump(relays)
                assert {r["origin"] for r in log_events(p, "owner_verdict")} == {"l2_copy"}, dump(relays)
    finally:
        stop_relays(relays)


@pytest.mark.netns
@pytest.mark.timeout(150)
def test_closed_flow_is_orphan_everywhere_and_out_of_window_is_not_applied(lab: Lab) -> None:
    lab.start_transfer_servers()
    relays = start_relays(lab, dict.fromkeys(lab.server_names, RELAY_ARGV))
    held = None
    try:
        for family in (4, 6):
            lab.flush_pmtu()
            # 1) a finished transfer: the server closed first, its socket is in TIME_WAIT
            flows = lab.run_transfers(family, flows=1, size=1000, timeout=FLOW_TIMEOUT)
            assert flows[0].completed, describe(flows)
            closed_port = flows[0].client_port
            lab.inject(ptb_frame(lab, family, "tcp", lab.port, closed_port, seq=0x51000000))
            # 2) an established connection held open (the server waits for "go"): a PTB quoting a
            #    sequence number outside its send window is owned but not applied
            held = lab.spawn(  # connect, print the serving server's name and our port, then idle
                "client", program("sockets", "hold-one", lab.vip(family), lab.port), env=PROGRAM_ENV)
            held.wait_for(r"^s\d+ \d+$", stream="stdout", timeout=10)
            owner, port = held.lines("stdout")[0].split()
            lab.inject(ptb_frame(lab, family, "tcp", lab.port, int(port), seq=0x6E000000))
            # 3) UDP: a socket bound to VIP:5353 on s2 only, and the PTB quoting VIP:5353 -> client
            udp = lab.spawn("s2", program("sockets", "bind-udp", lab.vip(family), 5353), env=PROGRAM_ENV)
            udp.wait_for(r"^bound", stream="stdout", timeout=10)
            lab.inject(ptb_frame(lab, family, "udp", 5353, 40053))

            def done(got):
                keys = [("6", lab.port, closed_port), ("6", lab.port, int(port)), ("17", 5353, 40053)]
                return all(len(got.get(k, {})) == len(lab.server_names) for k in keys)

            got = wait_verdicts(relays, family, lab, done)
            closed = got.get(("6", lab.port, closed_port), {})
            assert closed == {n: {"orphan"} for n in lab.server_names}, \
                f"IPv{family} closed flow: {closed}\n{dump(relays)}"
            window = got.get(("6", lab.port, int(port)), {})
            assert window == {n: {"not_applied" if n == owner else "orphan"} for n in lab.server_names}, \
                f"IPv{family} out-of-window (owner {owner}): {window}\n{dump(relays)}"
            udp_v = got.get(("17", 5353, 40053), {})
            assert udp_v == {n: {"applied" if n == "s2" else "orphan"} for n in lab.server_names}, \
                f"IPv{family} UDP: {udp_v}\n{dump(relays)}"
            assert lab.learned_pmtu("s2", family=family) == 1400
            held.stop(5)
            udp.stop(5)
            held = None
    finally:
        if held is not None:
            held.stop(5)
        stop_relays(relays)


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_dry_run_lines_carry_the_owner_verdict(lab: Lab) -> None:
    """dry-run --json on s1: a relayed PTB's line says whether s1 owns the flow; with
    --no-confirm-owner the line has no verdict."""
    udp = lab.spawn("s1", program("sockets", "bind-udp", lab.vip(4), 5353), env=PROGRAM_ENV)
    udp.wait_for(r"^bound", stream="stdout", timeout=10)
    relay = start_relays(lab, {"s1": ["dry-run", "-i", "eth0", "--json"]})["s1"]
    try:
        lab.inject(ptb_frame(lab, 4, "udp", 5353, 40061))
        lab.inject(ptb_frame(lab, 4, "udp", 5354, 40062))  # no socket on VIP:5354
        deadline = time.monotonic() + 5
        while len([rec for rec in relay.json_lines() if "owner" in rec]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = {int(rec["dport"]): rec for rec in relay.json_lines() if rec.get("dport")}
        assert lines[40061]["owner"] == "applied" and lines[40061]["origin"] == "captured", lines
        assert lines[40061]["verdict"] == "relay" and 0 <= lines[40061]["owner_seconds"] < 0.1, lines
        assert lines[40062]["owner"] == "orphan", lines
    finally:
        stop_relays({"s1": relay})
    relay = start_relays(lab, {"s1": ["dry-run", "-i", "eth0", "--json", "--no-confirm-owner"]})["s1"]
    try:
        lab.inject(ptb_frame(lab, 4, "udp", 5353, 40063))
        deadline = time.monotonic() + 5
        while not relay.json_lines() and time.monotonic() < deadline:
            time.sleep(0.05)
        (line,) = [rec for rec in relay.json_lines() if rec.get("dport") == 40063]
        assert line["verdict"] == "relay" and "owner" not in line, line
    finally:
        stop_relays({"s1": relay})
        udp.stop(5)

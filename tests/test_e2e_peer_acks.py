"""End to end across L3: delivery acknowledgements in peers mode (issue 17, item 3).

The routed lab (client — ECMP router — s1..s3, each server in its own subnet; the router's ICMP for
the VIP all goes to s1), ``run --fanout peers`` on every server. s1 captures the router's PTBs and
sends each to s2 and s3; the one that owns the quoted TCP flow (a real transfer, found by the owner
lookup over sock_diag) answers s1 with one signed ack; the other stays silent. A PTB quoting a flow
nobody has gets no ack and counts as not delivered once its wait expires. A UDP socket on s2 is
found the same way (``applied``, s2's route towards the client drops to 1400); a PTB quoting a held
TCP connection's flow with a sequence number out of its window is owned but ``not_applied`` (the
kernel ignores it), and its owner acks it as such.
"""

from __future__ import annotations

import re
import time

import pytest

from pmtud_relay.lab.routed import RoutedLab
from pmtud_relay.peers.service import ACK_EXPIRY
from tests.support import frames as F
from tests.support.netns import PROGRAM_ENV, program
from tests.support.peers import peer_argv, scrape, transfers
from tests.support.relays import assert_blackhole_closed, describe, dump, log_events, start_relays, stop_relays

CLOSED_PORT = 61999  # a client port no flow uses


def closed_flow_ptb(lab: RoutedLab) -> bytes:
    """A PTB from the router quoting TCP VIP:80 -> client:61999: no socket anywhere owns it."""
    vip = lab.vip(4)
    return F.ptb_v4(outer_src=lab.router_addr(4), outer_dst=vip, src=vip, dst=lab.client_addr(4),
                    sport=80, dport=CLOSED_PORT, mtu=1400, flags="DF")[14:]


def wait_for(fn, timeout: float, what: str, procs):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} never happened\n{dump(procs)}", pytrace=False)
        time.sleep(0.1)


@pytest.mark.netns
@pytest.mark.timeout(180)
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_only_the_owner_acks_and_the_relaying_host_counts_it(routed_lab: RoutedLab, key_file: str,
                                                             family: int) -> None:
    """Peers over IPv{family}, flows over IPv{family}; the closed-flow PTB is IPv4 (sent with an
    IPv4 raw socket from the router)."""
    lab = routed_lab
    lab.start_transfer_servers()
    procs = start_relays(lab, {n: peer_argv(lab, n, key_file, family, "--log-level", "debug")
                               for n in lab.server_names})
    flows, groups = transfers(lab, family)
    assert_blackhole_closed(lab, family, flows, procs, closed_by="the peer relay")
    owner_of = {f.client_port: f.server for f in flows}
    name_of = {lab.server(n).addr(family): n for n in lab.server_names}
    relayed_to_owner = sorted(set(groups) - {"s1"})
    assert relayed_to_owner, describe(flows)

    # Every PTB for a flow on s2/s3 crossed s1 -> (s2, s3): its owner acks it, nobody else.
    s1 = procs["s1"]
    acks = wait_for(lambda: (lambda a: a if {name_of.get(r["peer"]) for r in a} >= set(relayed_to_owner) else None)(
        log_events(s1, "peer_ack")), 10, f"acks from {relayed_to_owner}\n{describe(flows)}", procs)
    for rec in acks:
        owner = owner_of.get(int(rec["dport"]))
        if owner is None:  # a flow of an earlier attempt of the spread (transfers() retries lopsided ones)
            continue
        assert name_of.get(rec["peer"]) == owner, f"ack from {rec['peer']} for a flow on {owner}: {rec}"
        assert rec["owner_verdict"] == "applied", rec
        assert float(rec["rtt_ms"]) < ACK_EXPIRY * 1000, rec

    # A PTB for a flow nobody has: the server that captures it (the router's ECMP decides which)
    # relays it to the other two, which inject it and stay silent; after the wait it counts as
    # not delivered there.
    # an ICMP raw socket (not IPPROTO_RAW): the router's `ipproto icmp` rule sends it to s1
    lab.run("router", program("sockets", "raw-icmp", lab.vip(4), closed_flow_ptb(lab).hex()), env=PROGRAM_ENV)

    def closed(event, p):
        return [r for r in log_events(p, event) if r.get("dport") == str(CLOSED_PORT)]

    relayer = wait_for(lambda: [n for n, p in procs.items() if closed("relayed", p)], 10,
                       "the closed flow's PTB being relayed", procs)
    assert len(relayer) == 1, relayer
    relayer = relayer[0]
    unacked = wait_for(lambda: closed("peer_no_owner_ack", procs[relayer]), ACK_EXPIRY + 5,
                       "the closed flow's PTB expiring unacknowledged", procs)
    others = {lab.server(n).addr(family) for n in lab.server_names if n != relayer}
    assert len(unacked) == 1 and set(unacked[0]["peers"].split(",")) == others, unacked
    for p in procs.values():
        assert not closed("peer_ack", p)

    text = scrape(lab, "s1")
    # The owners counted the peers' PTBs in their own confirmation metrics, by origin "peer".
    for name in relayed_to_owner:
        owner_text = scrape(lab, name)
        found = re.search(r'pmtud_relay_owner_verdicts_total\{origin="peer",verdict="applied"\} ([0-9.]+)',
                          owner_text)
        assert found and float(found.group(1)) >= 1, (name, owner_text)
    final = stop_relays(procs)
    acks = log_events(s1, "peer_ack")
    rec = final["s1"]
    # Exactly one ack per acknowledged fan-out, all accepted, all "applied".
    assert int(rec["peer_acked"]) == len(acks) == int(rec["peer_acks_applied"]), (rec, acks)
    assert int(rec["peer_ack_drops"]) == 0 and int(rec["peer_acks_not_applied"]) == 0, rec
    assert int(final[relayer]["peer_unacked"]) >= 1, final[relayer]  # the closed flow
    assert f'pmtud_relay_peer_acks_total{{result="applied"}} {len(acks)}.0' in text, text
    assert 'pmtud_relay_peer_fanouts_total{result="not_delivered"}' in text
    sent = {name_of[a["peer"]]: 0 for a in acks}
    for a in acks:
        sent[name_of[a["peer"]]] += 1
    for name in ("s2", "s3"):
        assert int(final[name].get("peer_acks_sent", 0)) == sent.get(name, 0), (name, final[name], sent)
        assert int(final[name].get("peer_injected", 0)) >= 1, final[name]


@pytest.mark.netns
@pytest.mark.timeout(180)
def test_ack_leaves_from_the_address_the_datagram_was_sent_to(routed_lab: RoutedLab, key_file: str) -> None:
    """s2 is known to s1 by a second address (on its lo, like a BGP host's loopback address);
    s2 listens on the wildcard. Its acks must come from that address, not from the one the
    route back to s1 would pick (its uplink address), or s1 refuses them as ``wrong_peer``."""
    lab = routed_lab
    extra = "198.51.100.200"  # outside every lab link subnet
    s2 = lab.server("s2")
    lab.ip("s2", "addr", "add", f"{extra}/32", "dev", "lo")
    lab.ip("router", "route", "add", f"{extra}/32", "via", s2.ipv4)
    lab.start_transfer_servers()
    args = peer_argv(lab, "s1", key_file, 4, "--log-level", "debug")
    args[args.index(s2.ipv4)] = extra  # s1 knows s2 by the extra address only
    procs = start_relays(lab, {"s1": args, "s2": peer_argv(lab, "s2", key_file, 4),
                               "s3": peer_argv(lab, "s3", key_file, 4)})
    flows, groups = transfers(lab, 4)
    assert_blackhole_closed(lab, 4, flows, procs, closed_by="the peer relay")
    assert "s2" in groups, describe(flows)
    s1 = procs["s1"]
    acks = wait_for(lambda: [r for r in log_events(s1, "peer_ack") if r["peer"] == extra], 10,
                    f"an ack from {extra}", procs)
    owner_of = {f.client_port: f.server for f in flows}
    # (transfers() may have retried a lopsided spread: acks for earlier attempts' flows are unknown here)
    known = [r for r in acks if int(r["dport"]) in owner_of]
    assert known and all(owner_of[int(r["dport"])] == "s2" for r in known), (known, describe(flows))
    final = stop_relays(procs)
    assert int(final["s1"]["peer_ack_drops"]) == 0, final["s1"]


# -- a UDP owner, and an owner that did not apply the PTB (issue 17) ----------------------------------
UDP_PORT, UDP_CLIENT_PORT = 5353, 40053
OUT_OF_WINDOW_SEQ = 0x6E000000  # never within a send window of a few bytes from a random ISN


def ptb_to_s1(lab: RoutedLab, family: int, l4, sport: int, dport: int) -> None:
    """Send a PTB (MTU 1400) from the router's port towards s1 straight to s1's MAC, quoting
    ``l4`` (a scapy TCP/UDP header) from VIP:sport to client:dport: s1 captures it and sends it
    to its peers, whatever ECMP would do."""
    from pmtud_relay.lab.routed import router_port_mac

    common = dict(outer_src=lab.router_addr(family), outer_dst=lab.vip(family), src=lab.vip(family),
                  dst=lab.client_addr(family), proto=l4, sport=sport, dport=dport, mtu=1400, length=1500,
                  dst_mac=lab.server("s1").mac, src_mac=router_port_mac(1))
    frame = F.ptb_v4(flags="DF", **common) if family == 4 else F.ptb_v6(**common)
    lab.inject(frame, node="router", iface=lab.server("s1").bridge_port)


def flow_events(p, event: str, proto: int, dport: int) -> list[dict[str, str]]:
    return [r for r in log_events(p, event) if r.get("proto") == str(proto) and r.get("dport") == str(dport)]


def peer_verdicts(procs, proto: int, dport: int) -> dict[str, set[str]]:
    """{server: {owner verdicts of PTBs it received from a peer}} for the flow to client:dport."""
    return {n: {r["owner"] for r in flow_events(p, "owner_verdict", proto, dport) if r.get("origin") == "peer"}
            for n, p in procs.items()}


def counter(text: str, sample: str) -> float:
    found = re.search("^" + re.escape(sample) + r" ([0-9.eE+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.netns
@pytest.mark.timeout(150)
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_udp_owner_across_l3_applies_and_acks(routed_lab: RoutedLab, key_file: str, family: int) -> None:
    """A UDP socket bound to VIP:5353 on s2 only; a PTB quoting VIP:5353 -> client reaches s1,
    which sends it to s2 and s3. s2's kernel lowers the PMTU towards the client (its route
    exception: UDP sockets keep none of their own), s2 says ``applied`` and acks; s3 says
    ``orphan`` and stays silent; s1 counts one delivered fan-out."""
    from scapy.layers.inet import UDP

    lab = routed_lab
    lab.flush_pmtu()
    udp = lab.spawn("s2", program("sockets", "bind-udp", lab.vip(family), UDP_PORT), env=PROGRAM_ENV)
    udp.wait_for(r"^bound", stream="stdout", timeout=10)
    procs = start_relays(lab, {n: peer_argv(lab, n, key_file, family, "--log-level", "debug")
                               for n in lab.server_names})
    ptb_to_s1(lab, family, UDP(sport=UDP_PORT, dport=UDP_CLIENT_PORT), UDP_PORT, UDP_CLIENT_PORT)
    s1 = procs["s1"]
    wait_for(lambda: all(peer_verdicts(procs, 17, UDP_CLIENT_PORT)[n] for n in ("s2", "s3"))
             and flow_events(s1, "peer_ack", 17, UDP_CLIENT_PORT), 10, "the UDP PTB's verdicts and ack", procs)
    assert [r["owner"] for r in flow_events(s1, "owner_verdict", 17, UDP_CLIENT_PORT)] == ["orphan"], dump(procs)
    assert peer_verdicts(procs, 17, UDP_CLIENT_PORT) == {"s1": set(), "s2": {"applied"}, "s3": {"orphan"}}, dump(procs)
    assert lab.learned_pmtu("s2", family=family) == 1400
    time.sleep(0.5)  # room for a wrong second ack to arrive
    acks = flow_events(s1, "peer_ack", 17, UDP_CLIENT_PORT)
    assert [(r["peer"], r["owner_verdict"]) for r in acks] == [(lab.server("s2").addr(family), "applied")], acks
    assert float(acks[0]["rtt_ms"]) < ACK_EXPIRY * 1000, acks
    owner_text, text = scrape(lab, "s2"), scrape(lab, "s1")
    assert counter(owner_text, 'pmtud_relay_owner_verdicts_total{origin="peer",verdict="applied"}') == 1, owner_text
    assert counter(text, 'pmtud_relay_peer_acks_total{result="applied"}') == 1, text
    assert counter(text, 'pmtud_relay_peer_fanouts_total{result="delivered"}') == 1, text
    udp.stop(5)
    final = stop_relays(procs)
    assert int(final["s1"]["peer_acked"]) == int(final["s1"]["peer_acks_applied"]) == 1, final["s1"]
    assert int(final["s1"]["peer_ack_drops"]) == 0, final["s1"]
    assert int(final["s2"]["peer_acks_sent"]) == 1 and int(final["s3"]["peer_acks_sent"]) == 0, final


@pytest.mark.netns
@pytest.mark.timeout(150)
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_out_of_window_tcp_across_l3_is_owned_not_applied(routed_lab: RoutedLab, key_file: str,
                                                           family: int) -> None:
    """TCP connections held open (the server sent its name and waits); a PTB quoting one on s2 or
    s3 with a sequence number outside its send window reaches s1, which sends it to s2 and s3.
    The owner's kernel ignores it (the PMTU stays), the owner says ``not_applied`` and acks with
    verdict 2 (``not_applied``: the design acknowledges every owned flow, so the relaying host
    tells "delivered, not taken" from "never delivered"); the other says ``orphan`` and stays
    silent."""
    from scapy.layers.inet import TCP

    lab = routed_lab
    lab.flush_pmtu()
    lab.start_transfer_servers()
    held = lab.spawn("client", program("sockets", "hold-idle", lab.vip(family), lab.port, 8), env=PROGRAM_ENV)
    held.wait_for(r"^held", stream="stdout", timeout=15)
    conns = [line.split() for line in held.lines("stdout") if line.startswith("s")]
    remote = [(name, int(port)) for name, port in conns if name != "s1"]
    assert remote, conns
    owner, cport = remote[0]
    other = ({"s2", "s3"} - {owner}).pop()
    procs = start_relays(lab, {n: peer_argv(lab, n, key_file, family, "--log-level", "debug")
                               for n in lab.server_names})
    tcp = TCP(sport=lab.port, dport=cport, flags="PA", seq=OUT_OF_WINDOW_SEQ, ack=1)
    ptb_to_s1(lab, family, tcp, lab.port, cport)
    s1 = procs["s1"]
    wait_for(lambda: all(peer_verdicts(procs, 6, cport)[n] for n in ("s2", "s3"))
             and flow_events(s1, "peer_ack", 6, cport), 10, "the TCP PTB's verdicts and ack", procs)
    assert [r["owner"] for r in flow_events(s1, "owner_verdict", 6, cport)] == ["orphan"], dump(procs)
    assert peer_verdicts(procs, 6, cport) == {"s1": set(), owner: {"not_applied"}, other: {"orphan"}}, \
        f"owner {owner}\n{dump(procs)}"
    assert lab.learned_pmtu(owner, family=family) is None  # the kernel did not take it
    time.sleep(0.5)
    acks = flow_events(s1, "peer_ack", 6, cport)
    assert [(r["peer"], r["owner_verdict"]) for r in acks] == [(lab.server(owner).addr(family), "not_applied")], acks
    # the owner kept polling for its settle time (50 ms) before saying not_applied
    assert 40 <= float(acks[0]["owner_delay_ms"]) < ACK_EXPIRY * 1000, acks
    text = scrape(lab, "s1")
    assert counter(scrape(lab, owner), 'pmtud_relay_owner_verdicts_total{origin="peer",verdict="not_applied"}') == 1
    assert counter(text, 'pmtud_relay_peer_acks_total{result="not_applied"}') == 1, text
    assert counter(text, 'pmtud_relay_peer_acks_total{result="applied"}') == 0, text
    assert counter(text, 'pmtud_relay_peer_fanouts_total{result="delivered"}') == 1, text
    held.stop(5)
    final = stop_relays(procs)
    assert int(final["s1"]["peer_acks_not_applied"]) == int(final["s1"]["peer_acked"]) == 1, final["s1"]
    assert int(final["s1"]["peer_acks_applied"]) == 0 and int(final["s1"]["peer_ack_drops"]) == 0, final["s1"]
    assert int(final[owner]["peer_acks_sent"]) == 1 and int(final[other]["peer_acks_sent"]) == 0, final

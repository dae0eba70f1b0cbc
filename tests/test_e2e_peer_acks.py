"""End to end across L3: delivery acknowledgements in peers mode (issue 17, item 3).

The routed lab (client — ECMP router — s1..s3, each server in its own subnet; the router's ICMP for
the VIP all goes to s1), ``run --fanout peers`` on every server. s1 captures the router's PTBs and
sends each to s2 and s3; the one that owns the quoted TCP flow (a real transfer, found by the owner
lookup over sock_diag) answers s1 with one signed ack; the other stays silent. A PTB quoting a flow
nobody has gets no ack and counts as not delivered once its wait expires.
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

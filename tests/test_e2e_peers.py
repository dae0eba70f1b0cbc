"""End to end across L3: the peer relay closes the ECMP black hole when no L2 segment is shared.

The routed lab (pmtud_relay.lab.routed): client — router (L4 ECMP, its ICMP for the VIP forced to
s1) — s1..s3 each in its own subnet, strict rp_filter on the servers. Every relay runs with this
interpreter (``python -m pmtud_relay``) inside its server namespace. Relay datagrams are sent to the
peer port from the router namespace with hand-made contents for the negative cases.
"""

from __future__ import annotations

import os
import secrets
import time

import pytest

from e2e_support import (FLOW_TIMEOUT, SIZE, STALL_TIMEOUT, STOP_TIMEOUT, assert_blackhole_closed, by_server,
                         describe, dump, last_event, start_relays, stop_relays)

from pmtud_relay.lab import LabProcess
from pmtud_relay.lab.routed import RoutedLab

PORT = 2106
UNREACHABLE = "198.51.100.250"  # servers hold an `unreachable` route for it: sendto fails at once
NOWHERE = "192.0.2.99"  # routed to the router, which has no route: dropped there

SEND_PY = (
    "import socket, sys\n"
    "host, port = sys.argv[1], int(sys.argv[2])\n"
    "s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for h in sys.argv[3:]:\n"
    "    s.sendto(bytes.fromhex(h), (host, port))\n"
)


def key_bytes(key_file: str) -> bytes:
    return bytes.fromhex(open(key_file).read().split(":", 1)[1].strip())


# -- helpers ---------------------------------------------------------------------------------------
def wait_counters(p: LabProcess, want: dict[str, int], timeout: float = 5.0) -> dict[str, str]:
    """Wait for a summary line whose counters are at least ``want``."""
    deadline = time.monotonic() + timeout
    while True:
        rec = last_event(p, "summary")
        if all(int(rec.get(k, 0)) >= v for k, v in want.items()):
            return rec
        if time.monotonic() > deadline:
            pytest.fail(f"{p.node}: counters {want} not reached; last summary {rec}\n{p.stderr}", pytrace=False)
        time.sleep(0.05)


# A retried spread (24-48 flows) makes more PTBs at once than the production bursts (10 per router,
# 40 per peer) allow; the tests are about delivery, not limits (those have unit tests).
BURSTS = ["--source-burst", "100", "--peer-burst", "100"]


def peer_argv(lab: RoutedLab, name: str, key_file: str, family: int, *extra: str,
              fanout: str = "peers") -> list[str]:
    return ["run", "-i", "eth0", "--fanout", fanout, "--peer-key-file", key_file,
            "--summary-interval", "0.25", *BURSTS, *lab.peer_args(name, family), *extra]


def transfers(lab: RoutedLab, family: int, timeout: float = FLOW_TIMEOUT, min_servers: int = 3):
    lab.flush_pmtu()
    flows = lab.run_transfers_spread(family, flows=12, size=SIZE, timeout=timeout, min_servers=min_servers,
                                     attempts=4)
    return flows, by_server(flows)


def ptb_packet(lab: RoutedLab, family: int, mtu: int = 1400, inner_src: str | None = None) -> bytes:
    """A PTB (router -> ``inner_src``, default the VIP) quoting an ICMP echo reply (v4) / request
    (v6) from ``inner_src`` to the client: the kernel learns a PMTU from it without a socket."""
    import frames as F
    from scapy.layers.inet import ICMP

    src = inner_src or lab.vip(family)
    if family == 4:
        frame = F.ptb_v4(outer_src=lab.router_addr(4), outer_dst=src, src=src, dst=lab.client_addr(4),
                         proto=ICMP(type=0, id=7, seq=1), mtu=mtu, length=1500, flags="DF")
    else:
        frame = F.ptb_v6(outer_src=lab.router_addr(6), outer_dst=src, src=src, dst=lab.client_addr(6),
                         proto="icmp-echo", mtu=mtu, length=1500)
    return frame[14:]


SCRAPE_PY = (
    "import urllib.request\n"
    "print(urllib.request.urlopen('http://127.0.0.1:9781/metrics', timeout=5).read().decode())\n"
)


def scrape(lab: RoutedLab, node: str) -> str:
    return lab.run(node, [lab.python, "-c", SCRAPE_PY]).stdout


def send_from_router(lab: RoutedLab, host: str, datagrams: list[bytes], port: int = PORT) -> None:
    lab.run("router", [lab.python, "-c", SEND_PY, host, str(port), *(d.hex() for d in datagrams)])


# -- the black hole, without and with the peer relay -----------------------------------------------------
@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_flows_stall_without_a_relay(routed_lab: RoutedLab, family: int) -> None:
    lab = routed_lab
    flows, groups = transfers(lab, family, timeout=STALL_TIMEOUT, min_servers=2)
    table = describe(flows)
    others = sorted(set(groups) - {"s1"})
    assert others, f"IPv{family}: every flow hashed to s1:\n{table}"
    assert all(f.completed for f in groups.get("s1", [])), f"IPv{family}: s1 flow stalled:\n{table}"
    assert not any(f.completed for n in others for f in groups[n]), \
        f"IPv{family}: a flow on {others} completed without any relay:\n{table}"
    for name in others:
        assert lab.learned_pmtu(name, lab.client_addr(family)) is None


@pytest.mark.netns
@pytest.mark.timeout(150)
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_peer_relay_closes_the_blackhole_across_l3(routed_lab: RoutedLab, key_file: str, family: int) -> None:
    """``run --fanout peers`` on every server, peers = the other servers (over IPv{family}).
    Also: no PTB ever appears on s2/s3's uplink (injection stays on lo, so their capture sees
    nothing), and s2/s3 never relay what they received."""
    lab = routed_lab
    assert lab.rp_filter_values("s2")["all"] == 1  # strict reverse-path filtering on the servers
    lab.start_transfer_servers()
    sniffers = {n: lab.sniff(n) for n in ("s2", "s3")}
    lo_sniffers = {n: lab.sniff(n, "lo") for n in ("s2", "s3")}
    procs = start_relays(lab, {n: peer_argv(lab, n, key_file, family) for n in lab.server_names})
    flows, groups = transfers(lab, family)
    assert_blackhole_closed(lab, family, flows, procs, closed_by="the peer relay")
    assert len(groups) == 3, describe(flows)
    final = stop_relays(procs)
    vip = lab.vip(family)
    for name, sniffer in sniffers.items():
        seen = lab.sniff_result(sniffer)
        assert seen == [], f"{name}: a PTB frame crossed eth0 (injection must stay on lo): {seen}"
        on_lo = [f for f in lab.sniff_result(lo_sniffers[name])
                 if f.get("outer_dst") == vip and f.get("inner_src") == vip and f.get("mtu") == 1400]
        assert on_lo, f"{name}: the injected PTB never passed lo"
    assert int(final["s1"].get("peer_tx", 0)) >= 2, final["s1"]
    from pmtud_relay.core.reasons import Reason

    for name in ("s2", "s3"):
        rec = final[name]
        assert int(rec.get("peer_injected", 0)) >= 1, rec
        assert int(rec.get("peer_inject_errors", 0)) == 0, rec
        assert int(rec.get("peer_tx", 0)) == 0, f"{name} relayed something it received: {rec}"
        decided = {r.value for r in Reason} & set(rec)  # any capture decision at all, relay or drop
        assert not decided, f"{name}'s capture saw injected PTBs: {rec}"


@pytest.mark.netns
@pytest.mark.timeout(150)
def test_fanout_both_and_l2_hosts_receiving_from_peers(routed_lab: RoutedLab, key_file: str) -> None:
    """s1 broadcasts on its own segment AND sends to peers; s2/s3 broadcast (l2) and receive."""
    lab = routed_lab
    lab.start_transfer_servers()
    router_sniffer = lab.sniff("router", "r1")
    receivers = ["run", "-i", "eth0", "--fanout", "l2", "--peer-listen", f":{PORT}", "--peer-key-file", key_file,
                 "--summary-interval", "0.25", *BURSTS]
    procs = start_relays(lab, {"s1": peer_argv(lab, "s1", key_file, 4, fanout="both"),
                               "s2": receivers, "s3": receivers})
    for family in (4, 6):
        flows, groups = transfers(lab, family)
        assert_blackhole_closed(lab, family, flows, procs, closed_by="the peer relay")
    final = stop_relays(procs)
    copies = [f for f in lab.sniff_result(router_sniffer) if f.get("pkttype") in ("broadcast", "multicast")]
    assert copies, "s1 with --fanout both sent no L2 copy on its segment"
    assert int(final["s2"].get("peer_injected", 0)) + int(final["s3"].get("peer_injected", 0)) >= 2, final


# -- hostile relay datagrams ---------------------------------------------------------------------------------
@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_forged_tampered_and_replayed_datagrams_are_never_injected(routed_lab: RoutedLab, key_file: str,
                                                                  family: int) -> None:
    from pmtud_relay.peers.wire import Keyring
    from pmtud_relay.peers.wire import encode

    lab = routed_lab
    s2 = lab.server("s2")
    target = s2.addr(family)
    procs = start_relays(lab, {"s2": ["run", "-i", "eth0", "--peer-listen", f":{PORT}", "--peer-key-file", key_file,
                                      "--summary-interval", "0.2", "--peer-max-age", "5"]})
    relay = procs["s2"]
    ring = Keyring([(1, key_bytes(key_file))])
    packet = ptb_packet(lab, family)
    now = time.time()

    def signed(pkt=packet, stamp=None, keyring=ring):
        return encode(pkt, keyring, stamp if stamp is not None else time.time(), secrets.token_bytes(12))

    valid = signed()
    tampered = bytearray(signed())
    mtu_at = 32 + (20 + 6 if family == 4 else 40 + 4)  # a byte of the ICMP MTU field
    tampered[mtu_at + 1] ^= 0x20
    hostile = [
        b"XXXX" + os.urandom(196),  # not our protocol: dropped by the listener's kernel filter
        valid[:-32],  # no MAC at all
        signed(keyring=Keyring([(1, secrets.token_bytes(32))])),  # the right key id, a wrong key
        signed(keyring=Keyring([(9, secrets.token_bytes(32))])),  # an unknown key id
        bytes(tampered),  # a genuine message with its MTU changed on the way
        signed(stamp=now - 60),  # genuine but stale
        # genuine, but about an address that is not one of s2's VIPs: the receiver's own policy says no
        signed(pkt=ptb_packet(lab, family, inner_src=("192.0.2.99" if family == 4 else "2001:db8:ffff::99"))),
    ]
    client = lab.client_addr(family)
    lab.flush_pmtu()
    send_from_router(lab, target, hostile)
    rec = wait_counters(relay, {"peer_rx_too_short": 1, "peer_rx_bad_mac": 2,
                                "peer_rx_unknown_key": 1, "peer_rx_stale": 1, "peer_rx_ptb_not_vip": 1})
    assert int(rec.get("peer_injected", 0)) == 0, rec
    assert lab.learned_pmtu("s2", client) is None, "a hostile datagram changed s2's PMTU"

    # control: the genuine datagram is injected and the PMTU drops (so the check above means something)
    send_from_router(lab, target, [valid])
    wait_counters(relay, {"peer_injected": 1})
    assert lab.learned_pmtu("s2", client) == 1400

    # replayed: refused, PMTU untouched
    lab.flush_pmtu()
    send_from_router(lab, target, [valid, valid])
    rec = wait_counters(relay, {"peer_rx_replay": 2})
    assert int(rec["peer_injected"]) == 1, rec
    assert lab.learned_pmtu("s2", client) is None, "a replayed datagram was injected"
    text = scrape(lab, "s2")  # the same counters on /metrics (default 127.0.0.1:9781 in s2's namespace)
    # bad_magic 0: s2 only listens (no peer list), so its kernel filter checks the magic alone and
    # the datagram without it never reached userspace.
    for reason, n in [("accepted", 1), ("replay", 2), ("bad_mac", 2), ("unknown_key", 1), ("stale", 1),
                      ("too_short", 1), ("bad_magic", 0), ("ptb_not_vip", 1)]:
        assert f'pmtud_relay_peer_datagrams_received_total{{reason="{reason}"}} {n}.0' in text, (reason, text)
    assert "pmtud_relay_peer_injected_total 1.0" in text
    assert "pmtud_relay_peer_filter_magic_only 1.0" in text
    final = stop_relays(procs)
    assert int(final["s2"]["peer_rx_accepted"]) == 1, final


def _unusable_ptbs(lab: RoutedLab, family: int) -> dict[str, bytes]:
    """PTB packets a receiver must not inject (issue 18, item 4), each otherwise like
    :func:`ptb_packet`: a quote 4 bytes short of what the kernel pulls (the kernel ignores it), a
    source route in the quote and a loopback outer source (the kernel acts on both once injected
    through lo, which skips the checks a packet from the wire meets: measured, docs/security.md)."""
    import frames as F
    from scapy.layers.inet import ICMP, IPOption_LSRR
    from scapy.layers.inet6 import IPv6ExtHdrRouting

    vip, client, router = lab.vip(family), lab.client_addr(family), lab.router_addr(family)
    if family == 4:
        def build(**kw):
            kw.setdefault("outer_src", router)
            return F.ptb_v4(outer_dst=vip, src=vip, dst=client, proto=ICMP(type=0, id=7, seq=1), mtu=1400,
                            length=1500, flags="DF", **kw)[14:]
        original = F.original_v4(src=vip, dst=client, proto=ICMP(type=0, id=7, seq=1), length=1500, flags="DF")
        return {"ptb_short_l4_quote": build(quote=original[:24]),
                "source_routed": build(options=[IPOption_LSRR(routers=["203.0.113.9"])]),
                "loopback_source": build(outer_src="127.0.0.1")}

    def build6(**kw):
        kw.setdefault("outer_src", router)
        return F.ptb_v6(outer_dst=vip, src=vip, dst=client, proto="icmp-echo", mtu=1400, length=1500, **kw)[14:]
    original = F.original_v6(src=vip, dst=client, proto="icmp-echo", length=1500)
    return {"ptb_short_l4_quote": build6(quote=original[:44]),
            "source_routed": build6(ext=(IPv6ExtHdrRouting(type=0, segleft=1, addresses=["2001:db8:3::8"]),)),
            "loopback_source": build6(outer_src="::1")}


JUNK_PY = (
    "import os, socket, sys, time\n"
    "host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
    "s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET, socket.SOCK_DGRAM)\n"
    "head = bytes.fromhex(sys.argv[4])\n"
    "for i in range(n):\n"
    "    s.sendto(head + os.urandom(150), (host, port))\n"  # the magic and header, then junk: a bad MAC
    "    if i % 200 == 199:\n"
    "        time.sleep(0.002)\n"
)


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_unusable_or_martian_ptbs_are_refused_not_injected(routed_lab: RoutedLab, key_file: str,
                                                          family: int) -> None:
    """Signed by the right key, but not for injection: each refused with its own reason, nothing
    injected, no PMTU learned; the genuine PTB after them is injected and learned."""
    from pmtud_relay.peers.wire import Keyring
    from pmtud_relay.peers.wire import encode

    lab = routed_lab
    target = lab.server("s2").addr(family)
    procs = start_relays(lab, {"s2": ["run", "-i", "eth0", "--peer-listen", f":{PORT}", "--peer-key-file", key_file,
                                      "--summary-interval", "0.2"]})
    relay = procs["s2"]
    ring = Keyring([(1, key_bytes(key_file))])
    client = lab.client_addr(family)

    def signed(pkt: bytes) -> bytes:
        return encode(pkt, ring, time.time(), secrets.token_bytes(12))

    unusable = _unusable_ptbs(lab, family)
    lab.flush_pmtu()
    send_from_router(lab, target, [signed(p) for p in unusable.values()])
    rec = wait_counters(relay, {f"peer_rx_{reason}": 1 for reason in unusable})
    assert int(rec.get("peer_injected", 0)) == 0 and int(rec.get("peer_rx_accepted", 0)) == 0, rec
    assert lab.learned_pmtu("s2", client) is None

    send_from_router(lab, target, [signed(ptb_packet(lab, family))])  # the control
    wait_counters(relay, {"peer_injected": 1})
    assert lab.learned_pmtu("s2", client) == 1400
    text = scrape(lab, "s2")
    for reason in unusable:
        assert f'pmtud_relay_peer_datagrams_received_total{{reason="{reason}"}} 1.0' in text, (reason, text)
    stop_relays(procs)


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_junk_from_a_non_peer_never_reaches_userspace(routed_lab: RoutedLab, key_file: str, tmp_path) -> None:
    """s2 sends to s1 and s3 (a peers file) and listens. The router, not a peer, sends 4 000
    datagrams with the protocol's header and a bad MAC: none reaches s2's userspace (its bad-MAC
    count stays 0) while s1's genuine datagram is injected and a forged one from s1 is counted
    (so the counter works). Then the router is added to the peers file: the filter is rebuilt and
    the router's junk is now seen (and refused by the MAC)."""
    from pmtud_relay.peers.wire import HEADER
    from pmtud_relay.peers.wire import MAGIC
    from pmtud_relay.peers.wire import Keyring
    from pmtud_relay.peers.wire import encode

    lab = routed_lab
    s1, s2, s3 = (lab.server(n) for n in ("s1", "s2", "s3"))
    peers = tmp_path / "peers"
    peers.write_text(f"{s1.ipv4}\n{s3.ipv4}\n")
    procs = start_relays(lab, {"s2": ["run", "-i", "eth0", "--fanout", "peers", "--peers-file", str(peers),
                                      "--peers-refresh", "0.2", "--peer-key-file", key_file,
                                      "--summary-interval", "0.2"]})
    relay = procs["s2"]  # ready: the first refresh (and with it the filter for s1 and s3) is done
    head = HEADER.pack(MAGIC, 1, 0, 1, int(time.time() * 1000), bytes(12), 150 - 32, 0)
    lab.run("router", [lab.python, "-c", JUNK_PY, s2.ipv4, str(PORT), "4000", head.hex()], timeout=60)
    ring = Keyring([(1, key_bytes(key_file))])
    genuine = encode(ptb_packet(lab, 4), ring, time.time(), secrets.token_bytes(12))
    forged = encode(ptb_packet(lab, 4), Keyring([(1, secrets.token_bytes(32))]), time.time(), secrets.token_bytes(12))
    lab.run("s1", [lab.python, "-c", SEND_PY, s2.ipv4, str(PORT), genuine.hex(), forged.hex(), "58585858" + "00" * 96])
    rec = wait_counters(relay, {"peer_rx_accepted": 1, "peer_rx_bad_mac": 1})
    time.sleep(0.5)  # anything of the router's still queued would be counted by now
    rec = last_event(relay, "summary")
    assert int(rec["peer_rx_bad_mac"]) == 1, rec  # s1's forgery only: none of the router's 4 000
    assert int(rec.get("peer_rx_bad_magic", 0)) == 0, rec  # s1's datagram without the magic: kernel-dropped
    assert int(rec["peer_injected"]) == 1, rec
    text = scrape(lab, "s2")
    assert "pmtud_relay_peer_filter_addresses 2.0" in text and "pmtud_relay_peer_filter_magic_only 0.0" in text

    # The peer set changes (the router is listed now): the filter follows it.
    router = lab.router_addr(4, "s2")
    peers.write_text(f"{s1.ipv4}\n{s3.ipv4}\n{router}\n")
    relay.wait_for(r"peer_filter.*mode=addresses addresses=3", timeout=5)
    lab.run("router", [lab.python, "-c", JUNK_PY, s2.ipv4, str(PORT), "5", head.hex()], timeout=30)
    wait_counters(relay, {"peer_rx_bad_mac": 6})
    final = stop_relays(procs)
    assert int(final["s2"]["peer_injected"]) == 1, final


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_dry_run_receiver_reports_and_injects_nothing(routed_lab: RoutedLab, key_file: str) -> None:
    from pmtud_relay.peers.wire import Keyring
    from pmtud_relay.peers.wire import encode

    lab = routed_lab
    procs = start_relays(lab, {"s2": ["dry-run", "-i", "eth0", "--json", "--peer-listen", f":{PORT}",
                                      "--peer-key-file", key_file]})
    ring = Keyring([(1, key_bytes(key_file))])
    lab.flush_pmtu()
    good = encode(ptb_packet(lab, 4), ring, time.time(), secrets.token_bytes(12))
    forged = encode(ptb_packet(lab, 4), Keyring([(1, secrets.token_bytes(32))]), time.time(), secrets.token_bytes(12))
    send_from_router(lab, lab.server("s2").ipv4, [good, forged])
    deadline = time.monotonic() + 5
    while len([l for l in procs["s2"].json_lines() if l.get("interface") == "peer"]) < 2:
        assert time.monotonic() < deadline, procs["s2"].stdout + procs["s2"].stderr
        time.sleep(0.05)
    lines = [l for l in procs["s2"].json_lines() if l.get("interface") == "peer"]
    assert [(l["verdict"], l["reason"]) for l in lines] == [("inject", "accepted"), ("drop", "bad_mac")], lines
    assert lines[0]["inner_src"] == lab.vip(4) and lines[0]["mtu"] == 1400 and lines[0]["key_id"] == 1
    assert lines[0]["peer"].startswith(lab.router_addr(4, "s2") + ":"), lines[0]
    time.sleep(0.3)
    assert lab.learned_pmtu("s2", lab.client_addr(4)) is None, "dry-run injected a PTB"
    stop_relays(procs)


# -- a peer going away and coming back ----------------------------------------------------------------------
@pytest.mark.netns
@pytest.mark.timeout(240)
def test_peer_going_away_and_coming_back(routed_lab: RoutedLab, key_file: str) -> None:
    lab = routed_lab
    lab.start_transfer_servers()
    for s in lab.servers:  # a peer whose address has no route at all: sendto fails at once
        lab.ip(s.name, "route", "add", "unreachable", f"{UNREACHABLE}/32")
    extra = ["--peer", UNREACHABLE, "--peer", NOWHERE]
    argv = {n: peer_argv(lab, n, key_file, 4, *extra) for n in lab.server_names}
    procs = start_relays(lab, argv)

    # everyone up
    flows, groups = transfers(lab, 4)
    assert_blackhole_closed(lab, 4, flows, procs, closed_by="the peer relay")

    # s3's relay stops: s1 keeps sending to it (port unreachable) and to the dead peers; s2 is unaffected
    procs["s3"].stop(timeout=STOP_TIMEOUT)
    down = procs.pop("s3")
    flows, groups = transfers(lab, 4, timeout=STALL_TIMEOUT)
    table = describe(flows)
    assert all(f.completed for n in ("s1", "s2") for f in groups.get(n, [])), \
        f"s1/s2 flows stalled while s3's relay was down:\n{table}\n{dump(procs)}"
    assert "s2" in groups, table
    if "s3" in groups:
        assert not any(f.completed for f in groups["s3"]), f"s3 completed without its relay:\n{table}\n{down.stderr}"

    # s3's relay is back: it receives again
    procs.update(start_relays(lab, {"s3": argv["s3"]}))
    flows, groups = transfers(lab, 4)
    assert_blackhole_closed(lab, 4, flows, procs, closed_by="the peer relay")
    assert "s3" in groups

    # s3's link goes down: the router stops hashing to it; s1's datagrams to it die at the router
    lab.set_server_link("s3", up=False)
    flows, groups = transfers(lab, 4, min_servers=2)
    assert "s3" not in groups, describe(flows)
    # Right after a nexthop drops out, the router's ECMP may map one handshake to two servers,
    # and the second answers with a reset before any server identified itself (seen twice in
    # ~40 runs under load). That is not a PTB black hole: those stall *after* the server's
    # identity line. Such flows are left out; every identified flow must complete.
    identified = [f for f in flows if f.server is not None]
    assert len(identified) >= len(flows) - 2, describe(flows)
    assert_blackhole_closed(lab, 4, identified, procs, closed_by="the peer relay")

    # and comes back: the same relay process (its sockets survived) receives again
    lab.set_server_link("s3", up=True)
    for family in (4, 6):
        flows, groups = transfers(lab, family)
        assert "s3" in groups, describe(flows)
        assert_blackhole_closed(lab, family, flows, procs, closed_by="the peer relay")

    final = stop_relays(procs)
    assert int(final["s1"].get("peer_tx_errors", 0)) >= 1, final["s1"]  # the unreachable peer, counted
    assert int(final["s3"].get("peer_injected", 0)) >= 1, final["s3"]

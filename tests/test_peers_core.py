"""Per-service targeting, per-peer limits and the receiver's pipeline (pmtud_relay.peers.inbox)."""

from __future__ import annotations

import ipaddress

import pytest

from pmtud_relay.core.packet import parse_ipv4, parse_ipv6
from pmtud_relay.core.policy import PACKET_HOST, Policy, VipSet
from pmtud_relay.core.reasons import Reason
from pmtud_relay.peers.inbox import (
    DEFAULT_PORT,
    InboxConfig,
    Peer,
    PeerInbox,
    PeerSpec,
    PeerTable,
    merge_peers,
    parse_packet,
    parse_peer_spec,
    peer_from_spec,
)
from pmtud_relay.peers.wire import Keyring, PeerDecoder, PeerReason, encode
from tests.support import frames as F

VIP_A = ipaddress.ip_address("192.0.2.10").packed
VIP_B = ipaddress.ip_address("192.0.2.200").packed
VIP_6 = ipaddress.ip_address("2001:db8:2::10").packed


# -- peer specifications ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, host, port, prefixes",
    [
        ("198.51.100.2", "198.51.100.2", DEFAULT_PORT, None),
        ("198.51.100.2:4000", "198.51.100.2", 4000, None),
        ("2001:db8::2", "2001:db8::2", DEFAULT_PORT, None),
        ("2001:DB8:0::2", "2001:db8::2", DEFAULT_PORT, None),
        ("[2001:db8::2]:4000", "2001:db8::2", 4000, None),
        ("[2001:db8::2]", "2001:db8::2", DEFAULT_PORT, None),
        ("Peer-1.Example.", "peer-1.example.", DEFAULT_PORT, None),
        ("peers.svc.cluster.local:2107", "peers.svc.cluster.local", 2107, None),
        ("198.51.100.2=192.0.2.0/25", "198.51.100.2", DEFAULT_PORT, ("192.0.2.0/25",)),
        (" [2001:db8::2]:99 = 192.0.2.10, 2001:db8:ffff::/64 ", "2001:db8::2", 99,
         ("192.0.2.10/32", "2001:db8:ffff::/64")),
    ],
)
def test_peer_spec_syntax(text, host, port, prefixes):
    spec = parse_peer_spec(text)
    assert (spec.host, spec.port) == (host, port)
    if prefixes is None:
        assert spec.prefixes is None
    else:
        assert spec.prefixes == tuple(ipaddress.ip_network(p) for p in prefixes)
    assert parse_peer_spec(str(spec)) == spec  # str() is the canonical, re-parsable form


@pytest.mark.parametrize(
    "text",
    ["", ":2106", "198.51.100.2:0", "198.51.100.2:65536", "198.51.100.2:x", "198.51.100.2:", "[192.0.2.1]:1",
     "[2001:db8::1", "[2001:db8::1]x", "2001:db8::zz", "bad_host!", "-x.example", "198.51.100.2=",
     "198.51.100.2=not-a-prefix", "198.51.100.2:2106=192.0.2.0/33", "a" * 64 + ".example", "hôte.example"],
)
def test_bad_peer_specs(text):
    with pytest.raises(ValueError):
        parse_peer_spec(text)


def test_merge_dedups_unions_prefixes_excludes_self_and_sorts():
    a = Peer("198.51.100.18", 2106, VipSet(["192.0.2.0/25"]), "x")
    a2 = Peer("198.51.100.18", 2106, VipSet(["192.0.2.128/25"]), "y")
    b = Peer("2001:db8:5:2::2", 2106, None)
    b2 = Peer("2001:db8:5:2::2", 2106, VipSet(["192.0.2.1"]))
    me = Peer("198.51.100.2", 2106, None)
    other_port = Peer("198.51.100.18", 2107, None)
    merged = merge_peers([b, a, me, a2, b2, other_port], exclude=["198.51.100.2"])
    assert [str(p) for p in merged] == ["198.51.100.18:2106", "198.51.100.18:2107", "[2001:db8:5:2::2]:2106"]
    assert set(merged[0].prefixes.networks) == {  # listed twice: the union of both
        ipaddress.ip_network("192.0.2.0/25"), ipaddress.ip_network("192.0.2.128/25")}
    assert merged[2].prefixes is None  # listed once without prefixes: serves every VIP


def test_peer_from_spec():
    spec = PeerSpec("peers.example", 2200, (ipaddress.ip_network("192.0.2.0/24"),))
    peer = peer_from_spec(spec, "2001:DB8::7")
    assert peer == Peer("2001:db8::7", 2200, VipSet(["192.0.2.0/24"]), "peers.example")
    assert peer.family == 6 and str(peer) == "[2001:db8::7]:2200"


# -- targeting ----------------------------------------------------------------------------------------
def test_targeting_by_service():
    everything = Peer("198.51.100.2")
    only_a = Peer("198.51.100.18", prefixes=VipSet(["192.0.2.0/28"]))
    only_b = Peer("198.51.100.34", prefixes=VipSet(["192.0.2.200/32", "2001:db8:2::/64"]))
    table = PeerTable([everything, only_a, only_b], rate=100, burst=100)
    assert table.targets(VIP_A, 0.0).send == [everything, only_a]
    assert table.targets(VIP_B, 0.0).send == [everything, only_b]
    assert table.targets(VIP_6, 0.0).send == [everything, only_b]
    assert table.targets(ipaddress.ip_address("203.0.113.9").packed, 0.0).send == [everything]
    assert table.serving(VIP_A) == [everything, only_a]


def test_per_peer_token_buckets_are_independent():
    busy = Peer("198.51.100.18", prefixes=VipSet(["192.0.2.10"]))
    quiet = Peer("198.51.100.34", prefixes=VipSet(["192.0.2.200"]))
    table = PeerTable([busy, quiet], rate=1.0, burst=3)
    sent = [table.targets(VIP_A, 0.0) for _ in range(5)]
    assert [len(t.send) for t in sent] == [1, 1, 1, 0, 0]
    assert sent[-1].limited == [busy]
    assert table.targets(VIP_B, 0.0).send == [quiet]  # the other peer still has its burst
    assert table.targets(VIP_A, 1.0).send == [busy]  # one token per second refills
    assert table.sent[busy.key] == 4 and table.limited[busy.key] == 2


def test_update_keeps_buckets_of_peers_that_stay():
    a, b = Peer("198.51.100.18"), Peer("198.51.100.34")
    table = PeerTable([a], rate=1.0, burst=2)
    table.targets(VIP_A, 0.0)
    table.targets(VIP_A, 0.0)
    assert table.targets(VIP_A, 0.0).limited == [a]
    assert table.update([a, b], 0.0) is True
    t = table.targets(VIP_A, 0.0)
    assert t.send == [b] and t.limited == [a]  # a's empty bucket survived the refresh
    assert table.update([a, b], 0.0) is False
    table.update([b], 0.0)
    assert table.peers == (b,) and a.key not in table.sent


def test_peer_table_validates():
    with pytest.raises(ValueError):
        PeerTable(rate=0)
    with pytest.raises(ValueError):
        PeerTable(burst=0.5)


# -- the receiver ------------------------------------------------------------------------------------
KEY = bytes(range(32))
RING = Keyring([(1, KEY)])
POLICY = Policy(vips=VipSet([F.VIP4, F.VIP6]))
WALL = 1_700_000_000.0


class Nonces:
    def __init__(self):
        self.i = 0

    def __call__(self) -> bytes:
        self.i += 1
        return self.i.to_bytes(12, "big")


NONCE = Nonces()


def packet4(**kw) -> bytes:
    return F.ptb_v4(**kw)[14:]


def packet6(**kw) -> bytes:
    return F.ptb_v6(**kw)[14:]


def inbox(**kw) -> PeerInbox:
    return PeerInbox(PeerDecoder(RING), InboxConfig(**kw))


def datagram(packet: bytes, wall: float = WALL) -> bytes:
    return encode(packet, RING, wall, NONCE())


def test_policy_checks_bare_ip_packets():
    """A packet at offset 0 has no MAC: IPv4's first byte 0x45 must not look like a group MAC."""
    ptb = parse_ipv4(packet4(), 0)
    assert ptb.l3_offset == 0 and ptb.frame[0] & 1
    assert POLICY.check(ptb, PACKET_HOST) is None
    assert POLICY.check(parse_ipv6(packet6(), 0), PACKET_HOST) is None
    assert POLICY.check(parse_ipv4(packet4(), 0), 1) is Reason.NOT_UNICAST  # pkttype still counts


@pytest.mark.parametrize("build", [packet4, packet6], ids=["ipv4", "ipv6"])
def test_inbox_accepts_a_valid_ptb_for_its_own_vip(build):
    box = inbox()
    pkt = build()
    d = box.handle(datagram(pkt), 0.0, WALL, "198.51.100.2", POLICY)
    assert d.inject and d.reason is PeerReason.ACCEPTED and d.packet == pkt and d.key_id == 1
    assert d.ptb.l3_offset == 0
    assert box.counts == {PeerReason.ACCEPTED: 1}


@pytest.mark.parametrize(
    "packet, reason",
    [
        (packet4(outer_dst="192.0.2.99", src="192.0.2.99"), Reason.NOT_VIP),  # not one of MY VIPs
        (packet4(outer_dst=F.VIP4_OTHER), Reason.DST_NOT_QUOTED_SRC),
        (packet4(mtu=500), Reason.MTU_BELOW_FLOOR),
        (packet4(mtu=1500), Reason.MTU_NOT_BELOW_PACKET),
        (packet6(outer_dst="2001:db8:2::99", src="2001:db8:2::99"), Reason.NOT_VIP),
        (F.echo_v4()[14:], Reason.NOT_PTB),
        (F.set_bytes(packet4(), 30, b"\xff"), Reason.BAD_CHECKSUM),
        (b"\x10" + bytes(60), Reason.BAD_IP),
        (packet4() + b"\x00\x00", PeerReason.BAD_LENGTH),  # padding after the IP packet
    ],
)
def test_inbox_rechecks_the_ptb_with_its_own_policy(packet, reason):
    box = inbox()
    d = box.handle(datagram(packet), 0.0, WALL, "198.51.100.2", POLICY)
    assert not d.inject and d.reason is reason and d.packet is None
    assert box.counts == {reason: 1}


def test_inbox_rejects_before_parsing_without_a_valid_mac():
    box = inbox()
    forged = encode(packet4(), Keyring([(1, bytes(32))]), WALL, NONCE())
    d = box.handle(forged, 0.0, WALL, "198.51.100.2", POLICY)
    assert not d.inject and d.reason is PeerReason.BAD_MAC and d.ptb is None and d.key_id is None


def test_inbox_dedups_and_limits_per_sender():
    box = inbox(sender_rate=1.0, sender_burst=2, dedup_window=1.0)
    pkt = packet4()
    assert box.handle(datagram(pkt), 0.0, WALL, "198.51.100.2", POLICY).inject
    assert box.handle(datagram(pkt), 0.1, WALL, "198.51.100.18", POLICY).reason is Reason.DUPLICATE
    other = [packet4(dport=40000 + i) for i in range(3)]
    reasons = [box.handle(datagram(p), 0.2, WALL, "198.51.100.2", POLICY).reason for p in other]
    assert reasons == [PeerReason.ACCEPTED, Reason.RATE_LIMITED_SOURCE, Reason.RATE_LIMITED_SOURCE]
    # another sender has its own bucket
    assert box.handle(datagram(other[1]), 0.2, WALL, "198.51.100.18", POLICY).inject


def test_parse_packet():
    assert parse_packet(b"") is Reason.TOO_SHORT
    assert parse_packet(b"\x00" * 40) is Reason.BAD_IP
    assert parse_packet(packet6()).family == 6

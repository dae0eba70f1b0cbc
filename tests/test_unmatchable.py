"""PTBs no kernel can act on are dropped, each with its own reason (issue 18, item 4).

* A quote that stops short of 8 bytes past the quoted IP header (and, for IPv6, its extension
  headers): Linux needs those 8 bytes (``icmp_socket_deliver``: ``pskb_may_pull(ihl * 4 + 8)``;
  ``icmpv6_notify``: ``pskb_may_pull(inner_offset + 8)``) to find the socket by its ports and, for
  TCP, check the sequence number; without them the PTB is discarded as an ICMP input error.
  Dropped by the parser as ``short_l4_quote``, on the L2 path (``Relay.handle``) and the peer path.
* On the peer path, PTBs the kernel would not accept from the wire, whose checks injection
  through lo skips: a source route in the outer or the quoted header (IPv4 LSRR/SSRR options, an
  IPv6 routing header of type 0) and an outer source on loopback (127.0.0.0/8, ::1). Refused as
  ``source_routed`` / ``loopback_source`` instead of being injected.

Every frame is built with correct checksums (tests/support/frames.py), so each drop is for its reason.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IPOption_LSRR, IPOption_NOP, IPOption_SSRR
from scapy.layers.inet6 import IPv6ExtHdrDestOpt, IPv6ExtHdrRouting
from scapy.packet import Packet, raw

from pmtud_relay.core.packet import PTB, parse_frame, parse_frame_unverified
from pmtud_relay.core.policy import Policy, VipSet
from pmtud_relay.core.reasons import PARSE_REASONS, Reason
from pmtud_relay.core.relay import Relay, RelayConfig
from pmtud_relay.peers import injection
from pmtud_relay.peers.inbox import InboxConfig, PeerInbox, parse_packet
from pmtud_relay.peers.wire import Keyring, PeerDecoder, PeerReason, encode
from tests.support import frames as F

POLICY = Policy(vips=VipSet([F.VIP4, F.VIP6]))
RING = Keyring([(1, bytes(range(32)))])
WALL = 1_700_000_000.0
RELAY_MAC = F.mac(F.RELAY_MAC)


def relay_reason(frame: bytes) -> Reason:
    relay = Relay(RelayConfig(policy=POLICY))
    d = relay.handle(frame, 0.0, RELAY_MAC)
    assert d.relay == (d.reason is Reason.RELAYED)
    return d.reason


def inbox_decision(packet: bytes):
    box = PeerInbox(PeerDecoder(RING), InboxConfig())
    d = box.handle(encode(packet, RING, WALL, bytes(12)), 0.0, WALL, "198.51.100.2", POLICY)
    assert d.inject == (d.reason is PeerReason.ACCEPTED)
    assert box.counts == {d.reason: 1}
    return d


# -- quotes without 8 bytes of the upper-layer header --------------------------------------------
def _v4(proto: str, l4_bytes: int, **kw) -> bytes:
    original = F.original_v4(proto=proto, **kw)
    ihl = (original[0] & 0x0F) * 4
    return F.ptb_v4(quote=original[: ihl + l4_bytes])


def _v6(proto: str, l4_bytes: int, ext: tuple = ()) -> bytes:
    original = F.original_v6(proto=proto, ext=ext)
    hdrs = 40 + sum(len(raw(h)) for h in ext)
    return F.ptb_v6(quote=original[: hdrs + l4_bytes])


SHORT = [
    # IPv4: 0, 4 and 7 bytes after the quoted header (4 bytes took the parser's fast path)
    *[(f"v4 {p} {n}", lambda p=p, n=n: _v4(p, n)) for p in ("tcp", "udp", "sctp", "udplite") for n in (0, 4, 7)],
    ("v4 tcp 4 after options", lambda: _v4("tcp", 4, options=[IPOption_NOP()] * 4)),
    ("v4 non-first fragment 4", lambda: _v4("tcp", 4, frag=100)),
    ("v4 icmp echo 4", lambda: _v4("icmp-echo", 4)),
    # IPv6: 0, 4 and 7 bytes after the quoted header (4 bytes took the fast path)
    *[(f"v6 {p} {n}", lambda p=p, n=n: _v6(p, n)) for p in ("tcp", "udp", "sctp", "udplite") for n in (0, 4, 7)],
    ("v6 tcp 4 after a destination-options header", lambda: _v6("tcp", 4, (IPv6ExtHdrDestOpt(),))),
    ("v6 quote cut inside an extension header", lambda: _v6("tcp", -4, (IPv6ExtHdrDestOpt(),))),
]
ENOUGH = [
    ("v4 tcp 8", lambda: _v4("tcp", 8)),
    ("v4 udp 8", lambda: _v4("udp", 8)),
    ("v4 tcp 8 after options", lambda: _v4("tcp", 8, options=[IPOption_NOP()] * 4)),
    ("v6 tcp 8", lambda: _v6("tcp", 8)),
    ("v6 sctp 8", lambda: _v6("sctp", 8)),
    ("v6 tcp 8 after a destination-options header", lambda: _v6("tcp", 8, (IPv6ExtHdrDestOpt(),))),
]


def test_short_l4_quote_is_a_parse_reason():
    assert Reason.SHORT_L4_QUOTE.value == "short_l4_quote" and Reason.SHORT_L4_QUOTE in PARSE_REASONS


@pytest.mark.parametrize("build", [b for _, b in SHORT], ids=[n for n, _ in SHORT])
def test_quote_without_8_l4_bytes_is_dropped_everywhere(build):
    frame = build()
    assert parse_frame(frame) is Reason.SHORT_L4_QUOTE
    assert relay_reason(frame) is Reason.SHORT_L4_QUOTE
    assert parse_packet(frame[14:]) is Reason.SHORT_L4_QUOTE
    assert inbox_decision(frame[14:]).reason is Reason.SHORT_L4_QUOTE


@pytest.mark.parametrize("build", [b for _, b in ENOUGH], ids=[n for n, _ in ENOUGH])
def test_quote_with_8_l4_bytes_is_relayed_and_injected(build):
    frame = build()
    ptb = parse_frame(frame)
    assert isinstance(ptb, PTB) and ptb.sport == F.SERVICE_PORT and ptb.dport == F.CLIENT_PORT
    assert relay_reason(frame) is Reason.RELAYED
    assert inbox_decision(frame[14:]).reason is PeerReason.ACCEPTED


# -- PTBs the kernel would not accept from the wire ----------------------------------------------
def _routing(rtype: int, segleft: int = 1) -> Packet:
    return IPv6ExtHdrRouting(type=rtype, segleft=segleft, addresses=["2001:db8:3::8"])


REFUSED = [
    ("v4 quoted LSRR", lambda: F.ptb_v4(options=[IPOption_LSRR(routers=["203.0.113.9"])]),
     PeerReason.SOURCE_ROUTED),
    ("v4 quoted SSRR after a NOP", lambda: F.ptb_v4(options=[IPOption_NOP(), IPOption_SSRR(routers=["203.0.113.9"])]),
     PeerReason.SOURCE_ROUTED),
    ("v4 outer LSRR", lambda: F.ptb_v4(ip_fields={"options": [IPOption_LSRR(routers=["198.51.100.9"])]}),
     PeerReason.SOURCE_ROUTED),
    ("v4 outer SSRR", lambda: F.ptb_v4(ip_fields={"options": [IPOption_SSRR(routers=["198.51.100.9"])]}),
     PeerReason.SOURCE_ROUTED),
    ("v6 quoted routing type 0", lambda: F.ptb_v6(ext=(_routing(0),)), PeerReason.SOURCE_ROUTED),
    ("v6 quoted routing type 0, no segment left", lambda: F.ptb_v6(ext=(_routing(0, 0),)),
     PeerReason.SOURCE_ROUTED),
    ("v6 outer routing type 0", lambda: F.ptb_v6(outer_ext=(_routing(0, 0),)), PeerReason.SOURCE_ROUTED),
    ("v6 routing type 0 behind a destination-options header",
     lambda: F.ptb_v6(ext=(IPv6ExtHdrDestOpt(), _routing(0))), PeerReason.SOURCE_ROUTED),
    ("v4 outer source 127.0.0.1", lambda: F.ptb_v4(outer_src="127.0.0.1"), PeerReason.LOOPBACK_SOURCE),
    ("v4 outer source 127.255.0.9", lambda: F.ptb_v4(outer_src="127.255.0.9"), PeerReason.LOOPBACK_SOURCE),
    ("v6 outer source ::1", lambda: F.ptb_v6(outer_src="::1"), PeerReason.LOOPBACK_SOURCE),
]
INJECTED = [  # controls: near misses that are injected
    ("v4 quoted record-route-free options", lambda: F.ptb_v4(options=[IPOption_NOP()] * 4)),
    ("v6 quoted routing type 2", lambda: F.ptb_v6(ext=(IPv6ExtHdrRouting(type=2, segleft=0,
                                                                          addresses=["2001:db8:3::8"]),))),
    ("v4 outer source 126.255.255.255", lambda: F.ptb_v4(outer_src="126.255.255.255")),
    ("v4 outer source 128.0.0.1", lambda: F.ptb_v4(outer_src="128.0.0.1")),
    ("v6 outer source ::2", lambda: F.ptb_v6(outer_src="::2")),
]


@pytest.mark.parametrize("build, reason", [(b, r) for _, b, r in REFUSED], ids=[n for n, _, _ in REFUSED])
def test_peer_injection_refuses_what_the_wire_would_not_deliver(build, reason):
    packet = build()[14:]
    ptb = parse_packet(packet)
    assert isinstance(ptb, PTB), ptb  # a well-formed PTB: the refusal is the injection check's
    assert injection.refusal(ptb) is reason
    d = inbox_decision(packet)
    assert d.reason is reason and not d.inject and d.packet is None and d.ptb is not None


@pytest.mark.parametrize("build", [b for _, b in INJECTED], ids=[n for n, _ in INJECTED])
def test_peer_injection_controls_are_injected(build):
    packet = build()[14:]
    ptb = parse_packet(packet)
    assert isinstance(ptb, PTB), ptb
    assert injection.refusal(ptb) is None
    assert inbox_decision(packet).reason is PeerReason.ACCEPTED


def test_injection_check_survives_hostile_option_lengths():
    """Option walks over crafted bytes never raise and never loop: zero and overlong lengths."""
    base = bytearray(F.ptb_v4(options=[IPOption_NOP()] * 4)[14:])
    q = 20 + 8
    for opt in (b"\x07\x00\x00\x00", b"\x07\xff\x00\x00", b"\x01\x01\x83\x02", b"\x01\x01\x01\x89"):
        pkt = bytearray(base)
        pkt[q + 20: q + 24] = opt
        ptb = parse_frame_unverified(bytes(12) + b"\x08\x00" + bytes(pkt))  # the checksum no longer fits
        assert isinstance(ptb, PTB), ptb
        if True:
            result = injection.refusal(ptb)
            assert result in (None, PeerReason.SOURCE_ROUTED)
            if opt[2] in (0x83, 0x89) or opt[3] in (0x83, 0x89):
                assert result is PeerReason.SOURCE_ROUTED, opt

"""parse_frame: every accept path and every rejection reason, on scapy-built frames."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    PadN,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw, raw

from pmtud_relay.core.packet import MAX_EXT_HEADERS, PTB, checksum_ok, parse_frame, parse_frame_unverified
from pmtud_relay.core.reasons import PARSE_REASONS, Reason
from tests.support import frames as F

L3 = 14  # untagged
V4_ICMP = L3 + 20
V4_QUOTE = V4_ICMP + 8
V6_ICMP = L3 + 40
V6_QUOTE = V6_ICMP + 8


def eth(payload, ethertype: int | None = None, dst: str = F.HOST_MAC) -> bytes:
    """Ethernet header + payload (a scapy layer or bytes)."""
    head = Ether(dst=dst, src=F.ROUTER_MAC) if ethertype is None else Ether(dst=dst, src=F.ROUTER_MAC, type=ethertype)
    return raw(head / (Raw(payload) if isinstance(payload, bytes) else payload))


def v4_ip(payload, **fields) -> bytes:
    """An Ethernet frame with an outer IPv4 header (scapy fixes length and checksum)."""
    fields.setdefault("src", F.ROUTER4)
    fields.setdefault("dst", F.VIP4)
    return eth(IP(**fields) / (Raw(payload) if isinstance(payload, bytes) else payload))


def v6_ip(payload, **fields) -> bytes:
    fields.setdefault("src", F.ROUTER6)
    fields.setdefault("dst", F.VIP6)
    return eth(IPv6(**fields) / (Raw(payload) if isinstance(payload, bytes) else payload))


def quoted_v4_with(offset: int, value: bytes) -> bytes:
    """A valid 128-byte IPv4 quote with ``value`` written at ``offset`` (outer checksums stay valid)."""
    return F.set_bytes(F.original_v4()[:128], offset, value)


def ptb_fields(ptb: PTB) -> PTB:
    return ptb._replace(frame=b"")


# -- accepted: exact records ---------------------------------------------------------


def test_v4_ptb_exact_record():
    frame = F.ptb_v4(mtu=1400)
    ptb = parse_frame(frame)
    assert ptb == PTB(
        family=4,
        outer_src=F.packed(F.ROUTER4),
        outer_dst=F.packed(F.VIP4),
        mtu=1400,
        inner_src=F.packed(F.VIP4),
        inner_dst=F.packed(F.CLIENT4),
        proto=6,
        sport=F.SERVICE_PORT,
        dport=F.CLIENT_PORT,
        inner_length=1500,
        l3_offset=14,
        icmp_offset=34,
        frame=frame,
    )
    assert ptb.frame is frame
    assert len(ptb.outer_src) == len(ptb.inner_dst) == 4


def test_v6_ptb_exact_record():
    frame = F.ptb_v6(mtu=1280, length=1400)
    ptb = parse_frame(frame)
    assert ptb == PTB(
        family=6,
        outer_src=F.packed(F.ROUTER6),
        outer_dst=F.packed(F.VIP6),
        mtu=1280,
        inner_src=F.packed(F.VIP6),
        inner_dst=F.packed(F.CLIENT6),
        proto=6,
        sport=F.SERVICE_PORT,
        dport=F.CLIENT_PORT,
        inner_length=1400,
        l3_offset=14,
        icmp_offset=54,
        frame=frame,
    )
    assert ptb.frame is frame
    assert len(ptb.outer_dst) == len(ptb.inner_src) == 16


def test_v6_mtu_is_32_bits():
    ptb = parse_frame(F.ptb_v6(mtu=0x00012345, length=0xFFFF - 100))
    assert ptb.mtu == 0x12345


def test_v4_mtu_and_inner_length_come_from_the_headers():
    ptb = parse_frame(F.ptb_v4(mtu=1234, length=9000))
    assert (ptb.mtu, ptb.inner_length) == (1234, 9000)


@pytest.mark.parametrize(
    "vlans, l3",
    [
        ((), 14),
        (((0x8100, 100),), 18),
        (((0x88A8, 100),), 18),
        (((0x88A8, 10), (0x8100, 20)), 22),  # QinQ
        (((0x8100, 10), (0x8100, 20)), 22),  # double 802.1Q
    ],
    ids=["untagged", "dot1q", "dot1ad", "qinq", "double-dot1q"],
)
@pytest.mark.parametrize("family", [4, 6])
def test_vlan_tags_shift_offsets_only(vlans, l3, family):
    build = F.ptb_v4 if family == 4 else F.ptb_v6
    untagged = parse_frame(build())
    ptb = parse_frame(build(vlans=vlans))
    assert isinstance(ptb, PTB)
    assert ptb.l3_offset == l3
    assert ptb.icmp_offset == l3 + (20 if family == 4 else 40)
    assert ptb_fields(ptb) == ptb_fields(untagged)._replace(l3_offset=l3, icmp_offset=ptb.icmp_offset)


@pytest.mark.parametrize(
    "options, ihl_bytes",
    [
        (b"\x94\x04\x00\x00", 24),  # router alert
        (b"\x07\x27\x04" + b"\x00" * 36 + b"\x00", 60),  # record route filling IHL 15
    ],
)
def test_v4_outer_options_move_icmp_offset(options, ihl_bytes):
    ptb = parse_frame(F.ptb_v4(ip_fields={"options": options}))
    assert isinstance(ptb, PTB)
    assert ptb.icmp_offset == 14 + ihl_bytes
    assert (ptb.sport, ptb.dport, ptb.mtu) == (F.SERVICE_PORT, F.CLIENT_PORT, 1400)


def test_v4_dont_fragment_flag_is_not_a_fragment():
    assert isinstance(parse_frame(F.ptb_v4(ip_fields={"flags": "DF"})), PTB)


def test_v6_hop_by_hop_and_destination_options_before_icmpv6():
    ptb = parse_frame(F.ptb_v6(outer_ext=(IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt())))
    assert isinstance(ptb, PTB)
    assert ptb.icmp_offset == 14 + 40 + 8 + 8
    assert (ptb.proto, ptb.sport, ptb.dport) == (6, F.SERVICE_PORT, F.CLIENT_PORT)


def test_v6_long_destination_options_header():
    header = IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00" * 28)])  # 2 + 30 bytes: length field 3
    assert len(raw(header)) == 32
    ptb = parse_frame(F.ptb_v6(outer_ext=(header,)))
    assert isinstance(ptb, PTB)
    assert ptb.icmp_offset == 14 + 40 + 32


def test_v6_authentication_header_before_icmpv6():
    ah = AH(nh=58, payloadlen=4, spi=1, seq=1, icv=b"\x00" * 12)  # (4 + 2) * 4 = 24 bytes
    ptb = parse_frame(F.ptb_v6(outer_ext=(ah,)))
    assert isinstance(ptb, PTB)
    assert ptb.icmp_offset == 14 + 40 + 24


def test_v6_atomic_fragment_is_accepted():
    ptb = parse_frame(F.ptb_v6(outer_ext=(IPv6ExtHdrFragment(offset=0, m=0, id=0x1234),)))
    assert isinstance(ptb, PTB)
    assert ptb.icmp_offset == 14 + 40 + 8


def test_v6_fragment_header_reserved_bits_are_ignored():
    ptb = parse_frame(F.ptb_v6(outer_ext=(IPv6ExtHdrFragment(offset=0, m=0, res1=0xFF, res2=3),)))
    assert isinstance(ptb, PTB)


def test_v6_exactly_max_ext_headers_is_accepted():
    chain = tuple(IPv6ExtHdrDestOpt() for _ in range(MAX_EXT_HEADERS))
    ptb = parse_frame(F.ptb_v6(outer_ext=chain))
    assert isinstance(ptb, PTB)
    assert ptb.icmp_offset == 14 + 40 + 8 * MAX_EXT_HEADERS


@pytest.mark.parametrize("proto, number", [("tcp", 6), ("udp", 17), ("sctp", 132), ("udplite", 136)])
@pytest.mark.parametrize("family", [4, 6])
def test_quoted_ports(proto, number, family):
    build = F.ptb_v4 if family == 4 else F.ptb_v6
    ptb = parse_frame(build(proto=proto, sport=8443, dport=40001))
    assert isinstance(ptb, PTB)
    assert (ptb.proto, ptb.sport, ptb.dport) == (number, 8443, 40001)


def test_v4_quoted_ports_after_quoted_options():
    quote = F.original_v4(options=b"\x94\x04\x00\x00", sport=1111, dport=2222)[:64]
    assert quote[0] == 0x46
    ptb = parse_frame(F.ptb_v4(quote=quote))
    assert (ptb.sport, ptb.dport) == (1111, 2222)


def test_v4_quoted_non_first_fragment_has_no_ports():
    quote = F.original_v4(frag=185)[:64]  # bytes after the header look like TCP but are not
    ptb = parse_frame(F.ptb_v4(quote=quote))
    assert isinstance(ptb, PTB)
    assert (ptb.proto, ptb.sport, ptb.dport) == (6, -1, -1)


def test_v4_quoted_first_fragment_with_more_fragments_has_ports():
    ptb = parse_frame(F.ptb_v4(quote=F.original_v4(flags="MF")[:64]))
    assert (ptb.sport, ptb.dport) == (F.SERVICE_PORT, F.CLIENT_PORT)


def test_v6_quoted_non_first_fragment_has_no_ports():
    ptb = parse_frame(F.ptb_v6(ext=(IPv6ExtHdrFragment(offset=100, m=0, id=5),)))
    assert isinstance(ptb, PTB)
    assert (ptb.proto, ptb.sport, ptb.dport) == (6, -1, -1)


def test_v6_quoted_first_fragment_and_options_have_ports():
    ext = (IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment(offset=0, m=1, id=5))
    ptb = parse_frame(F.ptb_v6(ext=ext, proto="udp", sport=53, dport=5353))
    assert (ptb.proto, ptb.sport, ptb.dport) == (17, 53, 5353)


@pytest.mark.parametrize("family", [4, 6])
def test_quoted_icmp_echo_is_accepted_without_ports(family):
    build = F.ptb_v4 if family == 4 else F.ptb_v6
    ptb = parse_frame(build(proto="icmp-echo"))
    assert isinstance(ptb, PTB)
    assert ptb.proto == (1 if family == 4 else 58)
    assert (ptb.sport, ptb.dport) == (-1, -1)


def test_v4_quote_of_just_the_ip_header_is_a_short_l4_quote():
    """No kernel can map it to a socket (it pulls 8 bytes past the quoted header first)."""
    assert parse_frame(F.ptb_v4(quote=F.original_v4()[:20])) is Reason.SHORT_L4_QUOTE


def test_v4_quote_with_seven_l4_bytes_is_short_eight_is_enough():
    assert parse_frame(F.ptb_v4(quote=F.original_v4()[:27])) is Reason.SHORT_L4_QUOTE
    ptb = parse_frame(F.ptb_v4(quote=F.original_v4()[:28]))
    assert (ptb.proto, ptb.sport, ptb.dport, ptb.inner_length) == (6, F.SERVICE_PORT, F.CLIENT_PORT, 1500)


def test_v6_quote_of_just_the_ip_header_is_a_short_l4_quote():
    assert parse_frame(F.ptb_v6(quote=F.original_v6()[:40])) is Reason.SHORT_L4_QUOTE
    ptb = parse_frame(F.ptb_v6(quote=F.original_v6()[:48]))
    assert (ptb.proto, ptb.sport, ptb.dport, ptb.inner_length) == (6, F.SERVICE_PORT, F.CLIENT_PORT, 1500)


def test_quoted_non_first_fragment_has_no_ports():
    ptb = parse_frame(F.ptb_v4(quote=F.original_v4(frag=100)[:28]))
    assert isinstance(ptb, PTB) and (ptb.sport, ptb.dport) == (-1, -1)


@pytest.mark.parametrize("trailer", [b"\x00" * 6, b"\xde\xad\xbe\xef" * 8])
@pytest.mark.parametrize("family", [4, 6])
def test_ethernet_padding_after_the_ip_packet_is_ignored(family, trailer):
    build = F.ptb_v4 if family == 4 else F.ptb_v6
    bare = parse_frame(build(quote_len=28 if family == 4 else 48))
    frame = build(quote_len=28 if family == 4 else 48, trailer=trailer)
    padded = parse_frame(frame)
    assert isinstance(padded, PTB)
    assert padded.frame is frame
    assert ptb_fields(padded) == ptb_fields(bare)


# -- rejections ----------------------------------------------------------------------


def _v4_valid() -> bytes:
    return F.ptb_v4()


def _v6_valid() -> bytes:
    return F.ptb_v6()


def _three_tags() -> bytes:
    return F.ptb_v4(vlans=((0x88A8, 1), (0x8100, 2), (0x8100, 3)))


def _quoted_icmp_v4(icmp_type: int, code: int = 0) -> bytes:
    return F.ptb_v4(proto=ICMP(type=icmp_type, code=code))


def _quoted_icmp_v6(layer) -> bytes:
    return F.ptb_v6(proto=layer)


REJECTS = [
    # too_short, at every layer
    ("empty", lambda: b"", Reason.TOO_SHORT),
    ("13 bytes", lambda: _v4_valid()[:13], Reason.TOO_SHORT),
    ("vlan tag cut", lambda: _v4_valid()[:12] + b"\x81\x00\x00", Reason.TOO_SHORT),
    ("second vlan tag cut", lambda: F.ptb_v4(vlans=((0x88A8, 1), (0x8100, 2)))[:20], Reason.TOO_SHORT),
    ("ethertype only", lambda: _v4_valid()[:14], Reason.TOO_SHORT),
    ("v4 header cut", lambda: _v4_valid()[: L3 + 19], Reason.TOO_SHORT),
    ("v4 total length beyond frame", lambda: _v4_valid()[:-1], Reason.TOO_SHORT),
    ("v4 icmp header cut", lambda: v4_ip(b"\x03\x04\x00\x00\x00\x00\x05", proto=1), Reason.TOO_SHORT),
    ("v6 header cut", lambda: _v6_valid()[: L3 + 39], Reason.TOO_SHORT),
    ("v6 payload length beyond frame", lambda: _v6_valid()[:-1], Reason.TOO_SHORT),
    ("v6 hop-by-hop cut", lambda: v6_ip(b"\x3a\x00\x00\x00", nh=0), Reason.TOO_SHORT),
    ("v6 fragment header cut", lambda: v6_ip(b"\x3a\x00\x00\x00\x00\x00", nh=44), Reason.TOO_SHORT),
    ("v6 AH cut", lambda: v6_ip(b"\x3a\x04\x00", nh=51), Reason.TOO_SHORT),
    (
        "v6 ext length overruns packet",
        lambda: v6_ip(bytes([58, 5]) + b"\x01\x04" + b"\x00" * 4 + b"\x02\x00\x00\x00\x00\x00\x05\x00", nh=60),
        Reason.TOO_SHORT,
    ),
    ("v6 icmp header cut", lambda: v6_ip(b"\x02\x00\x00\x00\x00\x00\x05", nh=58), Reason.TOO_SHORT),
    # bad_l2
    ("three vlan tags", _three_tags, Reason.BAD_L2),
    # not_ip
    ("arp", F.arp_frame, Reason.NOT_IP),
    ("vlan arp", lambda: raw(Ether(dst=F.HOST_MAC, src=F.ROUTER_MAC) / Dot1Q(vlan=5) / ARP(psrc=F.ROUTER4)),
     Reason.NOT_IP),
    ("lldp", lambda: eth(b"\x00" * 46, ethertype=0x88CC), Reason.NOT_IP),
    ("v4 ethertype with v6 packet", lambda: F.set_bytes(_v6_valid(), 12, b"\x08\x00"), Reason.BAD_IP),
    # bad_ip
    ("v4 version 5", lambda: F.ptb_v4(ip_fields={"version": 5}), Reason.BAD_IP),
    ("v4 ihl 4", lambda: F.ptb_v4(ip_fields={"ihl": 4}), Reason.BAD_IP),
    ("v4 ihl 0", lambda: F.ptb_v4(ip_fields={"ihl": 0}), Reason.BAD_IP),
    ("v4 total < ihl", lambda: F.ptb_v4(ip_fields={"len": 19}), Reason.BAD_IP),
    ("v4 total < ihl with options", lambda: F.ptb_v4(ip_fields={"options": b"\x94\x04\x00\x00", "len": 22}),
     Reason.BAD_IP),
    ("v6 version 4", lambda: F.ptb_v6(ip_fields={"version": 4}), Reason.BAD_IP),
    ("v6 payload length 0", lambda: F.ptb_v6(ip_fields={"plen": 0}), Reason.BAD_IP),
    # bad_checksum
    ("v4 header checksum", lambda: F.ptb_v4(ip_fields={"chksum": 0x1234}), Reason.BAD_CHECKSUM),
    ("v4 header ttl changed", lambda: F.add_one(_v4_valid(), L3 + 8), Reason.BAD_CHECKSUM),
    ("v4 header dst changed", lambda: F.add_one(_v4_valid(), L3 + 19), Reason.BAD_CHECKSUM),
    ("icmpv4 checksum field", lambda: F.add_one(_v4_valid(), V4_ICMP + 2), Reason.BAD_CHECKSUM),
    ("icmpv4 mtu changed", lambda: F.add_one(_v4_valid(), V4_ICMP + 7), Reason.BAD_CHECKSUM),
    ("icmpv4 last quoted byte", lambda: F.add_one(_v4_valid(), len(_v4_valid()) - 1), Reason.BAD_CHECKSUM),
    ("icmpv4 checksum zero", lambda: F.ptb_v4(icmp_fields={"chksum": 0}), Reason.BAD_CHECKSUM),
    ("icmpv6 checksum field", lambda: F.add_one(_v6_valid(), V6_ICMP + 2), Reason.BAD_CHECKSUM),
    ("icmpv6 mtu changed", lambda: F.add_one(_v6_valid(), V6_ICMP + 7), Reason.BAD_CHECKSUM),
    ("icmpv6 last quoted byte", lambda: F.add_one(_v6_valid(), len(_v6_valid()) - 1), Reason.BAD_CHECKSUM),
    ("icmpv6 pseudo-header: outer src", lambda: F.add_one(_v6_valid(), L3 + 8 + 15), Reason.BAD_CHECKSUM),
    ("icmpv6 pseudo-header: outer dst", lambda: F.add_one(_v6_valid(), L3 + 24), Reason.BAD_CHECKSUM),
    ("icmpv6 pseudo-header: length", lambda: _v6_longer_by_two_zero_bytes(), Reason.BAD_CHECKSUM),
    ("icmpv6 with ext header, src changed", lambda: F.add_one(F.ptb_v6(outer_ext=(IPv6ExtHdrHopByHop(),)), L3 + 9),
     Reason.BAD_CHECKSUM),
    # fragment
    ("v4 more fragments", lambda: F.ptb_v4(ip_fields={"flags": "MF"}), Reason.FRAGMENT),
    ("v4 offset", lambda: F.ptb_v4(ip_fields={"frag": 1}), Reason.FRAGMENT),
    ("v4 offset and DF", lambda: F.ptb_v4(ip_fields={"frag": 100, "flags": "DF"}), Reason.FRAGMENT),
    # The checksums come after every structural check: a corrupt fragment is a fragment.
    ("v4 fragment, bad header checksum", lambda: F.ptb_v4(ip_fields={"flags": "MF", "chksum": 0x1234}),
     Reason.FRAGMENT),
    ("v6 fragment offset", lambda: F.ptb_v6(outer_ext=(IPv6ExtHdrFragment(offset=1, m=0),)), Reason.FRAGMENT),
    ("v6 fragment M flag", lambda: F.ptb_v6(outer_ext=(IPv6ExtHdrFragment(offset=0, m=1),)), Reason.FRAGMENT),
    (
        "v6 fragment after hop-by-hop",
        lambda: F.ptb_v6(outer_ext=(IPv6ExtHdrHopByHop(), IPv6ExtHdrFragment(offset=8, m=1))),
        Reason.FRAGMENT,
    ),
    # bad_ext_header
    (
        "v6 ext chain too long",
        lambda: F.ptb_v6(outer_ext=tuple(IPv6ExtHdrDestOpt() for _ in range(MAX_EXT_HEADERS + 1))),
        Reason.BAD_EXT_HEADER,
    ),
    (
        "v6 ext chain far too long",
        lambda: F.ptb_v6(outer_ext=tuple(IPv6ExtHdrHopByHop() for _ in range(40))),
        Reason.BAD_EXT_HEADER,
    ),
    # not_ptb
    ("icmpv4 echo", F.echo_v4, Reason.NOT_PTB),
    ("icmpv4 host unreachable", lambda: F.ptb_v4(icmp_type=3, icmp_code=1), Reason.NOT_PTB),
    ("icmpv4 time exceeded", lambda: F.ptb_v4(icmp_type=11, icmp_code=0), Reason.NOT_PTB),
    ("icmpv4 type 4 code 3", lambda: F.ptb_v4(icmp_type=4, icmp_code=3), Reason.NOT_PTB),
    ("v4 tcp", F.tcp_v4, Reason.NOT_PTB),
    ("v4 esp", lambda: v4_ip(b"\x00\x00\x00\x01" * 8, proto=50), Reason.NOT_PTB),
    ("icmpv6 echo", F.echo_v6, Reason.NOT_PTB),
    ("icmpv6 destination unreachable", F.dest_unreach_v6, Reason.NOT_PTB),
    ("icmpv6 type 2 code 1", lambda: F.ptb_v6(icmp=ICMPv6PacketTooBig(code=1, mtu=1280)), Reason.NOT_PTB),
    ("icmpv6 time exceeded", lambda: F.ptb_v6(icmp=ICMPv6TimeExceeded()), Reason.NOT_PTB),
    ("v6 tcp", lambda: v6_ip(TCP(sport=1, dport=2)), Reason.NOT_PTB),
    ("v6 esp", lambda: v6_ip(b"\x00\x00\x00\x01" * 8, nh=50), Reason.NOT_PTB),
    ("v6 short esp", lambda: v6_ip(b"\x00\x00\x00\x01", nh=50), Reason.NOT_PTB),
    ("v6 no next header", lambda: v6_ip(b"\x00" * 8, nh=59), Reason.NOT_PTB),
    ("v6 hop-by-hop then tcp", lambda: v6_ip(IPv6ExtHdrHopByHop() / TCP()), Reason.NOT_PTB),
    # short_quote
    ("v4 empty quote", lambda: F.ptb_v4(quote=b""), Reason.SHORT_QUOTE),
    ("v4 quote 19 bytes", lambda: F.ptb_v4(quote=F.original_v4()[:19]), Reason.SHORT_QUOTE),
    ("v4 quoted options cut", lambda: F.ptb_v4(quote=F.original_v4(options=b"\x94\x04\x00\x00")[:22]),
     Reason.SHORT_QUOTE),
    ("v4 quoted ihl 15, 40 bytes", lambda: F.ptb_v4(quote=quoted_v4_with(0, b"\x4f")[:40]), Reason.SHORT_QUOTE),
    ("v6 empty quote", lambda: F.ptb_v6(quote=b""), Reason.SHORT_QUOTE),
    ("v6 quote 39 bytes", lambda: F.ptb_v6(quote=F.original_v6()[:39]), Reason.SHORT_QUOTE),
    # short_l4_quote: fewer than 8 bytes past the quoted header (tests/test_unmatchable.py has more)
    ("v4 quote 4 l4 bytes (fast path)", lambda: F.ptb_v4(quote=F.original_v4()[:24]), Reason.SHORT_L4_QUOTE),
    ("v4 quote 0 l4 bytes", lambda: F.ptb_v4(quote=F.original_v4()[:20]), Reason.SHORT_L4_QUOTE),
    ("v6 quote 4 l4 bytes (fast path)", lambda: F.ptb_v6(quote=F.original_v6()[:44]), Reason.SHORT_L4_QUOTE),
    ("v6 quote 0 l4 bytes", lambda: F.ptb_v6(quote=F.original_v6()[:40]), Reason.SHORT_L4_QUOTE),
    # bad_inner
    ("v4 quoting ipv6", lambda: F.ptb_v4(quote=F.original_v6()[:64]), Reason.BAD_INNER),
    ("v4 quoted version 5", lambda: F.ptb_v4(quote=quoted_v4_with(0, b"\x55")), Reason.BAD_INNER),
    ("v4 quoted ihl 4", lambda: F.ptb_v4(quote=quoted_v4_with(0, b"\x44")), Reason.BAD_INNER),
    ("v4 quoted total < ihl", lambda: F.ptb_v4(quote=quoted_v4_with(2, b"\x00\x13")), Reason.BAD_INNER),
    ("v6 quoting ipv4", lambda: F.ptb_v6(quote=F.original_v4()[:64]), Reason.BAD_INNER),
    ("v6 quoted version 7", lambda: F.ptb_v6(quote=F.set_bytes(F.original_v6()[:64], 0, b"\x70")), Reason.BAD_INNER),
    # inner_icmp_error
    ("v4 quoting dest unreachable", lambda: _quoted_icmp_v4(3, 1), Reason.INNER_ICMP_ERROR),
    ("v4 quoting a PTB", lambda: _quoted_icmp_v4(3, 4), Reason.INNER_ICMP_ERROR),
    ("v4 quoting source quench", lambda: _quoted_icmp_v4(4), Reason.INNER_ICMP_ERROR),
    ("v4 quoting redirect", lambda: _quoted_icmp_v4(5, 1), Reason.INNER_ICMP_ERROR),
    ("v4 quoting time exceeded", lambda: _quoted_icmp_v4(11), Reason.INNER_ICMP_ERROR),
    ("v4 quoting parameter problem", lambda: _quoted_icmp_v4(12), Reason.INNER_ICMP_ERROR),
    ("v6 quoting dest unreachable", lambda: _quoted_icmp_v6(ICMPv6DestUnreach()), Reason.INNER_ICMP_ERROR),
    ("v6 quoting a PTB", lambda: _quoted_icmp_v6(ICMPv6PacketTooBig(mtu=1280)), Reason.INNER_ICMP_ERROR),
    ("v6 quoting time exceeded", lambda: _quoted_icmp_v6(ICMPv6TimeExceeded()), Reason.INNER_ICMP_ERROR),
    (
        "v6 quoting type 127 (top of the error range)",
        lambda: F.ptb_v6(proto=b"\x7f\x00\x00\x00\x00\x00\x00\x00", nh=58),
        Reason.INNER_ICMP_ERROR,
    ),
    (
        "v6 quoting an error behind an ext header",
        lambda: F.ptb_v6(ext=(IPv6ExtHdrDestOpt(),), proto=ICMPv6DestUnreach()),
        Reason.INNER_ICMP_ERROR,
    ),
]


def _v6_longer_by_two_zero_bytes() -> bytes:
    """Two zero bytes appended inside the IPv6 payload: the message sum is unchanged,
    only the pseudo-header's upper-layer length differs, so the checksum must fail."""
    frame = _v6_valid()
    (plen,) = struct.unpack_from("!H", frame, L3 + 4)
    return F.set_bytes(frame, L3 + 4, struct.pack("!H", plen + 2)) + b"\x00\x00"


@pytest.mark.parametrize("name, build, reason", REJECTS, ids=[r[0] for r in REJECTS])
def test_rejections(name, build, reason):
    frame = build()
    assert parse_frame(frame) is reason


def test_every_parse_reason_is_exercised():
    produced = {reason for _, _, reason in REJECTS}
    assert produced == PARSE_REASONS


@pytest.mark.parametrize("name, build, reason", REJECTS, ids=[r[0] for r in REJECTS])
def test_unverified_parse_defers_only_the_checksums(name, build, reason):
    """parse_frame_unverified + checksum_ok (the relay's split) decide exactly as parse_frame."""
    frame = build()
    early = parse_frame_unverified(frame)
    if isinstance(early, PTB):
        # Only the checksums are left (ICMP, and the outer IPv4 header's).
        assert reason is Reason.BAD_CHECKSUM and not checksum_ok(early)
    else:
        assert early is reason


@pytest.mark.parametrize("name", list(F.valid_catalogue()))
def test_unverified_parse_of_a_valid_frame_is_the_same_record(name):
    frame = F.valid_catalogue()[name]
    assert parse_frame_unverified(frame) == parse_frame(frame)
    assert checksum_ok(parse_frame_unverified(frame))


@pytest.mark.parametrize("name", list(F.valid_catalogue()))
def test_every_strict_prefix_of_a_valid_frame_is_too_short(name):
    frame = F.valid_catalogue()[name]
    assert isinstance(parse_frame(frame), PTB)
    for cut in range(len(frame)):
        assert parse_frame(frame[:cut]) is Reason.TOO_SHORT, cut


def test_checksum_mutations_leave_the_valid_fixtures_valid():
    # Guard for the checksum tests: the unmodified fixtures do verify.
    assert isinstance(parse_frame(_v4_valid()), PTB)
    assert isinstance(parse_frame(_v6_valid()), PTB)
    assert isinstance(parse_frame(F.ptb_v6(outer_ext=(IPv6ExtHdrHopByHop(),))), PTB)


def test_inner_icmp_error_in_a_non_first_fragment_cannot_be_seen():
    # The L4 header of a non-first fragment is not quoted: nothing to inspect.
    quote = raw(IP(src=F.VIP4, dst=F.CLIENT4, frag=10, proto=1) / Raw(b"\x03\x01" + b"\x00" * 30))
    ptb = parse_frame(F.ptb_v4(quote=quote))
    assert isinstance(ptb, PTB)
    assert (ptb.proto, ptb.sport, ptb.dport) == (1, -1, -1)


@pytest.mark.parametrize("icmp_type", [0, 8, 13, 128, 129])
def test_quoted_icmp_informational_types_are_not_errors(icmp_type):
    if icmp_type < 128:
        ptb = parse_frame(F.ptb_v4(proto=ICMP(type=icmp_type)))
        assert isinstance(ptb, PTB) and ptb.proto == 1
    else:
        ptb = parse_frame(F.ptb_v6(proto=ICMPv6EchoRequest(type=icmp_type)))
        assert isinstance(ptb, PTB) and ptb.proto == 58



# -- claimed_ptb (analyze/claims.py): what a rejected frame says it is ---------------------------


def test_claimed_ptb_tells_malformed_ptbs_from_other_traffic():
    from pmtud_relay.analyze.claims import claimed_ptb

    v4, v6 = F.ptb_v4(), F.ptb_v6()
    assert claimed_ptb(v4) == (4, 14) and claimed_ptb(v6) == (6, 14)
    assert claimed_ptb(F.ptb_v4(vlans=((0x88A8, 5), (0x8100, 6)))) == (4, 22)  # two tags: the parser's limit
    # malformed PTBs are still PTBs by their type fields: truncated, corrupt checksum, short quote
    assert claimed_ptb(v4[:14 + 20 + 2]) == (4, 14)
    assert parse_frame(v4[:14 + 20 + 2]) is Reason.TOO_SHORT
    assert claimed_ptb(F.add_one(v6, 14 + 40 + 2)) == (6, 14)
    assert claimed_ptb(F.ptb_v4(quote_len=10)) == (4, 14)
    # other traffic, and what the parser never reaches
    for frame in (F.echo_v4(), F.echo_v6(), F.tcp_v4(), F.arp_frame(), F.dest_unreach_v6(),
                  F.ptb_v4(icmp_code=3), F.set_bytes(v6, 14 + 40, b"\x01"), v4[:14 + 20 + 1], v4[:13], b""):
        assert claimed_ptb(frame) is None, frame.hex()
    assert claimed_ptb(F.ptb_v4(vlans=((0x88A8, 5), (0x8100, 6), (0x8100, 7)))) is None  # three tags: not parsed at all
    assert claimed_ptb(F.set_bytes(v4, 14 + 6, b"\x00\x10")) is None  # a non-first fragment

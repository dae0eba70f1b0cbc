"""core/nflog_wire.py PacketParser: the learned-layout fast path gives the general walk's records.

Every comparison is between ``PacketParser().parse_datagram`` and the module's general
``parse_datagram`` on the same bytes (NflogPacket and Batch are tuples: equal means every
field equal). Where the fast path must have been taken, ``walked`` (messages no layout
fitted) says so, so that a fast path that never fits cannot pass for a correct one.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmtud_relay.nflog import fastpath as fp
from pmtud_relay.nflog import wire as w
from pmtud_relay.nflog.capture import NflogDemux
from tests.support.nflog import (
    HOST_MAC,
    IFINDEX,
    ROUTER_MAC,
    attrs_for,
    eth,
    nla,
    nlmsg,
    packet_msg,
    ptb4_msg,
    ptb4_packet,
    ptb6_msg,
)

# One message as Linux 6.18 delivered it (the first of a datagram of three; nft ``log group
# 2106`` in prerouting, seq on, a socket with timestamps enabled): PACKET_HDR, PREFIX (empty:
# just the NUL), IFINDEX_INDEV, HWADDR, HWTYPE, HWLEN, HWHEADER, TIMESTAMP, SEQ, PAYLOAD.
KERNEL_MSG = bytes.fromhex((Path(__file__).parent / "data" / "nflog-kernel-msg-linux-6.18.hex").read_text())


def with_seq(msg: bytes, seq: int) -> bytes:
    """KERNEL_MSG with another sequence number (the value before the 72-byte payload attribute)."""
    return msg[:120] + struct.pack("!I", seq) + msg[124:]


def both(data: bytes, parser: fp.PacketParser | None = None) -> w.Batch:
    """The general walk's batch, after checking that ``parser`` (a fresh one by default) agrees."""
    general = w.parse_datagram(data)
    fast = (parser or fp.PacketParser()).parse_datagram(data)
    assert fast == general
    for a, b in zip(fast.packets, general.packets):
        assert [type(x) for x in a] == [type(x) for x in b]
    return general


# --- realistic messages -------------------------------------------------------------------------
REALISTIC = {
    "v4": lambda i: ptb4_msg(seq=i),
    "v6": lambda i: ptb6_msg(seq=i),
    "v4 timestamp prefix": lambda i: ptb4_msg(seq=i, prefix=b"pmtud-relay", timestamp=(1700000000 + i, 250000)),
    "v6 timestamp": lambda i: ptb6_msg(seq=i, timestamp=(1700000000, i)),
    "v4 no hwheader": lambda i: ptb4_msg(seq=i, hwheader=None),
    "v4 no hwheader no hwaddr": lambda i: packet_msg(attrs_for(ptb4_packet(), seq=i, hwheader=None, hwaddr=None)),
    "v6 18-byte header": lambda i: ptb6_msg(seq=i, hwlen=18,
                                           hwheader=eth(HOST_MAC, ROUTER_MAC, 0x86DD) + b"\x60\0\0\0"),
    "v4 no seq": lambda i: ptb4_msg(seq=None, prefix=b"x"),
    "v4 payload sizes": lambda i: ptb4_msg(seq=i, payload=ptb4_packet() + b"\xab" * i),
    "kernel": lambda i: with_seq(KERNEL_MSG, i),
}


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_realistic_messages_take_the_fast_path_with_equal_records(name: str) -> None:
    make = REALISTIC[name]
    parser = fp.PacketParser()
    batch = both(b"".join(make(i) for i in range(7)), parser)
    assert len(batch.packets) == 7 and batch.malformed == 0
    assert parser.walked == 1 and parser.learned == 1  # the first taught the layout, six fitted it
    both(make(100), parser)
    assert parser.walked == 1


def test_the_kernel_datagram_parses_as_logged() -> None:
    parser = fp.PacketParser()
    (pkt,) = both(KERNEL_MSG, parser).packets
    (again,) = parser.parse_datagram(with_seq(KERNEL_MSG, 1)).packets
    assert parser.walked == 1
    assert again == pkt._replace(seq=1)
    assert (pkt.group, pkt.family, pkt.hw_protocol, pkt.indev, pkt.hwtype, pkt.hwlen) == (2106, 2, 0x0800, 2, 1, 14)
    assert pkt.prefix == b"" and pkt.hwaddr == bytes.fromhex("020000000501") and len(pkt.payload) == 68
    assert pkt.timestamp == pytest.approx(1796185933.049319)


def test_layouts_that_change_mid_datagram() -> None:
    makers = [REALISTIC[name] for name in sorted(REALISTIC)]
    # Runs of each layout, then all of them taking turns, then back to the first.
    data = b"".join(make(i) for make in makers for i in range(3))
    data += b"".join(makers[i % len(makers)](i) for i in range(40)) + makers[0](7) * 3
    parser = fp.PacketParser()
    for _ in range(3):  # the same parser again: it remembers, and still agrees
        assert len(both(data, parser).packets) == 3 * len(makers) + 43
    assert parser.learned == len(set(fp._layout_key(m(0), 0, len(m(0))) for m in makers))


def test_two_layouts_taking_turns_both_stay_fast() -> None:
    parser = fp.PacketParser()
    data = b"".join(ptb4_msg(seq=i, prefix=b"v4" if i % 2 else b"ipv6-ptb") for i in range(50))
    both(data, parser)
    assert parser.walked == 2


def test_more_layouts_than_tried_still_agree_and_stay_bounded() -> None:
    parser = fp.PacketParser()
    for rnd in range(3):
        data = b"".join(ptb4_msg(seq=i, prefix=b"p" * (i % 50)) for i in range(200))
        both(data, parser)
        assert len(parser._tried) <= fp.LAYOUTS_TRIED and len(parser._kept) <= fp.LAYOUTS_KEPT
    # 50 layouts taking turns: none stays tried, and learning pauses rather than compiling each.
    assert parser.walked > 500 and parser.learned < 60


def test_other_messages_in_the_datagram() -> None:
    req = nlmsg(0x0401, struct.pack("!BBH", 0, 0, 2105), seq=7, flags=5)
    ack = nlmsg(2, struct.pack("=i", 0) + req[:16], seq=7)
    parser = fp.PacketParser()
    data = ptb4_msg(seq=1) + ack + nlmsg(3, b"\0" * 4) + ptb4_msg(seq=2) + nlmsg(4, b"") + ptb4_msg(seq=3)
    batch = both(data, parser)
    assert batch.acks == [(7, 0)] and batch.overrun and len(batch.packets) == 3
    assert parser.walked == 1


# --- truncations and mutations -----------------------------------------------------------------------
SMALL = packet_msg([nla(1, struct.pack("!HBx", 0x0800, 0)), nla(4, struct.pack("!I", IFINDEX)),
                    nla(12, struct.pack("!I", 5)), nla(9, b"\x45\x00\x00\x14\x01")])
MESSAGES = {"small": SMALL, "kernel": KERNEL_MSG, "v6 prefix": ptb6_msg(seq=9, prefix=b"abc", timestamp=(3, 4))}


def _attr_header_offsets(msg: bytes) -> list[int]:
    """Offsets of the nlmsghdr, nfgenmsg and every attribute header byte of ``msg``."""
    out = list(range(20))
    off = 20
    while off + 4 <= len(msg):
        out += range(off, off + 4)
        alen = struct.unpack_from("=H", msg, off)[0]
        off += max(4, (alen + 3) & ~3)
    return out


def relabel(msg: bytes) -> bytes:
    """``msg`` with nlmsg_len set to its length."""
    return struct.pack("=I", len(msg)) + msg[4:] if len(msg) >= 4 else msg


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_truncation(name: str) -> None:
    """Cut datagrams (nlmsg_len beyond the end) and cut messages (nlmsg_len saying so), alone
    and after the message that taught the layout."""
    msg = MESSAGES[name]
    parser = fp.PacketParser()
    both(msg, parser)
    for cut in range(len(msg) + 1):
        short = msg[:cut]
        for data in (short, msg + short, relabel(short), msg + relabel(short) + b"\0" * (-cut % 4) + msg):
            both(data)
            both(data, parser)
    walked = parser.walked
    both(msg + msg, parser)
    assert parser.walked == walked  # the layout is still in use


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_single_byte_change_of_the_header_region(name: str) -> None:
    """Each byte of the nlmsghdr, the nfgenmsg and every attribute header set to each value."""
    msg = MESSAGES[name]
    shared = fp.PacketParser()  # sees every mutant, so it learns, forgets and pauses
    for at in _attr_header_offsets(msg):
        for value in range(256):
            if value == msg[at]:
                continue
            mutant = msg[:at] + bytes((value,)) + msg[at + 1 :]
            data = msg + mutant + msg
            fresh = fp.PacketParser()
            both(data, fresh)
            both(data, shared)


def test_every_single_byte_change_of_a_small_message() -> None:
    """Exhaustive over SMALL: every byte (values and payload too) set to every other value."""
    parser = fp.PacketParser()
    for at in range(len(SMALL)):
        for value in range(256):
            if value != SMALL[at]:
                mutant = SMALL[:at] + bytes((value,)) + SMALL[at + 1 :]
                both(SMALL + mutant, parser)


def test_payload_not_last_is_left_to_the_walk() -> None:
    trailing = packet_msg(attrs_for(ptb4_packet(), seq=1) + [nla(2, struct.pack("!I", 7))])
    parser = fp.PacketParser()
    both(ptb4_msg(seq=0) + trailing + trailing + ptb4_msg(seq=2), parser)
    assert parser.walked == 3 and parser.learned == 1


def test_padding_after_the_payload_fits_but_an_attribute_there_does_not() -> None:
    base = ptb4_msg(seq=0, payload=ptb4_packet() + b"\x01")  # nla_len 61: 3 bytes of padding, counted
    unpadded = relabel(base[:-3])
    trailing = relabel(base + struct.pack("=HH", 4, 2))  # an empty NFULA_MARK after the payload
    parser = fp.PacketParser()
    batch = both(unpadded + b"\0" * 3 + base + trailing + base, parser)
    assert len(batch.packets) == 4 and batch.malformed == 0
    assert parser.walked == 2  # unpadded taught the layout; trailing does not fit it


def test_attributes_repeated_in_a_layout_last_one_wins() -> None:
    attrs = [nla(4, struct.pack("!I", 1)), nla(3, struct.pack("!QQ", 1, 2)), nla(4, b"\x01"),
             nla(4, struct.pack("!I", 3)), nla(10, b"a\0b"), nla(10, b"cd"), nla(8, struct.pack("!HH", 2, 0) + b"xyz"),
             nla(8, b"\0"), nla(16, b"h1"), nla(16, b""), nla(9, b"early"), nla(3, struct.pack("!QQ", 5, 6)),
             nla(21, b"l2"), nla(20 | w.NLA_F_NESTED, nla(1, struct.pack("!H", 0x88A8)) + nla(2, struct.pack("!H", 7)))]
    parser = fp.PacketParser()
    data = b"".join(packet_msg(attrs + [nla(9, b"p" * i)], family=socket.AF_INET6) for i in range(1, 6))
    batch = both(data, parser)
    assert parser.walked == 1
    pkt = batch.packets[-1]
    assert (pkt.indev, pkt.timestamp, pkt.prefix, pkt.hwaddr, pkt.hwheader, pkt.payload) == \
        (3, 5.000006, b"cd", b"xy", b"", b"ppppp")
    assert (pkt.vlan_proto, pkt.vlan_tci, pkt.l2hdr) == (0x88A8, 7, b"l2")


def test_flag_bits_are_part_of_the_layout() -> None:
    plain = packet_msg([nla(4, struct.pack("!I", 3)), nla(9, b"xy")])
    flagged = packet_msg([nla(4 | w.NLA_F_NET_BYTEORDER, struct.pack("!I", 3)), nla(9 | w.NLA_F_NESTED, b"xy")])
    parser = fp.PacketParser()
    batch = both(plain + flagged + plain + flagged, parser)
    assert parser.learned == 2 and parser.walked == 2
    assert batch.packets[0] == batch.packets[1]


def test_inputs_other_than_bytes_take_the_walk() -> None:
    parser = fp.PacketParser()
    data = ptb4_msg(seq=0) + ptb4_msg(seq=1)
    for other in (bytearray(data), memoryview(data)):
        fast, general = parser.parse_datagram(other), w.parse_datagram(other)
        assert fast == general and type(fast.packets[0].payload) is type(general.packets[0].payload)
    assert parser.parse_datagram(data) == w.parse_datagram(data)


def test_parse_packet_message_of_the_parser() -> None:
    parser = fp.PacketParser()
    data = b"\0" * 8 + ptb4_msg(seq=1) + ptb4_msg(seq=2)
    m = len(ptb4_msg(seq=1))
    for start, end in [(8, 8 + m), (8 + m, 8 + 2 * m)]:
        assert parser.parse_packet_message(data, start, end) == w.parse_packet_message(data, start, end)
    assert parser.walked == 1
    for start, end in [(8, 8 + 2 * m), (8, 7 + m), (8, len(data) + 1), (-m, len(data)), (0, 0), (8 + m, 8 + m + 19),
                       (8 + m, 8 + m + 20), (5, 1)]:
        assert parser.parse_packet_message(data, start, end) == w.parse_packet_message(data, start, end)


# --- random attribute lists ---------------------------------------------------------------------------
PROPS = settings(max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
LONG_LIVED = fp.PacketParser()  # across examples: many layouts, eviction, pauses


@st.composite
def attribute(draw) -> bytes:
    kind = draw(st.sampled_from([*range(0, 24), 0x7FFF]))
    kind |= draw(st.sampled_from([0, 0, 0, w.NLA_F_NESTED, w.NLA_F_NET_BYTEORDER]))
    size = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 18, 20]))
    return nla(kind, draw(st.binary(min_size=size, max_size=size)))


@st.composite
def messages(draw) -> tuple[list[bytes], bytes]:
    """An attribute list, and a datagram of messages with it (payloads of varied lengths and
    values, some after a change of one attribute's bytes), maybe a broken message between."""
    attrs = draw(st.lists(attribute(), max_size=12))
    payload_last = draw(st.booleans())
    family = draw(st.sampled_from([socket.AF_INET, socket.AF_INET6, 0, 255]))
    group = draw(st.integers(0, 0xFFFF))
    msgs = []
    for _ in range(draw(st.integers(1, 4))):
        payload = nla(9, draw(st.binary(max_size=40)))
        body = attrs + [payload] if payload_last else [payload] + attrs
        raw = bytearray(packet_msg(body, group=group, family=family))
        if draw(st.booleans()) and len(raw) > 20:  # values (or headers) of this one differ
            at = draw(st.integers(20, len(raw) - 1))
            raw[at] = draw(st.integers(0, 255))
        if draw(st.booleans()):  # unpadded tail: nlmsg_len not a multiple of 4
            raw = raw[: len(raw) - draw(st.integers(0, 3))]
            raw[:4] = struct.pack("=I", len(raw))
        msgs.append(bytes(raw))
    return attrs, b"".join(m + b"\0" * (-len(m) % 4) for m in msgs)


@PROPS
@given(messages())
def test_random_attribute_lists(case: tuple[list[bytes], bytes]) -> None:
    attrs, data = case
    both(data)
    both(data, LONG_LIVED)
    both(data + data)


@PROPS
@given(st.lists(attribute(), max_size=10), st.lists(st.binary(max_size=30), min_size=2, max_size=5))
def test_random_learnable_layouts_are_read_fast(attrs: list[bytes], payloads: list[bytes]) -> None:
    data = b"".join(packet_msg(attrs + [nla(9, p)]) for p in payloads)
    parser = fp.PacketParser()
    batch = both(data, parser)
    if len(batch.packets) == len(payloads) and fp._layout_key(data, 0, struct.unpack_from("=I", data)[0]):
        assert parser.walked == 1  # well formed, payload last: every later message fitted


@PROPS
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    both(data)
    both(data, LONG_LIVED)
    both(KERNEL_MSG + data, LONG_LIVED)


# --- the demultiplexer uses it ---------------------------------------------------------------------
def test_demux_reads_a_socket_s_messages_by_their_layout() -> None:
    demux = NflogDemux(2105, [("eth0", IFINDEX, HOST_MAC)])
    reference = NflogDemux(2105, [("eth0", IFINDEX, HOST_MAC)])
    reference.parser = type("General", (), {"parse_datagram": staticmethod(w.parse_datagram)})()
    datagrams = [b"".join(ptb4_msg(seq=i) if i % 3 else ptb6_msg(seq=i) for i in range(k, k + 10))
                 for k in range(0, 50, 10)]
    datagrams[2] = datagrams[2][:-30]  # a cut message
    datagrams.append(ptb4_msg(seq=70) + ptb4_msg(seq=71, indev=99) + ptb4_msg(seq=72, hwheader=None, hwaddr=None))
    for data in datagrams:
        assert demux.feed(data) == reference.feed(data)
    assert demux.stats() == reference.stats() and demux.lost == reference.lost == 20 + 1
    assert demux.port("eth0").drain() == reference.port("eth0").drain()
    assert demux.parser.walked <= 3

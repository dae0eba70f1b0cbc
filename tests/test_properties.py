"""Property tests: the parser, the relay and the BPF interpreter are total on hostile input."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmtud_relay.capture import bpf
from pmtud_relay.core import packet as P
from pmtud_relay.core.frame import ALL_NODES_MAC, BROADCAST_MAC
from pmtud_relay.core.packet import PTB, parse_frame
from pmtud_relay.core.policy import PACKET_BROADCAST, PACKET_HOST, PACKET_OTHERHOST, PACKET_OUTGOING, Policy, VipSet
from pmtud_relay.core.reasons import PARSE_REASONS, Reason
from pmtud_relay.core.relay import Relay, RelayConfig
from tests.support import frames as F
from tests.support.checksum import internet_checksum

FAST = settings(max_examples=1000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MEDIUM = settings(max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

PROGRAM = bpf.ptb_filter()
SRC_MAC = F.mac(F.RELAY_MAC)
CATALOGUE = F.valid_catalogue()
# Permissive enough that mutated frames can get all the way to a relay decision.
CONFIG = RelayConfig(
    policy=Policy(vips=VipSet(["192.0.2.0/24", "2001:db8::/32", "198.51.100.0/24", "203.0.113.0/24"]), floor_v4=68),
    source_burst=1e6,
    global_burst=1e6,
)


# -- strategies ------------------------------------------------------------------------


@st.composite
def mutated_frames(draw):
    """A valid PTB frame with a few bytes flipped, inserted, deleted, or the tail cut."""
    frame = bytearray(CATALOGUE[draw(st.sampled_from(sorted(CATALOGUE)))])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not frame:
            break
        at = draw(st.integers(0, len(frame) - 1))
        if op == "flip":
            frame[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            frame[at] = draw(st.integers(0, 255))
        elif op == "insert":
            frame[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del frame[at : at + draw(st.integers(1, 8))]
        else:
            del frame[at:]
    return bytes(frame)


@st.composite
def header_rewrites(draw):
    """A valid frame with header fields (not checksummed payload) overwritten with extremes.

    Rewriting lengths, IHL, next-header and extension-header length bytes is what
    drives the parser's offset arithmetic past the end of the buffer.
    """
    frame = bytearray(CATALOGUE[draw(st.sampled_from(sorted(CATALOGUE)))])
    limit = min(len(frame), 14 + 8 + 40 + 8 * 4 + 8 + 48)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(12, limit - 1))
        frame[at] = draw(st.sampled_from([0x00, 0x01, 0x02, 0x05, 0x06, 0x0F, 0x2C, 0x33, 0x3A, 0x3C, 0x45, 0x4F, 0x60,
                                          0x7F, 0x80, 0xFF]))
    return bytes(frame)


@st.composite
def quote_rewrites(draw):
    """A valid frame whose ICMP body (MTU and quoted packet) is rewritten, with the ICMP
    checksum recomputed, so the mutations reach the quoted-packet parsing."""
    name = draw(st.sampled_from(sorted(CATALOGUE)))
    frame = CATALOGUE[name]
    ptb = parse_frame(frame)
    body = bytearray(frame)
    start = ptb.icmp_offset + 4
    stop = min(len(frame), ptb.icmp_offset + 8 + 40 + 24 + 16)  # quoted headers (v6 ext) + ports
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(start, stop - 1))
        body[at] = draw(st.one_of(st.integers(0, 255),
                                  st.sampled_from([0x00, 0x02, 0x06, 0x11, 0x2C, 0x3A, 0x3C, 0x45, 0x4F, 0x60, 0x80])))
    return name, F.refresh_icmp_checksum(bytes(body), ptb.l3_offset, ptb.icmp_offset)


def _refresh_ipv4_header_checksum(frame: bytearray, l3: int) -> None:
    ihl = (frame[l3] & 0x0F) * 4
    if frame[l3] >> 4 != 4 or ihl < 20 or len(frame) < l3 + ihl:
        return
    frame[l3 + 10 : l3 + 12] = b"\0\0"
    frame[l3 + 10 : l3 + 12] = internet_checksum(bytes(frame[l3 : l3 + ihl])).to_bytes(2, "big")


# The fields the parser's fast paths read (offset from the IP header, size), per family.
_V4_FIELDS = [(0, 1), (2, 2), (6, 2), (9, 1), (20, 1), (21, 1), (26, 2), (28, 1), (30, 2), (34, 2), (37, 1), (48, 2)]
_V6_FIELDS = [(0, 1), (4, 2), (6, 1), (40, 1), (41, 1), (44, 4), (48, 1), (52, 2), (54, 1), (88, 2)]
_BYTE_VALUES = [0, 1, 2, 3, 4, 6, 17, 0x14, 0x2B, 0x2C, 0x3A, 0x3C, 0x40, 0x45, 0x46, 0x4F, 0x50, 0x60, 0x6F, 0x70,
                0x84, 0x88, 0xFF]


@st.composite
def common_layout_rewrites(draw):
    """An untagged valid frame with fields the parser's fast paths read set to boundary values
    (lengths around the layout's and the frame's size, flags, versions, protocols), the IPv4
    header checksum kept valid so the rewrite gets past it; sometimes cut or padded."""
    name = draw(st.sampled_from(["v4", "v4-udp", "v4-options", "v4-short-quote", "v6", "v6-udp", "v6-quoted-ext",
                                 "v6-hbh-dst"]))
    frame = bytearray(CATALOGUE[name])
    l3 = 14
    room = len(frame) - l3
    fields = _V4_FIELDS if name.startswith("v4") else _V6_FIELDS
    for _ in range(draw(st.integers(1, 2))):
        at, size = draw(st.sampled_from(fields))
        top = (1 << 8 * size) - 1
        if size == 1:
            near = _BYTE_VALUES
        else:
            near = [0, 1, 8, 19, 20, 21, 39, 40, 43, 44, 51, 52, 53, 91, 92, room - 41, room - 40, room - 39,
                    room - 1, room, room + 1, 0x1000, 0x1FFF, 0x2000, 0x3FFF, 0x4000, 0x8000, top]
        # Mostly boundary values (a mutated comparison differs only there), sometimes any.
        value = draw(st.sampled_from(near) if draw(st.integers(0, 3)) else st.integers(0, top)) & top
        frame[l3 + at : l3 + at + size] = value.to_bytes(size, "big")
    if draw(st.booleans()):
        del frame[draw(st.integers(14, len(frame))) :]
    elif draw(st.booleans()):
        frame += bytes(draw(st.integers(1, 64)))
    if name.startswith("v4") and len(frame) > l3:
        _refresh_ipv4_header_checksum(frame, l3)
    return bytes(frame)


arbitrary = st.binary(max_size=2000)
# Frames that at least start like Ethernet + IP, so the fuzzing reaches the deep layers.
ip_shaped = st.builds(
    lambda head, body: head + body,
    st.sampled_from(
        [
            F.mac(F.HOST_MAC) + F.mac(F.ROUTER_MAC) + b"\x08\x00",
            F.mac(F.HOST_MAC) + F.mac(F.ROUTER_MAC) + b"\x86\xdd",
            F.mac(F.HOST_MAC) + F.mac(F.ROUTER_MAC) + b"\x81\x00\x00\x01\x86\xdd",
            F.mac(F.HOST_MAC) + F.mac(F.ROUTER_MAC) + b"\x88\xa8\x00\x01\x81\x00\x00\x02\x08\x00",
        ]
    ),
    st.binary(max_size=1500),
)
inputs = st.one_of(arbitrary, ip_shaped, mutated_frames(), header_rewrites(), quote_rewrites().map(lambda c: c[1]))
pkttypes = st.sampled_from([PACKET_HOST, PACKET_HOST, PACKET_BROADCAST, PACKET_OTHERHOST, PACKET_OUTGOING])


# -- parse_frame -----------------------------------------------------------------------


def _check_parse(frame: bytes) -> None:
    result = parse_frame(frame)
    if isinstance(result, Reason):
        assert result in PARSE_REASONS
        return
    assert isinstance(result, PTB)
    assert result.frame is frame
    assert result.family in (4, 6)
    size = 4 if result.family == 4 else 16
    for addr in (result.outer_src, result.outer_dst, result.inner_src, result.inner_dst):
        assert isinstance(addr, bytes) and len(addr) == size
    assert 14 <= result.l3_offset < result.icmp_offset < len(frame)
    assert frame[result.icmp_offset] == (3 if result.family == 4 else 2)
    assert 0 <= result.proto <= 255
    assert (result.sport == -1) == (result.dport == -1)
    assert -1 <= result.sport <= 65535 and -1 <= result.dport <= 65535
    assert 0 <= result.mtu < (1 << 16 if result.family == 4 else 1 << 32)


@FAST
@given(arbitrary)
def test_parse_frame_is_total_on_arbitrary_bytes(frame):
    _check_parse(frame)


@FAST
@given(ip_shaped)
def test_parse_frame_is_total_on_ip_shaped_bytes(frame):
    _check_parse(frame)


@FAST
@given(mutated_frames())
def test_parse_frame_is_total_on_mutated_ptbs(frame):
    _check_parse(frame)


@FAST
@given(header_rewrites())
def test_parse_frame_is_total_on_rewritten_headers(frame):
    _check_parse(frame)


@MEDIUM
@given(st.sampled_from(sorted(CATALOGUE)), st.integers(0, 2000), st.binary(max_size=64))
def test_parse_frame_on_truncated_or_padded_valid_frames(name, cut, trailer):
    frame = CATALOGUE[name]
    if cut < len(frame):
        assert parse_frame(frame[:cut]) is Reason.TOO_SHORT
    else:
        padded = parse_frame(frame + trailer)
        assert isinstance(padded, PTB)
        assert padded._replace(frame=b"") == parse_frame(frame)._replace(frame=b"")


QUOTE_REASONS = {Reason.SHORT_QUOTE, Reason.BAD_INNER, Reason.INNER_ICMP_ERROR, Reason.SHORT_L4_QUOTE}


@FAST
@given(quote_rewrites())
def test_quote_rewrites_with_fixed_checksums_only_fail_on_the_quote(case):
    name, frame = case
    _check_parse(frame)
    result = parse_frame(frame)
    if isinstance(result, Reason):
        assert result in QUOTE_REASONS  # the outer layers are intact
    else:
        original = parse_frame(CATALOGUE[name])
        assert result[:3] == original[:3]  # family and outer addresses
        assert (result.l3_offset, result.icmp_offset) == (original.l3_offset, original.icmp_offset)


# -- Relay.handle ----------------------------------------------------------------------


def _check_decision(frame: bytes, pkttype: int) -> None:
    relay = Relay(CONFIG)
    decision = relay.handle(frame, 1.0, SRC_MAC, pkttype)
    assert isinstance(decision.reason, Reason)
    assert sum(relay.counts.values()) == 1 and relay.counts[decision.reason] == 1
    if decision.relay:
        assert decision.reason is Reason.RELAYED
        assert pkttype == PACKET_HOST and not frame[0] & 1
        copy = decision.copy
        assert len(copy) == len(frame)
        assert copy[12:] == frame[12:]
        assert copy[6:12] == SRC_MAC
        assert copy[:6] == (BROADCAST_MAC if decision.ptb.family == 4 else ALL_NODES_MAC)
        # The copy, received by a peer, is never relayed again.
        assert Relay(CONFIG).handle(copy, 1.0, SRC_MAC, PACKET_HOST).reason is Reason.NOT_UNICAST
    else:
        assert decision.copy is None
        assert (decision.ptb is None) == (decision.reason in PARSE_REASONS)


@FAST
@given(inputs, pkttypes)
def test_relay_handle_is_total(frame, pkttype):
    _check_decision(frame, pkttype)


@FAST
@given(mutated_frames())
def test_relay_handle_on_mutated_ptbs_as_unicast(frame):
    _check_decision(frame, PACKET_HOST)


@MEDIUM
@given(st.lists(st.tuples(st.sampled_from(sorted(CATALOGUE)), st.floats(0, 0.5)), max_size=60))
def test_relay_state_stays_consistent_over_a_stream(events):
    relay = Relay(RelayConfig(policy=CONFIG.policy, source_burst=3.0, global_burst=5.0, dedup_capacity=4,
                              source_capacity=2))
    now = 0.0
    for name, step in events:
        now += step
        decision = relay.handle(CATALOGUE[name], now, SRC_MAC)
        assert decision.reason in (
            Reason.RELAYED,
            Reason.DUPLICATE,
            Reason.RATE_LIMITED_SOURCE,
            Reason.RATE_LIMITED_GLOBAL,
        )
        assert len(relay.dedup) <= 4 and len(relay.limiter) <= 2
        assert relay.limiter._global.tokens >= 0
        assert all(tokens >= 0 for tokens, _ in relay.limiter._sources.values())
    assert sum(relay.counts.values()) == len(events)


# -- BPF interpreter -------------------------------------------------------------------


@FAST
@given(st.one_of(arbitrary, ip_shaped, mutated_frames(), header_rewrites(), quote_rewrites().map(lambda c: c[1])))
def test_bpf_run_is_total(frame):
    verdict = bpf.run(PROGRAM, frame)
    assert verdict in (0, bpf.ACCEPT_BYTES)
    if frame[:1] and frame[0] & 1:
        assert verdict == 0
    result = parse_frame(frame)
    if isinstance(result, PTB) and not frame[0] & 1:
        assert verdict == bpf.ACCEPT_BYTES  # the kernel never hides a PTB the parser would take


# -- the parser's fast paths -------------------------------------------------------------


def _same_as_general(frame: bytes) -> None:
    for l3 in (14, 18):
        assert P._ipv4(frame, l3) == P._ipv4_general(frame, l3)
        assert P._ipv6(frame, l3) == P._ipv6_general(frame, l3)


@settings(max_examples=5000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(common_layout_rewrites())
def test_fast_paths_decide_exactly_as_the_general_parser(frame):
    """_ipv4/_ipv6 read the common layouts in one struct call; for every input they must
    return what the general parser returns (equal records, or the same reason)."""
    _same_as_general(frame)


def test_fast_paths_decide_as_the_general_parser_on_every_boundary_value():
    """Exhaustive over the fields the fast paths read: each boundary value in each field of
    each common layout, whole, cut at the layout's edge, and padded."""
    for name in ("v4", "v4-udp", "v6", "v6-udp"):
        base = CATALOGUE[name]
        room = len(base) - 14
        fields = _V4_FIELDS if name.startswith("v4") else _V6_FIELDS
        for at, size in fields:
            top = (1 << 8 * size) - 1
            values = _BYTE_VALUES if size == 1 else [
                0, 1, 8, 19, 20, 21, 39, 40, 43, 44, 51, 52, 53, 91, 92, room - 41, room - 40, room - 39,
                room - 1, room, room + 1, 0x1000, 0x1FFF, 0x2000, 0x3FFF, 0x4000, 0x8000, top]
            for value in values:
                frame = bytearray(base)
                frame[14 + at : 14 + at + size] = (value & top).to_bytes(size, "big")
                for variant in (frame, frame[: 14 + 52], frame[: 14 + 92], frame[: 14 + 91], frame + bytes(8)):
                    variant = bytearray(variant)
                    if name.startswith("v4"):
                        _refresh_ipv4_header_checksum(variant, 14)
                    _same_as_general(bytes(variant))


@FAST
@given(inputs)
def test_fast_paths_decide_as_the_general_parser_on_hostile_input(frame):
    _same_as_general(frame)


@pytest.mark.parametrize("name", ["v4", "v4-udp", "v6", "v6-udp"])
def test_the_common_layouts_take_the_fast_paths(name, monkeypatch):
    # Guard for the test above: without it a fast path that never fires would pass it.
    monkeypatch.setattr(P, "_ipv4_general", None)  # calling the general parser now fails
    monkeypatch.setattr(P, "_ipv6_general", None)
    frame = CATALOGUE[name]
    ptb = P._ipv4(frame, 14) if name.startswith("v4") else P._ipv6(frame, 14)
    assert ptb == parse_frame(frame)

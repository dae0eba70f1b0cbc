"""The shared netlink walker (pmtud_relay.netlink.messages): messages, attributes, the batch fast path."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from pmtud_relay.netlink import messages as m


def msg(kind: int, seq: int, body: bytes = b"") -> bytes:
    return m.message(kind, 0, seq, body) + b"\0" * (-len(body) % 4)


def test_messages_in_order_with_their_type_sequence_and_bounds():
    data = msg(16, 1, b"abcd") + msg(2, 7, b"xyz") + msg(3, 9)
    got, clean = m.split_messages(data)
    assert clean
    assert got == [(16, 1, 0, 20), (2, 7, 20, 39), (3, 9, 40, 56)]
    assert list(m.parse_messages(data)) == [(16, data, 16, 20), (2, data, 36, 39), (3, data, 56, 56)]


def test_an_inconsistent_length_stops_the_walk_and_is_not_clean():
    good = msg(16, 1, b"abcd")
    bad = struct.pack("=IHHII", 200, 16, 0, 2, 0) + b"abcd"  # claims more than the datagram holds
    got, clean = m.split_messages(good + bad + msg(16, 3))
    assert got == [(16, 1, 0, 20)] and not clean
    got, clean = m.split_messages(good + struct.pack("=IHHII", 8, 16, 0, 2, 0))  # shorter than a header
    assert got == [(16, 1, 0, 20)] and not clean


def test_a_short_tail_is_clean_only_when_it_is_padding():
    good = msg(16, 1, b"abcd")
    assert m.split_messages(good + b"\0\0\0")[1]
    assert not m.split_messages(good + b"\0\x01")[1]


def test_attributes_mask_the_flags_and_stop_at_an_inconsistent_length():
    body = m.attr(3 | m.NLA_F_NESTED, b"eth0\0") + m.attr(4, b"\1\0\0\0") + struct.pack("=HH", 99, 5) + b"zz"
    assert list(m.attributes(body, 0, len(body))) == [(3, 4, 9), (4, 16, 20)]


def test_error_code_and_echoed_sequence():
    body = struct.pack("=i", -2) + struct.pack("=IHHII", 20, 0x401, 5, 42, 0)
    data = m.message(m.NLMSG_ERROR, 0, 1, body)
    assert m.error_code(data, 16, len(data)) == 2
    assert m.echoed_seq(data, 16, len(data)) == 42
    assert m.echoed_seq(data, 16, 20) is None and m.error_code(data, 16, 19) is None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([2, 3, 16, 0x400]), st.integers(0, 5), st.binary(max_size=12)), max_size=6),
       st.binary(max_size=6), st.integers(0, 200))
def test_the_batch_fast_path_is_the_walk_with_one_type_parsed(parts, tail, cut):
    data = b"".join(msg(k, s, b) for k, s, b in parts) + tail
    data = data[: max(0, len(data) - cut % 8)] if cut % 3 == 0 else data

    def parse(buf: bytes, start: int, end: int):
        return None if (end - start) % 8 else (start, end)  # some "malformed" ones

    parsed, failed, others, clean = m.parse_batch(data, 0x400, parse)
    walked, walk_clean = m.split_messages(data)
    mine = [(s, e) for k, _, s, e in walked if k == 0x400]
    assert parsed == [p for p in mine if (p[1] - p[0]) % 8 == 0]
    assert failed == len(mine) - len(parsed)
    assert others == [w for w in walked if w[0] != 0x400]
    assert clean == walk_clean

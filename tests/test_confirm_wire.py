"""Delivery confirmation's netlink messages as bytes (pmtud_relay/confirm/wire.py)."""

from __future__ import annotations

import random
import socket
import struct

from pmtud_relay.confirm import wire

V4_LOCAL, V4_REMOTE = socket.inet_aton("192.0.2.10"), socket.inet_aton("203.0.113.7")
V6_LOCAL = socket.inet_pton(socket.AF_INET6, "2001:db8:ffff::10")
V6_REMOTE = socket.inet_pton(socket.AF_INET6, "2001:db8:c::2")


def test_tcp_request_puts_the_local_side_in_idiag_src():
    msg = wire.diag_request(4, 6, V4_LOCAL, 443, V4_REMOTE, 50123, seq=7)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq, pid) == (len(msg), 20, 1, 7, 0)  # SOCK_DIAG_BY_FAMILY, request, no dump
    assert len(msg) == 16 + 56
    family, proto, ext, states = struct.unpack_from("=BBBxI", msg, 16)
    assert (family, proto, ext, states) == (socket.AF_INET, 6, 1 << (wire.INET_DIAG_INFO - 1), 0xFFFFFFFF)
    assert struct.unpack_from("!HH", msg, 24) == (443, 50123)
    assert msg[28:44] == V4_LOCAL + bytes(12)
    assert msg[44:60] == V4_REMOTE + bytes(12)
    assert struct.unpack_from("=III", msg, 60) == (0, wire.INET_DIAG_NOCOOKIE, wire.INET_DIAG_NOCOOKIE)


def test_udp_request_swaps_the_sides_as_udp_dump_one_reads_them():
    msg = wire.diag_request(6, 17, V6_LOCAL, 53, V6_REMOTE, 40000, seq=1)
    family, proto, ext, _ = struct.unpack_from("=BBBxI", msg, 16)
    assert (family, proto, ext) == (socket.AF_INET6, 17, 0)
    assert struct.unpack_from("!HH", msg, 24) == (40000, 53)
    assert msg[28:44] == V6_REMOTE and msg[44:60] == V6_LOCAL


def _nlmsg(kind: int, seq: int, body: bytes) -> bytes:
    pad = b"\0" * ((-len(body)) % 4)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body + pad


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * ((-len(value)) % 4)


def _diag_answer(state: int, pmtu: int | None, seq: int = 5) -> bytes:
    body = struct.pack("=BBBB", 2, state, 0, 0) + bytes(48) + struct.pack("=IIIII", 0, 0, 0, 1000, 4242)
    if pmtu is not None:
        info = bytearray(232)
        struct.pack_into("=I", info, wire.TCPI_PMTU_OFFSET, pmtu)
        body += _attr(wire.INET_DIAG_INFO, bytes(info))
    return _nlmsg(wire.SOCK_DIAG_BY_FAMILY, seq, body)


def test_answer_with_tcp_info_gives_state_uid_inode_and_pmtu():
    assert wire.parse_diag_answer(_diag_answer(1, 1400), 5) == wire.DiagAnswer(1, 1000, 4242, 1400)
    assert wire.parse_diag_answer(_diag_answer(7, None), 5) == wire.DiagAnswer(7, 1000, 4242, None)


def test_error_answer_is_the_positive_errno_and_other_sequences_are_ignored():
    err = _nlmsg(wire.NLMSG_ERROR, 5, struct.pack("=i", -2) + bytes(16))
    assert wire.parse_diag_answer(err, 5) == 2  # ENOENT: no such socket
    assert wire.parse_diag_answer(err, 6) is None
    assert wire.parse_diag_answer(_diag_answer(1, 1400, seq=4) + _diag_answer(1, 1300), 5).pmtu == 1300


def test_route_answer_gives_rtax_mtu_or_zero():
    head = struct.pack("=BBBBBBBBI", 2, 32, 32, 0, 254, 0, 0, 1, 0)
    with_mtu = _nlmsg(wire.RTM_NEWROUTE, 9, head + _attr(wire.RTA_DST, V4_REMOTE)
                      + _attr(wire.RTA_METRICS,
                              _attr(1, struct.pack("=I", 9)) + _attr(wire.RTAX_MTU, struct.pack("=I", 1400))))
    assert wire.parse_route_mtu(with_mtu, 9) == 1400
    assert wire.parse_route_mtu(_nlmsg(wire.RTM_NEWROUTE, 9, head + _attr(wire.RTA_DST, V4_REMOTE)), 9) == 0
    assert wire.parse_route_mtu(_nlmsg(wire.NLMSG_ERROR, 9, struct.pack("=i", -101) + bytes(16)), 9) is None
    req = wire.route_request(4, V4_LOCAL, V4_REMOTE, 9)
    assert struct.unpack_from("=IHHII", req)[:4] == (len(req), wire.RTM_GETROUTE, 1, 9)
    assert _attr(wire.RTA_DST, V4_REMOTE) in req and _attr(wire.RTA_SRC, V4_LOCAL) in req


def test_decoders_are_total():
    rng = random.Random(17)
    samples = [_diag_answer(1, 1400), _nlmsg(wire.NLMSG_ERROR, 5, struct.pack("=i", -2))]
    for _ in range(3000):
        base = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 4)):
            base[rng.randrange(len(base))] = rng.randrange(256)
        data = bytes(base[: rng.randint(0, len(base))])
        wire.parse_diag_answer(data, 5)
        wire.parse_route_mtu(data, 5)

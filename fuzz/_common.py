"""Shared by the fuzz targets: the relay configuration under test and an independent, naive
re-check of everything the relay promises about a frame it decided to relay.

The re-check does not call the code under test: it walks the headers again with plain loops and
``ipaddress``, so a parser bug that lets an invalid PTB through fails the target.
"""

from __future__ import annotations

import ipaddress
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

#: The seeds (tests/support/frames.py and nflog.py, bench/frames.py) quote these.
VIP_NETWORKS = ["192.0.2.10/32", "2001:db8:2::10/128", "2001:db8:ffff::10/128", "192.0.2.128/28",
                "2001:db8:ffff:1::/64"]
_VIPS = [ipaddress.ip_network(n) for n in VIP_NETWORKS]
FLOOR_V4, FLOOR_V6 = 552, 1280
SRC_MAC = bytes.fromhex("00005e005303")
BROADCAST = b"\xff" * 6
ALL_NODES = bytes.fromhex("333300000001")
SMALL_TABLES = 64  # dedup keys and rate-limit sources: small, so eviction paths run too


def relay_config():
    from pmtud_relay.core.policy import Policy, VipSet
    from pmtud_relay.core.relay import RelayConfig

    return RelayConfig(policy=Policy(vips=VipSet(VIP_NETWORKS), floor_v4=FLOOR_V4, floor_v6=FLOOR_V6),
                       dedup_capacity=SMALL_TABLES, source_capacity=SMALL_TABLES,
                       source_rate=5.0, source_burst=3.0, global_rate=300.0, global_burst=50.0)


def is_vip(addr: bytes) -> bool:
    ip = ipaddress.ip_address(addr)
    return any(ip in net for net in _VIPS)


def naive_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += data[i] << 8 | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def verifies(s: int) -> bool:
    return (s & 0xFFFF) == 0xFFFF


def check_ptb_packet(pkt: bytes, l3: int, frame_len: int) -> tuple[int, int, bytes, bytes, int, int]:
    """Re-check an IP packet starting at ``l3`` that the relay accepted as a PTB. Returns
    (family, mtu, outer_dst, quoted_src, quoted_length, icmp_offset); AssertionError if it is not
    a valid, checksummed, unfragmented ICMPv4 3/4 or ICMPv6 2/0 with a quoted IP header."""
    v = pkt[l3] >> 4
    if v == 4:
        ihl = (pkt[l3] & 0xF) * 4
        total = pkt[l3 + 2] << 8 | pkt[l3 + 3]
        assert ihl >= 20 and ihl <= total and l3 + total <= frame_len, "bad IPv4 lengths"
        assert verifies(naive_sum(pkt[l3:l3 + ihl])), "IPv4 header checksum"
        frag = (pkt[l3 + 6] << 8 | pkt[l3 + 7]) & 0x3FFF
        assert frag == 0, "outer fragment relayed"
        assert pkt[l3 + 9] == 1, "not ICMP"
        icmp, end = l3 + ihl, l3 + total
        assert pkt[icmp] == 3 and pkt[icmp + 1] == 4, "not 3/4"
        assert verifies(naive_sum(pkt[icmp:end])), "ICMP checksum"
        mtu = pkt[icmp + 6] << 8 | pkt[icmp + 7]
        q = icmp + 8
        assert end - q >= 20 and pkt[q] >> 4 == 4, "quoted header"
        qihl = (pkt[q] & 0xF) * 4
        assert qihl >= 20 and end - q >= qihl, "quoted IHL"
        qlen = pkt[q + 2] << 8 | pkt[q + 3]
        # ICMP about an ICMP error: only visible in a first fragment with the type quoted
        qfrag = (pkt[q + 6] << 8 | pkt[q + 7]) & 0x1FFF
        if pkt[q + 9] == 1 and qfrag == 0 and end > q + qihl:
            assert pkt[q + qihl] not in (3, 4, 5, 11, 12), "ICMP error about an ICMP error relayed"
        return 4, mtu, pkt[l3 + 16:l3 + 20], pkt[q + 12:q + 16], qlen, icmp
    assert v == 6, "not IP"
    plen = pkt[l3 + 4] << 8 | pkt[l3 + 5]
    end = l3 + 40 + plen
    assert plen and end <= frame_len, "bad IPv6 length"
    nh, off = pkt[l3 + 6], l3 + 40
    for _ in range(9):
        if nh == 58:
            break
        if nh in (0, 43, 60):
            nh, off = pkt[off], off + (pkt[off + 1] + 1) * 8
        elif nh == 44:
            fo = (pkt[off + 2] << 8 | pkt[off + 3]) & 0xFFF9
            assert fo == 0, "outer fragment relayed"
            nh, off = pkt[off], off + 8
        elif nh == 51:
            nh, off = pkt[off], off + (pkt[off + 1] + 2) * 4
        else:
            raise AssertionError(f"next header {nh} relayed")
    assert nh == 58, "no ICMPv6"
    icmp = off
    assert end - icmp >= 8 and pkt[icmp] == 2 and pkt[icmp + 1] == 0, "not 2/0"
    pseudo = pkt[l3 + 8:l3 + 40] + (end - icmp).to_bytes(4, "big") + b"\0\0\0\x3a"
    assert verifies(naive_sum(pseudo + pkt[icmp:end])), "ICMPv6 checksum"
    mtu = int.from_bytes(pkt[icmp + 4:icmp + 8], "big")
    q = icmp + 8
    assert end - q >= 40 and pkt[q] >> 4 == 6, "quoted header"
    qlen = 40 + (pkt[q + 4] << 8 | pkt[q + 5])
    return 6, mtu, pkt[l3 + 24:l3 + 40], pkt[q + 8:q + 24], qlen, icmp


def check_relayed_frame(frame: bytes, decision, pkttype: int, src_mac: bytes = SRC_MAC) -> None:
    """Everything a relayed decision promises, re-checked from the bytes."""
    from pmtud_relay.core.reasons import Reason

    assert decision.reason is Reason.RELAYED and decision.copy is not None
    assert pkttype == 0 and not frame[0] & 1, "relayed a frame not unicast to this host"
    copy = decision.copy
    assert copy[12:] == frame[12:], "the copy changed more than the MAC addresses"
    assert copy[6:12] == src_mac
    # Ethernet, up to two tags
    off, etype, tags = 14, frame[12] << 8 | frame[13], 0
    while etype in (0x8100, 0x88A8):
        tags += 1
        assert tags <= 2
        etype, off = frame[off + 2] << 8 | frame[off + 3], off + 4
    assert etype in (0x0800, 0x86DD)
    family, mtu, outer_dst, quoted_src, qlen, _ = check_ptb_packet(frame, off, len(frame))
    assert (etype == 0x0800) == (family == 4), "EtherType and IP version disagree"
    assert copy[:6] == (BROADCAST if family == 4 else ALL_NODES)
    assert outer_dst == quoted_src, "PTB not about a packet its destination sent"
    assert is_vip(quoted_src), "quoted source not a VIP"
    assert (FLOOR_V4 if family == 4 else FLOOR_V6) <= mtu < qlen, "MTU out of range"

#: Peer protocol test keys (ids 1 and 2) and the receiver's wall clock at the first input.
PEER_KEYS = {1: bytes(range(32)), 2: bytes(range(100, 132))}
PEER_START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def fix_checksums(frame: bytes, l3: int | None = None) -> bytes:
    """Recompute the outer IPv4 header checksum and the ICMP/ICMPv6 checksum wherever the layout
    allows, so mutations reach past the checksum checks into the quoted packet. ``l3``: the IP
    header's offset (None: after an Ethernet header with up to two VLAN tags). Never raises."""
    f = bytearray(frame)
    try:
        if l3 is None:
            off, etype, tags = 14, f[12] << 8 | f[13], 0
            while etype in (0x8100, 0x88A8) and tags < 2:
                etype, off, tags = f[off + 2] << 8 | f[off + 3], off + 4, tags + 1
            l3 = off
        v = f[l3] >> 4
        if v == 4:
            ihl = (f[l3] & 0xF) * 4
            total = f[l3 + 2] << 8 | f[l3 + 3]
            if ihl < 20 or l3 + ihl > len(f):
                return bytes(f)
            f[l3 + 10:l3 + 12] = b"\0\0"
            f[l3 + 10:l3 + 12] = (~naive_sum(bytes(f[l3:l3 + ihl])) & 0xFFFF).to_bytes(2, "big")
            icmp, end = l3 + ihl, min(len(f), l3 + total)
            if f[l3 + 9] == 1 and end - icmp >= 8:
                f[icmp + 2:icmp + 4] = b"\0\0"
                f[icmp + 2:icmp + 4] = (~naive_sum(bytes(f[icmp:end])) & 0xFFFF).to_bytes(2, "big")
        elif v == 6:
            end = min(len(f), l3 + 40 + (f[l3 + 4] << 8 | f[l3 + 5]))
            nh, off = f[l3 + 6], l3 + 40
            for _ in range(9):
                if nh == 58 or off + 8 > end:
                    break
                if nh in (0, 43, 60):
                    nh, off = f[off], off + (f[off + 1] + 1) * 8
                elif nh == 44:
                    nh, off = f[off], off + 8
                elif nh == 51:
                    nh, off = f[off], off + (f[off + 1] + 2) * 4
                else:
                    break
            if nh == 58 and end - off >= 8:
                f[off + 2:off + 4] = b"\0\0"
                pseudo = bytes(f[l3 + 8:l3 + 40]) + (end - off).to_bytes(4, "big") + b"\0\0\0\x3a"
                f[off + 2:off + 4] = (~naive_sum(pseudo + bytes(f[off:end])) & 0xFFFF).to_bytes(2, "big")
    except IndexError:
        pass
    return bytes(f)

"""nfnetlink_log messages built by hand (nlmsghdr in host order, nfgenmsg and attribute payloads
in network order), independently of pmtud_relay.nflog's own builders, with the PTB packets they
carry (stdlib only, from :mod:`tests.support.wire`)."""

from __future__ import annotations

import socket
import struct

from tests.support import wire

HOST_MAC = bytes.fromhex("00005e005302")
ROUTER_MAC = bytes.fromhex("00005e005301")
VIP4, CLIENT4, ROUTER4 = "192.0.2.10", "203.0.113.7", "198.51.100.1"
VIP6, CLIENT6, ROUTER6 = "2001:db8:2::10", "2001:db8:3::7", "2001:db8:1::1"
IFINDEX = 7


# --- packets ------------------------------------------------------------------------------------
def ptb4_packet(outer_src: str = ROUTER4, mtu: int = 1400, sport: int = 443, dport: int = 51000) -> bytes:
    """IPv4 + ICMP 3/4 quoting a 1500-byte TCP packet VIP4 → CLIENT4 (IP header + 8 bytes)."""
    return wire.ptb4_packet(outer_src, VIP4, mtu, wire.quoted_v4(VIP4, CLIENT4, wire.tcp(sport, dport, 12345,
                                                                                          full=False)))


def ptb6_packet(outer_src: str = ROUTER6, mtu: int = 1280, sport: int = 443, dport: int = 51000) -> bytes:
    return wire.ptb6_packet(outer_src, VIP6, mtu, wire.quoted_v6(VIP6, CLIENT6, wire.tcp(sport, dport, 12345,
                                                                                          full=False)))


def eth(dst: bytes, src: bytes, etype: int) -> bytes:
    """An Ethernet header (what NFULA_HWHEADER carries)."""
    return wire.ethernet(dst, src, etype, b"")


# --- netlink ------------------------------------------------------------------------------------
def nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def nlmsg(kind: int, body: bytes, seq: int = 0, flags: int = 0) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def packet_msg(attrs: list[bytes], group: int = 2105, family: int = socket.AF_INET) -> bytes:
    return nlmsg(0x0400, struct.pack("!BBH", family, 0, group) + b"".join(attrs))


def attrs_for(payload: bytes, *, hw_protocol: int = 0x0800, hook: int = 0, indev: int | None = IFINDEX,
              hwheader: bytes | None = None, hwaddr: bytes | None = ROUTER_MAC, hwtype: int | None = 1,
              hwlen: int | None = 14, seq: int | None = 0, prefix: bytes | None = None,
              timestamp: tuple[int, int] | None = None) -> list[bytes]:
    out = [nla(1, struct.pack("!HBx", hw_protocol, hook))]
    if indev is not None:
        out.append(nla(4, struct.pack("!I", indev)))
    if hwaddr is not None:
        out.append(nla(8, struct.pack("!HH", len(hwaddr), 0) + hwaddr.ljust(8, b"\0")))
    if hwtype is not None:
        out.append(nla(15, struct.pack("!H", hwtype)))
    if hwlen is not None:
        out.append(nla(17, struct.pack("!H", hwlen)))
    if hwheader is not None:
        out.append(nla(16, hwheader))
    if timestamp is not None:
        out.append(nla(3, struct.pack("!QQ", *timestamp)))
    if prefix is not None:
        out.append(nla(10, prefix + b"\0"))
    if seq is not None:
        out.append(nla(12, struct.pack("!I", seq)))
    out.append(nla(9, payload))
    return out


def ptb4_msg(**kw) -> bytes:
    payload = kw.pop("payload", None) or ptb4_packet()
    kw.setdefault("hwheader", eth(HOST_MAC, ROUTER_MAC, 0x0800))
    return packet_msg(attrs_for(payload, **kw))


def ptb6_msg(**kw) -> bytes:
    payload = kw.pop("payload", None) or ptb6_packet()
    kw.setdefault("hwheader", eth(HOST_MAC, ROUTER_MAC, 0x86DD))
    kw.setdefault("hw_protocol", 0x86DD)
    return packet_msg(attrs_for(payload, **kw), family=socket.AF_INET6)

"""PTB frame builders for the benchmarks (standard library only).

Addresses are documentation ones only: 192.0.2.0/24 (VIPs), 198.51.100.0/24 and
2001:db8:1::/48 (routers), 203.0.113.0/24 and 2001:db8:3::/48 (clients); MACs from
00-00-5E-00-53-00/24 (RFC 7042). Quotes are Linux-sized: an ICMPv4 error is at most
576 bytes of IP, an ICMPv6 error at most 1280, which is what a Linux router sends and
what the lab's router produces, so checksum cost is realistic.
"""

from __future__ import annotations

import ipaddress
import random
import struct

VIP4 = "192.0.2.10"
VIP6 = "2001:db8:ffff::10"
NOT_VIP4 = "192.0.2.99"
NOT_VIP6 = "2001:db8:ffff::99"
ROUTER_MAC = bytes.fromhex("00005e005301")
RELAY_MAC = bytes.fromhex("00005e005302")  # the relay's interface (overridden in netns runs)
SERVICE_PORT = 443


_PATTERN = bytes(range(256)) * 64


def csum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip4(a: str | int) -> bytes:
    return ipaddress.IPv4Address(a).packed


def ip6(a: str | int) -> bytes:
    return ipaddress.IPv6Address(a).packed


def _ipv4_header(src: bytes, dst: bytes, proto: int, total: int, ident: int = 0, frag: int = 0x4000,
                 ttl: int = 64) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident, frag, ttl, proto, 0, src, dst)
    return h[:10] + struct.pack("!H", csum(h)) + h[12:]


def original4(src: bytes, dst: bytes, sport: int, dport: int, seq: int = 0x01020304, length: int = 1500) -> bytes:
    """The full packet the server sent (TCP, ``length`` bytes)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0x05060708, 5 << 4, 0x10, 65535, 0, 0)
    payload = _PATTERN[: length - 40]
    return _ipv4_header(src, dst, 6, length) + tcp + payload


def original6(src: bytes, dst: bytes, sport: int, dport: int, seq: int = 0x01020304, length: int = 1500) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0x05060708, 5 << 4, 0x10, 65535, 0, 0)
    payload = _PATTERN[: length - 60]
    return struct.pack("!IHBB16s16s", 6 << 28, length - 40, 6, 64, src, dst) + tcp + payload


def ptb4(router: bytes, vip: bytes, client: bytes, sport: int, dport: int, mtu: int = 1400, *,
         outer_dst: bytes | None = None, quote_ip_len: int = 576, dst_mac: bytes = RELAY_MAC,
         src_mac: bytes = ROUTER_MAC, seq: int = 0x01020304, icmp_type: int = 3, icmp_code: int = 4) -> bytes:
    quote = original4(vip, client, sport, dport, seq)[: quote_ip_len - 28]
    icmp = struct.pack("!BBHHH", icmp_type, icmp_code, 0, 0, mtu) + quote
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    ip = _ipv4_header(router, outer_dst if outer_dst is not None else vip, 1, 20 + len(icmp))
    return dst_mac + src_mac + b"\x08\x00" + ip + icmp


def ptb6(router: bytes, vip: bytes, client: bytes, sport: int, dport: int, mtu: int = 1280, *,
         outer_dst: bytes | None = None, quote_ip_len: int = 1280, dst_mac: bytes = RELAY_MAC,
         src_mac: bytes = ROUTER_MAC, seq: int = 0x01020304) -> bytes:
    dst = outer_dst if outer_dst is not None else vip
    quote = original6(vip, client, sport, dport, seq)[: quote_ip_len - 48]
    icmp = struct.pack("!BBHI", 2, 0, 0, mtu) + quote
    pseudo = router + dst + struct.pack("!IxxxB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", csum(pseudo + icmp)) + icmp[4:]
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), 58, 64, router, dst)
    return dst_mac + src_mac + b"\x86\xdd" + ip + icmp


def router4(i: int) -> bytes:
    return ip4(f"198.51.100.{1 + i % 250}")


def router6(i: int) -> bytes:
    return ip6(int(ipaddress.IPv6Address("2001:db8:1::")) + 1 + i)


def client4(i: int) -> bytes:
    return ip4(f"203.0.113.{1 + i % 250}")


def client6(i: int) -> bytes:
    return ip6(int(ipaddress.IPv6Address("2001:db8:3::")) + 1 + i)


def valid(i: int, family: int, *, router: int | None = None, dst_mac: bytes = RELAY_MAC,
          seq: int = 0x01020304) -> bytes:
    """Valid PTB number ``i``: a distinct flow per ``i`` (client address and port)."""
    r = i if router is None else router
    port = 1024 + (i // 250) % 64000
    if family == 4:
        return ptb4(router4(r), ip4(VIP4), client4(i), SERVICE_PORT, port, dst_mac=dst_mac, seq=seq)
    return ptb6(router6(r), ip6(VIP6), client6(i), SERVICE_PORT, port, dst_mac=dst_mac, seq=seq)


MIX = {  # share of each kind in the realistic mix
    "valid_v4": 0.30,
    "valid_v6": 0.20,
    "duplicate": 0.20,
    "spoofed": 0.20,
    "malformed": 0.10,
}


def realistic_mix(n: int, seed: int = 1) -> tuple[list[bytes], dict[str, int]]:
    """``n`` frames: valid v4/v6 (distinct flows), duplicates of recent valid ones,
    spoofed (well formed but not ours, or a bad checksum) and malformed frames."""
    rnd = random.Random(seed)
    kinds = list(MIX)
    weights = [MIX[k] for k in kinds]
    out: list[bytes] = []
    counts = dict.fromkeys(kinds, 0)
    recent: list[bytes] = []
    templates_spoof = [
        ptb4(router4(7), ip4(NOT_VIP4), client4(3), SERVICE_PORT, 4000),  # quoted src is no VIP
        ptb6(router6(7), ip6(NOT_VIP6), client6(3), SERVICE_PORT, 4000),
        ptb4(router4(8), ip4(VIP4), client4(4), SERVICE_PORT, 4001, outer_dst=ip4("192.0.2.11")),  # dst != quoted src
        ptb6(router6(8), ip6(VIP6), client6(4), SERVICE_PORT, 4001, outer_dst=ip6("2001:db8:ffff::11")),
    ]
    good4 = ptb4(router4(9), ip4(VIP4), client4(5), SERVICE_PORT, 4002)
    bad_csum4 = good4[:-1] + bytes([good4[-1] ^ 0xFF])
    good6 = ptb6(router6(9), ip6(VIP6), client6(5), SERVICE_PORT, 4002)
    bad_csum6 = good6[:-1] + bytes([good6[-1] ^ 0xFF])
    templates_spoof += [bad_csum4, bad_csum6]
    echo = ptb4(router4(10), ip4(VIP4), client4(6), SERVICE_PORT, 4003, icmp_type=8, icmp_code=0)
    malformed = [
        good4[:40],  # truncated inside ICMP
        good6[:60],
        good4[:14] + bytes([0x65]) + good4[15:],  # IP version 6 in an IPv4 ethertype
        echo,  # not a PTB
        good4[:12] + b"\x08\x06" + good4[14:],  # ARP ethertype
        good4[:5],
    ]
    nv = 0
    for _ in range(n):
        kind = rnd.choices(kinds, weights)[0]
        if kind == "duplicate" and not recent:
            kind = "valid_v4"
        counts[kind] += 1
        if kind == "valid_v4" or kind == "valid_v6":
            f = valid(nv, 4 if kind == "valid_v4" else 6)
            nv += 1
            recent.append(f)
            if len(recent) > 64:
                recent.pop(0)
        elif kind == "duplicate":
            f = rnd.choice(recent)
        elif kind == "spoofed":
            f = rnd.choice(templates_spoof)
        else:
            f = rnd.choice(malformed)
        out.append(f)
    return out, counts

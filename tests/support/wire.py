"""The stdlib frame builder: Ethernet (with VLAN tags), IPv4/IPv6, ICMP PTBs quoting TCP/UDP.

Standard library only, so it also runs inside namespaces (``ns_programs``). Every checksum that
is not deliberately left out is correct (computed by :mod:`tests.support.checksum`). The quoted
packet is what the server sent, cut where the router cut it: its IP header (total length of the
full packet, ``length``) and the first bytes of its transport header.
"""

from __future__ import annotations

import ipaddress
import struct

from tests.support.checksum import internet_checksum, pseudo_header_v6

ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 1, 6, 17, 58


def mac(text: str | bytes) -> bytes:
    """``"02:00:00:00:05:01"`` (or six bytes already) as six bytes."""
    return text if isinstance(text, bytes) else bytes.fromhex(text.replace(":", ""))


def addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def ethernet(dst: str | bytes, src: str | bytes, ethertype: int, payload: bytes, vlans: tuple = ()) -> bytes:
    """An Ethernet frame; ``vlans`` lists (TPID, VID) tags outermost first."""
    tags = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in vlans)
    return mac(dst) + mac(src) + tags + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, total: int | None = None, ttl: int = 64,
         tos: int = 0, ident: int = 1, df: bool = True) -> bytes:
    """An IPv4 header (no options, correct header checksum) and ``payload``; ``total`` overrides
    the total length (a quoted packet carries the length of the whole packet)."""
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, tos, total or 20 + len(payload), ident, 0x4000 if df else 0, ttl,
                      proto, 0, addr(src), addr(dst))
    return hdr[:10] + struct.pack("!H", internet_checksum(hdr)) + hdr[12:] + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, *, plen: int | None = None,
         hlim: int = 64) -> bytes:
    """An IPv6 header and ``payload``; ``plen`` overrides the payload length."""
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload) if plen is None else plen, next_header, hlim,
                       addr(src), addr(dst)) + payload


def tcp(sport: int, dport: int, seq: int = 1, *, ack: int = 0, flags: int = 0x10, full: bool = True) -> bytes:
    """A TCP header (checksum 0: a quote is never checked past its first 8 bytes); ``full=False``
    gives only the first 8 bytes (ports and sequence number), the least a router quotes."""
    head = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    return head if full else head[:8]


def udp(sport: int, dport: int, length: int = 8) -> bytes:
    return struct.pack("!HHHH", sport, dport, length, 0)


def quoted_v4(src: str, dst: str, l4: bytes, *, proto: int = IPPROTO_TCP, length: int = 1500) -> bytes:
    """The start of the ``length``-byte IPv4 packet a server sent (DF set): header and ``l4``."""
    return ipv4(src, dst, proto, l4, total=length)


def quoted_v6(src: str, dst: str, l4: bytes, *, next_header: int = IPPROTO_TCP, length: int = 1500) -> bytes:
    return ipv6(src, dst, next_header, l4, plen=length - 40)


def icmp4(icmp_type: int, code: int, rest: bytes, body: bytes) -> bytes:
    """An ICMPv4 message with its checksum; ``rest`` is the 4 bytes after the checksum."""
    msg = struct.pack("!BBH", icmp_type, code, 0) + rest + body
    return msg[:2] + struct.pack("!H", internet_checksum(msg)) + msg[4:]


def icmp6(src: str, dst: str, icmp_type: int, code: int, rest: bytes, body: bytes) -> bytes:
    """An ICMPv6 message with its checksum over the pseudo-header of ``src`` -> ``dst``."""
    msg = struct.pack("!BBH", icmp_type, code, 0) + rest + body
    csum = internet_checksum(pseudo_header_v6(addr(src), addr(dst), len(msg), IPPROTO_ICMPV6) + msg)
    return msg[:2] + struct.pack("!H", csum) + msg[4:]


def ptb4_packet(outer_src: str, outer_dst: str, mtu: int, quote: bytes, *, tos: int = 0, ident: int = 1,
                df: bool = True) -> bytes:
    """IPv4 + ICMP "fragmentation needed" (3/4) with next-hop MTU ``mtu``, quoting ``quote``."""
    return ipv4(outer_src, outer_dst, IPPROTO_ICMP, icmp4(3, 4, struct.pack("!HH", 0, mtu), quote), tos=tos,
                ident=ident, df=df)


def ptb6_packet(outer_src: str, outer_dst: str, mtu: int, quote: bytes) -> bytes:
    """IPv6 + ICMPv6 "packet too big" (2/0) with MTU ``mtu``, quoting ``quote``."""
    return ipv6(outer_src, outer_dst, IPPROTO_ICMPV6,
                icmp6(outer_src, outer_dst, 2, 0, struct.pack("!I", mtu), quote))


def ptb_frame(eth_dst: str | bytes, eth_src: str | bytes, packet: bytes, vlans: tuple = ()) -> bytes:
    """``packet`` (IPv4 or IPv6, told by its version nibble) in an Ethernet frame."""
    return ethernet(eth_dst, eth_src, ETH_P_IP if packet[0] >> 4 == 4 else ETH_P_IPV6, packet, vlans)


def flow_ptb_frame(family: int, eth_dst: str | bytes, eth_src: str | bytes, *, outer_src: str, vip: str,
                   client: str, sport: int, dport: int, mtu: int, proto: str = "tcp", seq: int = 1, ack: int = 0,
                   tcp_flags: int = 0x10, full_l4: bool = False, inner_src: str | None = None,
                   vlans: tuple = ()) -> bytes:
    """The common case: a PTB to ``vip`` quoting a 1500-byte TCP (or UDP) packet
    ``inner_src:sport -> client:dport`` (``inner_src`` defaults to ``vip``); ``full_l4`` quotes the
    whole TCP header, not only its first 8 bytes."""
    if proto == "tcp":
        l4, number = tcp(sport, dport, seq, ack=ack, flags=tcp_flags, full=full_l4), IPPROTO_TCP
    else:
        l4, number = udp(sport, dport, 1500 - (20 if family == 4 else 40)), IPPROTO_UDP
    src = inner_src or vip
    if family == 4:
        packet = ptb4_packet(outer_src, vip, mtu, quoted_v4(src, client, l4, proto=number))
    else:
        packet = ptb6_packet(outer_src, vip, mtu, quoted_v6(src, client, l4, next_header=number))
    return ptb_frame(eth_dst, eth_src, packet, vlans)

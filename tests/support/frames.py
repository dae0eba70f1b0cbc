"""Byte fixtures for the unit tests, built with scapy (tests only: the core never imports it).

Every builder returns ``bytes``. Checksums are computed by scapy at ``raw()`` time, so a
fixture is valid unless a test corrupts it on purpose (see :func:`set_bytes`). The quoted
packet is always built on its own first (with its own correct checksums and lengths, as
the server sent it), truncated to what the router quoted, and only then wrapped in the
ICMP message, exactly like a router does.

Only documentation addresses are used: 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
2001:db8::/32, and MAC addresses from 00-00-5E-00-53-00/24 (RFC 7042).
"""

from __future__ import annotations

import ipaddress
import logging
import struct

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether  # noqa: E402
from scapy.layers.sctp import SCTP  # noqa: E402
from scapy.packet import Packet, Raw, raw  # noqa: E402

from tests.support.checksum import internet_checksum  # noqa: E402

# -- addresses ---------------------------------------------------------------------
ROUTER_MAC = "00:00:5e:00:53:01"  # the router that sends the PTB
HOST_MAC = "00:00:5e:00:53:02"  # this host (the relay)
RELAY_MAC = "00:00:5e:00:53:03"  # MAC the copy is sent from (src_mac passed to Relay.handle)
BROADCAST = "ff:ff:ff:ff:ff:ff"
MCAST_ALL_NODES = "33:33:00:00:00:01"

ROUTER4 = "198.51.100.1"  # sends the PTB
VIP4 = "192.0.2.10"  # service address: source of the big packet, destination of the PTB
VIP4_OTHER = "192.0.2.11"
CLIENT4 = "203.0.113.7"

ROUTER6 = "2001:db8:1::1"
VIP6 = "2001:db8:2::10"
VIP6_OTHER = "2001:db8:2::11"
CLIENT6 = "2001:db8:3::7"

SERVICE_PORT = 443
CLIENT_PORT = 51000

IPPROTO_UDPLITE = 136


def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


# -- quoted (original) packets ------------------------------------------------------
def _l4(proto: str, sport: int, dport: int, v6: bool) -> Packet | bytes:
    if proto == "tcp":
        return TCP(sport=sport, dport=dport, flags="A", seq=0x01020304, ack=0x05060708)
    if proto == "udp":
        return UDP(sport=sport, dport=dport)
    if proto == "sctp":
        return SCTP(sport=sport, dport=dport, tag=0x0A0B0C0D)
    if proto == "udplite":  # scapy has no UDP-Lite layer: same first 8 bytes as UDP
        return struct.pack("!HHHH", sport, dport, 8, 0)
    if proto == "icmp-echo":
        return ICMPv6EchoRequest(id=7, seq=1) if v6 else ICMP(type=8, id=7, seq=1)
    raise ValueError(proto)


def original_v4(
    *,
    src: str = VIP4,
    dst: str = CLIENT4,
    proto: str | Packet | bytes = "tcp",
    sport: int = SERVICE_PORT,
    dport: int = CLIENT_PORT,
    length: int = 1500,
    **ip_fields,
) -> bytes:
    """The full packet the server sent (``length`` bytes, correct checksums)."""
    l4 = _l4(proto, sport, dport, False) if isinstance(proto, str) else proto
    if isinstance(l4, bytes):
        l4 = Raw(l4)
    if "proto" not in ip_fields and isinstance(proto, str) and proto == "udplite":
        ip_fields["proto"] = IPPROTO_UDPLITE
    pkt = IP(src=src, dst=dst, **ip_fields) / l4
    pad = length - len(raw(pkt))
    if pad > 0:
        pkt = pkt / Raw(bytes(range(256)) * (pad // 256) + bytes(range(pad % 256)))
    return raw(pkt)


def original_v6(
    *,
    src: str = VIP6,
    dst: str = CLIENT6,
    proto: str | Packet | bytes = "tcp",
    sport: int = SERVICE_PORT,
    dport: int = CLIENT_PORT,
    length: int = 1500,
    ext: tuple = (),
    **ip_fields,
) -> bytes:
    """The full IPv6 packet the server sent, optionally with extension headers."""
    l4 = _l4(proto, sport, dport, True) if isinstance(proto, str) else proto
    if isinstance(l4, bytes):
        l4 = Raw(l4)
    if "nh" not in ip_fields and not ext and isinstance(proto, str) and proto == "udplite":
        ip_fields["nh"] = IPPROTO_UDPLITE
    pkt = IPv6(src=src, dst=dst, **ip_fields)
    for header in ext:
        pkt = pkt / header
    pkt = pkt / l4
    pad = length - len(raw(pkt))
    if pad > 0:
        pkt = pkt / Raw(bytes(range(256)) * (pad // 256) + bytes(range(pad % 256)))
    return raw(pkt)


# -- PTB frames ----------------------------------------------------------------------
def _ether(dst_mac: str, src_mac: str, vlans: tuple) -> Packet:
    """Ethernet header plus VLAN tags; ``vlans`` lists (tpid, vid) outermost first."""
    pkt = Ether(dst=dst_mac, src=src_mac)
    for tpid, vid in vlans:
        pkt = pkt / (Dot1AD(vlan=vid) if tpid == 0x88A8 else Dot1Q(vlan=vid))
    return pkt


def ptb_v4(
    *,
    mtu: int = 1400,
    quote: bytes | None = None,
    quote_len: int = 128,
    outer_src: str = ROUTER4,
    outer_dst: str = VIP4,
    dst_mac: str = HOST_MAC,
    src_mac: str = ROUTER_MAC,
    vlans: tuple = (),
    icmp_type: int = 3,
    icmp_code: int = 4,
    ip_fields: dict | None = None,
    icmp_fields: dict | None = None,
    trailer: bytes = b"",
    **original,
) -> bytes:
    """An Ethernet frame carrying an ICMPv4 Fragmentation Needed (3/4) message.

    ``quote`` defaults to the first ``quote_len`` bytes of :func:`original_v4` (``original``
    keyword arguments are passed to it). ``trailer`` is appended after the IP packet
    (Ethernet padding). ``ip_fields``/``icmp_fields`` override outer header fields.
    """
    if quote is None:
        quote = original_v4(**original)[:quote_len]
    icmp_kw = {"type": icmp_type, "code": icmp_code}
    if icmp_type == 3 and icmp_code == 4:
        icmp_kw["nexthopmtu"] = mtu
    icmp_kw.update(icmp_fields or {})
    pkt = (
        _ether(dst_mac, src_mac, vlans)
        / IP(src=outer_src, dst=outer_dst, **(ip_fields or {}))
        / ICMP(**icmp_kw)
        / Raw(quote)
    )
    return raw(pkt) + trailer


def ptb_v6(
    *,
    mtu: int = 1280,
    quote: bytes | None = None,
    quote_len: int = 256,
    outer_src: str = ROUTER6,
    outer_dst: str = VIP6,
    dst_mac: str = HOST_MAC,
    src_mac: str = ROUTER_MAC,
    vlans: tuple = (),
    outer_ext: tuple = (),
    icmp: Packet | None = None,
    ip_fields: dict | None = None,
    trailer: bytes = b"",
    **original,
) -> bytes:
    """An Ethernet frame carrying an ICMPv6 Packet Too Big (2/0) message.

    ``outer_ext`` are extension headers between the outer IPv6 header and ICMPv6;
    ``icmp`` replaces the ICMPv6 PTB header (to build other ICMPv6 messages).
    """
    if quote is None:
        quote = original_v6(**original)[:quote_len]
    pkt = _ether(dst_mac, src_mac, vlans) / IPv6(src=outer_src, dst=outer_dst, **(ip_fields or {}))
    for header in outer_ext:
        pkt = pkt / header
    pkt = pkt / (icmp if icmp is not None else ICMPv6PacketTooBig(mtu=mtu)) / Raw(quote)
    return raw(pkt) + trailer


def arp_frame(dst_mac: str = HOST_MAC) -> bytes:
    return raw(Ether(dst=dst_mac, src=ROUTER_MAC) / ARP(psrc=ROUTER4, pdst=VIP4, hwsrc=ROUTER_MAC))


def echo_v4(dst_mac: str = HOST_MAC) -> bytes:
    return raw(Ether(dst=dst_mac, src=ROUTER_MAC) / IP(src=ROUTER4, dst=VIP4) / ICMP(type=8, id=1, seq=1)
               / Raw(b"ping" * 8))


def echo_v6(dst_mac: str = HOST_MAC) -> bytes:
    return raw(Ether(dst=dst_mac, src=ROUTER_MAC) / IPv6(src=ROUTER6, dst=VIP6) / ICMPv6EchoRequest(id=1, seq=1)
               / Raw(b"ping" * 8))


def tcp_v4(dst_mac: str = HOST_MAC) -> bytes:
    return raw(Ether(dst=dst_mac, src=ROUTER_MAC) / IP(src=CLIENT4, dst=VIP4)
               / TCP(sport=CLIENT_PORT, dport=SERVICE_PORT))


def dest_unreach_v6(dst_mac: str = HOST_MAC) -> bytes:
    """ICMPv6 type 1 (Destination Unreachable), quoting a packet from the VIP."""
    return raw(
        Ether(dst=dst_mac, src=ROUTER_MAC)
        / IPv6(src=ROUTER6, dst=VIP6)
        / ICMPv6DestUnreach(code=3)
        / Raw(original_v6()[:128])
    )


# -- byte surgery --------------------------------------------------------------------
def set_bytes(frame: bytes, offset: int, value: bytes) -> bytes:
    """``frame`` with ``value`` written at ``offset`` (no checksum is fixed)."""
    return frame[:offset] + value + frame[offset + len(value) :]


def add_one(frame: bytes, offset: int) -> bytes:
    """``frame`` with the byte at ``offset`` incremented (mod 256): a checksum-visible change."""
    return set_bytes(frame, offset, bytes([(frame[offset] + 1) & 0xFF]))


def refresh_icmp_checksum(frame: bytes, l3: int, icmp: int) -> bytes:
    """Recompute the ICMPv4/ICMPv6 checksum of a frame whose layout is known (lengths intact)."""
    if frame[l3] >> 4 == 4:
        end = l3 + struct.unpack_from("!H", frame, l3 + 2)[0]
        pseudo = b""
    else:
        end = l3 + 40 + struct.unpack_from("!H", frame, l3 + 4)[0]
        pseudo = frame[l3 + 8 : l3 + 40] + struct.pack("!IxxxB", end - icmp, 58)
    message = frame[icmp:icmp + 2] + b"\x00\x00" + frame[icmp + 4 : end]
    return set_bytes(frame, icmp + 2, struct.pack("!H", internet_checksum(pseudo + message)))


# -- a small catalogue of valid PTB frames (for properties and consistency checks) ------
def valid_catalogue() -> dict[str, bytes]:
    """Named valid, relayable (with the fixture VIPs) PTB frames covering the layouts."""
    return {
        "v4": ptb_v4(),
        "v4-udp": ptb_v4(proto="udp"),
        "v4-options": ptb_v4(ip_fields={"options": b"\x94\x04\x00\x00"}),  # router alert
        "v4-dot1q": ptb_v4(vlans=((0x8100, 100),)),
        "v4-qinq": ptb_v4(vlans=((0x88A8, 10), (0x8100, 20))),
        "v4-short-quote": ptb_v4(quote_len=28),
        "v6": ptb_v6(),
        "v6-udp": ptb_v6(proto="udp"),
        "v6-hbh-dst": ptb_v6(outer_ext=(IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt())),
        "v6-atomic-frag": ptb_v6(outer_ext=(IPv6ExtHdrFragment(offset=0, m=0, id=1),)),
        "v6-dot1q": ptb_v6(vlans=((0x8100, 100),)),
        "v6-qinq": ptb_v6(vlans=((0x88A8, 10), (0x8100, 20))),
        "v6-quoted-ext": ptb_v6(ext=(IPv6ExtHdrHopByHop(),)),
    }

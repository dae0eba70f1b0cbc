"""Capture fixtures for ``analyze`` tests, built with scapy, with their known answers.

The tests generate the captures into tmp_path at test time (so fixtures cannot drift
from the scenarios described here); ``tests/data/ptb-mixed.pcapng`` is the committed copy
of :func:`write_mixed_pcapng`'s output that proves a real file on disk reads the same.
Regenerate it with::

    .venv/bin/python -m tests.support.pcap

Only documentation addresses are used.
"""

from __future__ import annotations

import sys
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Ether
from scapy.packet import Raw
from scapy.utils import PcapNgWriter, PcapWriter

from tests.support import frames

T0 = 1_700_000_000  # capture start, whole seconds

VIP4 = "192.0.2.10"
OTHER4 = "192.0.2.99"  # a server address that is not a VIP
VIP6 = "2001:db8:ffff::10"
R1, R2, R3 = "198.51.100.1", "198.51.100.2", "198.51.100.3"
R6 = "2001:db8:5::1"
HOST_MAC = "02:00:00:00:0a:01"
ROUTER_MAC = "02:00:00:00:0b:01"
COMMITTED_PCAPNG = Path(__file__).resolve().parent.parent / "data" / "ptb-mixed.pcapng"


def client4(i: int) -> str:
    return f"203.0.113.{i}"


def client6(i: int) -> str:
    return f"2001:db8:c::{i:x}"


def quoted4(src: str, dst: str, sport: int, dport: int, length: int = 1500, udp: bool = False) -> bytes:
    """The first 28/40 bytes of a big DF packet the server sent: IP header + L4 header."""
    l4 = UDP(sport=sport, dport=dport, len=length - 20) if udp else TCP(sport=sport, dport=dport, seq=1000, flags="PA")
    return bytes(IP(src=src, dst=dst, flags="DF", len=length, id=7, proto=17 if udp else 6) / l4)


def quoted6(src: str, dst: str, sport: int, dport: int, length: int = 1500) -> bytes:
    return bytes(IPv6(src=src, dst=dst, plen=length - 40, nh=6) / TCP(sport=sport, dport=dport, seq=1000, flags="PA"))


def ptb4(router: str, dst: str, mtu: int, quote: bytes, dst_mac: str = HOST_MAC, chksum: int | None = None) -> bytes:
    """frames.ptb_v4 with this scenario's MACs; ``chksum`` forces the ICMP checksum."""
    return frames.ptb_v4(outer_src=router, outer_dst=dst, mtu=mtu, quote=quote, dst_mac=dst_mac, src_mac=ROUTER_MAC,
                         icmp_fields=None if chksum is None else {"chksum": chksum})


def ptb6(router: str, dst: str, mtu: int, quote: bytes, dst_mac: str = HOST_MAC, src_mac: str = ROUTER_MAC) -> bytes:
    return frames.ptb_v6(outer_src=router, outer_dst=dst, mtu=mtu, quote=quote, dst_mac=dst_mac, src_mac=src_mac)


def ip_payload(frame: bytes) -> bytes:
    return frame[14:]


# --- scenario 1: the IPv4 mix (pcap, Ethernet, microseconds) ---------------------------------

#: Options the mixed scenario is analysed with.
MIXED4_ARGS = ["--vip", "192.0.2.10/32", "--source-rate", "1", "--source-burst", "2", "--dedup-window", "1"]


def mixed4_frames() -> list[tuple[float, bytes]]:
    """(offset seconds, frame). 10 PTBs + 5 other frames; see MIXED4_ANSWERS."""
    q = lambda i, mtu_len=1500: quoted4(VIP4, client4(i), 443, 50000 + i, mtu_len)  # noqa: E731
    syn = Ether(src=ROUTER_MAC, dst=HOST_MAC) / IP(src=client4(9), dst=VIP4) / TCP(sport=40000, dport=443, flags="S")
    data = (Ether(src=ROUTER_MAC, dst=HOST_MAC) / IP(src=client4(9), dst=VIP4)
            / TCP(sport=40000, dport=443, flags="A") / Raw(b"x" * 64))
    v6_tcp = Ether(src=ROUTER_MAC, dst=HOST_MAC) / IPv6(src=client6(9), dst=VIP6) / TCP(sport=40000, dport=443)
    return [
        (0.000, ptb4(R1, VIP4, 1400, q(1))),  # relayed (R1 tokens 2 -> 1)
        (0.005, bytes(syn)),
        (0.010, ptb4(R1, VIP4, 1400, q(1))),  # duplicate
        (0.020, ptb4(R1, VIP4, 1400, q(1))),  # duplicate
        (0.050, bytes(Ether(src=ROUTER_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=R1, pdst=VIP4))),
        (0.100, ptb4(R2, VIP4, 1480, q(2))),  # relayed (R2 tokens 2 -> 1)
        (0.150, bytes(Ether(src=ROUTER_MAC, dst=HOST_MAC) / IP(src=client4(9), dst=VIP4) / ICMP(type=8))),
        (0.200, ptb4(R1, VIP4, 1400, q(3))),  # relayed (R1 tokens 1.2 -> 0.2)
        (0.300, ptb4(R1, VIP4, 1400, q(4))),  # rate_limited_source (0.3 tokens)
        (0.400, ptb4(R1, VIP4, 1400, q(5))),  # rate_limited_source (0.4 tokens)
        (0.450, bytes(data)),
        (0.500, ptb4(R2, OTHER4, 1400, quoted4(OTHER4, client4(6), 443, 50006))),  # not_vip
        (0.600, ptb4(R2, VIP4, 1480, q(2))),  # duplicate of 0.100
        (0.700, ptb4(R3, VIP4, 1400, q(7), chksum=0x1234)),  # bad_checksum
        (0.800, bytes(v6_tcp)),
    ]


MIXED4_ANSWERS = {
    "frames": 15,
    "seen": 10,
    "relayed": 3,
    "reasons": {"relayed": 3, "duplicate": 3, "rate_limited_source": 2, "bad_checksum": 1, "not_vip": 1},
    "other": {"not_ptb": 4, "not_ip": 1},
    "sources": {R1: (6, 2), R2: (3, 1), R3: (1, 0)},  # source: (PTBs, relayed)
    "mtus": {(4, 1400): (7, 2), (4, 1480): (2, 1)},
    "flows": {"count": 6, "with_relay": 3, "without_relay": 3},
}


def write_pcap(path: Path, frames: list[tuple[float, bytes]], linktype: int = 1, nano: bool = False,
               snaplen: int | None = None) -> Path:
    """A classic pcap; ``snaplen`` cuts frames (caplen < wire length) like tcpdump -s."""
    with PcapWriter(str(path), linktype=linktype, nano=nano, sync=True) as w:
        w.write_header(None)
        for offset, frame in frames:
            ticks = round(offset * (1e9 if nano else 1e6))
            sec, frac = divmod(ticks, 10**9 if nano else 10**6)
            data = frame[:snaplen] if snaplen else frame
            w.write_packet(data, sec=T0 + sec, usec=frac, caplen=len(data), wirelen=len(frame))
    return path


# --- scenario 2: IPv6 and pcapng specifics (direction flags), plus one IPv4 UDP PTB ----------

MIXED_PCAPNG_ARGS = ["--vip", "192.0.2.10", "--vip", "2001:db8:ffff::/64"]


def mixed_pcapng_frames() -> list[tuple[float, bytes, int | None]]:
    """(offset, frame, pcapng direction: 1 inbound, 2 outbound, None unknown)."""
    q = quoted6(VIP6, client6(1), 443, 40001)
    other_mac = "02:00:00:00:0c:01"
    return [
        (0.000, ptb6(R6, VIP6, 1400, q), 1),  # relayed
        (0.010, ptb6(R6, VIP6, 1400, q), 1),  # duplicate
        (0.020, ptb6(R6, VIP6, 1200, quoted6(VIP6, client6(2), 443, 40002)), 1),  # mtu_below_floor
        (0.030, ptb6(R6, VIP6, 1400, quoted6(VIP6, client6(3), 443, 40003), dst_mac="33:33:00:00:00:01"),
         1),  # not_unicast
        (0.040, ptb6(R6, VIP6, 1400, quoted6(VIP6, client6(4), 443, 40004), src_mac=HOST_MAC, dst_mac=other_mac),
         2),  # own_frame
        (0.050, ptb6(R6, VIP6, 1500, quoted6(VIP6, client6(5), 443, 40005, length=1500)), 1),  # mtu_not_below_packet
        (0.060, ptb4(R1, VIP4, 1450, quoted4(VIP4, client4(8), 4789, 4789, udp=True)), None),  # relayed
        (0.070, bytes(Ether(src=ROUTER_MAC, dst=HOST_MAC) / IPv6(src=client6(9), dst=VIP6) / ICMPv6EchoRequest()), 1),
    ]


MIXED_PCAPNG_ANSWERS = {
    "frames": 8,
    "seen": 7,
    "relayed": 2,
    "reasons": {"relayed": 2, "duplicate": 1, "mtu_below_floor": 1, "mtu_not_below_packet": 1,
                "not_unicast": 1, "own_frame": 1},
    "other": {"not_ptb": 1},
    "ipv4": 1,
    "ipv6": 6,
}


def write_mixed_pcapng(path: Path) -> Path:
    with PcapNgWriter(str(path)) as w:
        for offset, frame, direction in mixed_pcapng_frames():
            pkt = Ether(frame)
            pkt.time = T0 + offset
            if direction is not None:
                pkt.direction = direction
            w.write(pkt)
    return path


# --- scenario 3: Linux cooked captures (tcpdump -i any) --------------------------------------

#: Linux packet types as recorded in SLL headers.
SLL_HOST, SLL_BROADCAST, SLL_OUTGOING = 0, 1, 4


def cooked_frames(version: int = 1) -> list[tuple[float, bytes]]:
    """Three copies of the same PTB seen on 'any': received unicast, received broadcast
    (a relayed copy) and sent (this host relaying it): relayed, not_unicast, own_frame."""
    ip = ip_payload(ptb4(R1, VIP4, 1400, quoted4(VIP4, client4(1), 443, 50001)))
    ip2 = ip_payload(ptb4(R1, VIP4, 1400, quoted4(VIP4, client4(2), 443, 50002)))
    ip3 = ip_payload(ptb4(R1, VIP4, 1400, quoted4(VIP4, client4(3), 443, 50003)))

    def hdr(pkttype):
        if version == 1:
            return bytes(CookedLinux(pkttype=pkttype, lladdrtype=1, lladdrlen=6,
                                     src=bytes.fromhex("020000000b01") + b"\0\0", proto=0x0800))
        return bytes(CookedLinuxV2(proto=0x0800, ifindex=2, lladdrtype=1, pkttype=pkttype, lladdrlen=6,
                                   src=bytes.fromhex("020000000b01") + b"\0\0"))

    return [(0.0, hdr(SLL_HOST) + ip), (0.1, hdr(SLL_BROADCAST) + ip2), (0.2, hdr(SLL_OUTGOING) + ip3)]


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else COMMITTED_PCAPNG
    out.parent.mkdir(parents=True, exist_ok=True)
    write_mixed_pcapng(out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")

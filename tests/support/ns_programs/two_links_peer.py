"""The peer side of tests/test_daemon_interfaces.py's two links (``a1`` and ``b1``, whose other
ends ``a0`` and ``b0`` the relay holds): ``two_links_peer VIP4 VIP6`` with the relay's MACs on
stdin as JSON (``{"a0": MAC, "b0": MAC}``).

Sends an IPv4 and an IPv6 PTB about a VIP out of each link (scapy builds them), then listens
on both links for 3 s and prints ``{"sent": {link: [hex]}, "got": {link: [hex]}}``: the frames
it sent, and the group-addressed IPv4/IPv6 frames that arrived on each link.
"""

from __future__ import annotations

import json
import socket
import sys
import time

from tests.support.ns_programs import bounded

LINKS = (("a1", 8081), ("b1", 8082))  # the link and the quoted flow's source port


def main(argv: list[str]) -> int:
    bounded(25)  # the test waits 30 s; importing scapy takes a few of these
    from scapy.all import ICMP, IP, TCP, Ether, ICMPv6PacketTooBig, IPv6, raw

    vip4, vip6 = argv
    relay_macs = json.load(sys.stdin)

    def ptb4(dst_mac: str, sport: int) -> bytes:
        inner = raw(IP(src=vip4, dst="203.0.113.2", flags="DF") / TCP(sport=sport, dport=40000) / (b"x" * 1448))
        return raw(Ether(dst=dst_mac, src="02:00:00:00:99:01") / IP(src="198.51.100.1", dst=vip4)
                   / ICMP(type=3, code=4, nexthopmtu=1400) / inner[:548])

    def ptb6(dst_mac: str, sport: int) -> bytes:
        inner = raw(IPv6(src=vip6, dst="2001:db8:c::2") / TCP(sport=sport, dport=40000) / (b"y" * 1400))
        return raw(Ether(dst=dst_mac, src="02:00:00:00:99:02") / IPv6(src="2001:db8:5::1", dst=vip6)
                   / ICMPv6PacketTooBig(mtu=1400) / inner[:1232])

    listeners = {}
    for name, _sport in LINKS:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL
        s.bind((name, 0))
        s.settimeout(0.2)
        listeners[name] = s
    sent = {}
    for name, sport in LINKS:
        frames = [ptb4(relay_macs[name[0] + "0"], sport), ptb6(relay_macs[name[0] + "0"], sport)]
        sent[name] = [f.hex() for f in frames]
        out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        out.bind((name, 0))
        for f in frames:
            out.send(f)
        out.close()
    got: dict[str, list[str]] = {name: [] for name in listeners}
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for name, s in listeners.items():
            try:
                data, addr = s.recvfrom(65535)
            except socket.timeout:
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            if data[12:14] in (b"\x08\x00", b"\x86\xdd") and (data[0] & 1):  # group-addressed copies only
                got[name].append(data.hex())
    for s in listeners.values():
        s.close()
    print(json.dumps({"sent": sent, "got": got}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

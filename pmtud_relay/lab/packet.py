"""Raw-frame helpers for the lab: ``python -m pmtud_relay.lab.packet sniff|inject ...``.

sniff:  AF_PACKET/ETH_P_ALL on one interface; records every ICMPv4 "fragmentation needed"
        (3/4) and ICMPv6 "packet too big" (2) frame with its packet type (host, broadcast,
        multicast, otherhost, outgoing) and the quoted flow. Prints ``listening`` on stderr once
        bound; on SIGTERM/SIGINT (or --duration) prints a JSON list on stdout and exits 0.
inject: sends a complete Ethernet frame (hex) from one interface.

Only the standard library is used, so the lab runs without scapy.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
PKTTYPES = {0: "host", 1: "broadcast", 2: "multicast", 3: "otherhost", 4: "outgoing"}


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _quoted_ports(proto: int, l4: bytes) -> tuple[int | None, int | None]:
    if proto in (6, 17, 132, 33) and len(l4) >= 4:
        return struct.unpack("!HH", l4[:4])
    return None, None


def parse_ptb(frame: bytes) -> dict | None:
    """Summary dict of an Ethernet frame carrying an ICMP PTB, or None."""
    if len(frame) < 14:
        return None
    dst, src, etype = frame[:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
    p = frame[14:]
    info: dict = {"eth_dst": _mac(dst), "eth_src": _mac(src)}
    if etype == 0x0800 and len(p) >= 20:
        ihl = (p[0] & 0x0F) * 4
        if p[9] != 1 or len(p) < ihl + 8:
            return None
        icmp = p[ihl:]
        if icmp[0] != 3 or icmp[1] != 4:
            return None
        inner = icmp[8:]
        info.update(family=4, outer_src=str(ipaddress.IPv4Address(p[12:16])),
                    outer_dst=str(ipaddress.IPv4Address(p[16:20])),
                    mtu=struct.unpack("!H", icmp[6:8])[0])
        if len(inner) >= 20:
            iihl = (inner[0] & 0x0F) * 4
            proto = inner[9]
            sport, dport = _quoted_ports(proto, inner[iihl:])
            info.update(inner_src=str(ipaddress.IPv4Address(inner[12:16])),
                        inner_dst=str(ipaddress.IPv4Address(inner[16:20])), proto=proto,
                        sport=sport, dport=dport)
        return info
    if etype == 0x86DD and len(p) >= 48:
        if p[6] != 58:
            return None
        icmp = p[40:]
        if icmp[0] != 2:
            return None
        inner = icmp[8:]
        info.update(family=6, outer_src=str(ipaddress.IPv6Address(p[8:24])),
                    outer_dst=str(ipaddress.IPv6Address(p[24:40])),
                    mtu=struct.unpack("!I", icmp[4:8])[0])
        if len(inner) >= 40:
            proto = inner[6]
            sport, dport = _quoted_ports(proto, inner[40:])
            info.update(inner_src=str(ipaddress.IPv6Address(inner[8:24])),
                        inner_dst=str(ipaddress.IPv6Address(inner[24:40])), proto=proto,
                        sport=sport, dport=dport)
        return info
    return None


def run_sniff(args: argparse.Namespace) -> int:
    stop = False

    def _stop(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((args.iface, 0))
    s.settimeout(0.1)
    print(f"listening iface={args.iface}", file=sys.stderr, flush=True)
    seen: list[dict] = []
    deadline = time.monotonic() + args.duration if args.duration else None
    t0 = time.monotonic()
    while not stop and (deadline is None or time.monotonic() < deadline):
        try:
            frame, addr = s.recvfrom(65535)
        except (socket.timeout, InterruptedError):
            continue
        info = parse_ptb(frame)
        if info is None:
            continue
        info["pkttype"] = PKTTYPES.get(addr[2], str(addr[2]))
        info["t"] = round(time.monotonic() - t0, 4)
        seen.append(info)
    s.close()
    json.dump(seen, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


def run_inject(args: argparse.Namespace) -> int:
    frame = bytes.fromhex(args.hex)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((args.iface, 0))
    for i in range(args.count):
        s.send(frame)
        if i + 1 < args.count:
            time.sleep(args.interval)
    s.close()
    return 0


# --- tiny stdlib PTB builder (tests may use scapy instead) ----------------------------------
def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ptb4_frame(eth_dst: str, eth_src: str, outer_src: str, outer_dst: str, mtu: int,
               inner_src: str, inner_dst: str, sport: int, dport: int, seq: int = 1) -> bytes:
    """Ethernet + IPv4 + ICMP 3/4 quoting an IPv4/TCP header (+ 8 bytes of TCP)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x10, 65535, 0, 0)
    inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 1500, 1, 0x4000, 64, 6, 0,
                        ipaddress.IPv4Address(inner_src).packed,
                        ipaddress.IPv4Address(inner_dst).packed)
    inner = inner[:10] + struct.pack("!H", _csum(inner)) + inner[12:]
    body = struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + inner + tcp
    body = body[:2] + struct.pack("!H", _csum(body)) + body[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(body), 0, 0, 64, 1, 0,
                     ipaddress.IPv4Address(outer_src).packed,
                     ipaddress.IPv4Address(outer_dst).packed)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return (bytes.fromhex(eth_dst.replace(":", "")) + bytes.fromhex(eth_src.replace(":", ""))
            + b"\x08\x00" + ip + body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pmtud_relay.lab.packet")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("sniff")
    sp.add_argument("-i", "--iface", required=True)
    sp.add_argument("--duration", type=float, default=0.0, help="0 = until SIGTERM")
    ip = sub.add_parser("inject")
    ip.add_argument("-i", "--iface", required=True)
    ip.add_argument("--hex", required=True)
    ip.add_argument("--count", type=int, default=1)
    ip.add_argument("--interval", type=float, default=0.05)
    args = ap.parse_args(argv)
    return run_sniff(args) if args.cmd == "sniff" else run_inject(args)


if __name__ == "__main__":
    sys.exit(main())

"""Small socket programs for the labs' namespaces.

    send-udp HOST PORT HEX...        one UDP datagram per HEX argument
    junk-udp HOST PORT N HEADHEX     N datagrams: HEADHEX then 150 random bytes (paced)
    raw-icmp DST HEX                 an IPv4 packet (HEX, header included) on an ICMP raw socket
    scrape [URL]                     print the metrics page (default 127.0.0.1:9781)
    hold-flows HOST PORT N           N TCP connections to a lab transfer server, each asking for
                                     1 MB and reading none; prints "SERVER PORT" per connection,
                                     then "held", and holds them (30 s)
    hold-idle HOST PORT N            N such connections asking for nothing (idle flows); prints
                                     "SERVER PORT" per connection, then "held" (60 s)
    hold-one HOST PORT               one such connection, idle (60 s)
    bind-udp HOST PORT               a UDP socket bound to HOST:PORT; prints "bound" (60 s)
    send-ptb 4|6 DST SRC MTU QSRC QDST
                                     a PTB from SRC to DST quoting an ICMP echo reply QSRC -> QDST
                                     (the kernel learns a PMTU from it without a socket)
    send-big DST SECONDS             1450-byte DF datagrams to DST:9 every 20 ms, PTBs ignored
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
import urllib.request
from collections.abc import Callable

from tests.support import wire
from tests.support.ns_programs import bounded


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def send_udp(host: str, port: str, *hexes: str) -> None:
    s = socket.socket(_family(host), socket.SOCK_DGRAM)
    for h in hexes:
        s.sendto(bytes.fromhex(h), (host, int(port)))


def junk_udp(host: str, port: str, n: str, head_hex: str) -> None:
    """The magic and header, then junk: a bad MAC."""
    s = socket.socket(_family(host), socket.SOCK_DGRAM)
    head = bytes.fromhex(head_hex)
    for i in range(int(n)):
        s.sendto(head + os.urandom(150), (host, int(port)))
        if i % 200 == 199:
            time.sleep(0.002)


def raw_icmp(dst: str, packet_hex: str) -> None:
    """An ICMP raw socket (not IPPROTO_RAW): the router's ``ipproto icmp`` rule sends it to s1."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    s.sendto(bytes.fromhex(packet_hex), (dst, 0))


def scrape(url: str = "http://127.0.0.1:9781/metrics") -> None:
    print(urllib.request.urlopen(url, timeout=5).read().decode())


def _connect(host: str, port: str) -> tuple[socket.socket, str]:
    """A connection to a lab transfer server and the name of the server it reached."""
    s = socket.create_connection((host, int(port)), timeout=5)
    name = b""
    while not name.endswith(b"\n"):
        name += s.recv(1)
    return s, name.decode().strip()


def hold_flows(host: str, port: str, n: str) -> None:
    conns = []
    for _ in range(int(n)):
        s, name = _connect(host, port)
        s.sendall(b"go 1000000\n")  # and read none of it for now: the flow stays open
        conns.append(s)
        print(name, s.getsockname()[1], flush=True)
    print("held", flush=True)
    time.sleep(30)


def hold_idle(host: str, port: str, n: str) -> None:
    conns = []
    for _ in range(int(n)):
        s, name = _connect(host, port)  # and ask for nothing: the flow stays open and idle
        conns.append(s)
        print(name, s.getsockname()[1], flush=True)
    print("held", flush=True)
    time.sleep(60)


def hold_one(host: str, port: str) -> None:
    s, name = _connect(host, port)
    print(name, s.getsockname()[1], flush=True)
    time.sleep(60)


def bind_udp(host: str, port: str) -> None:
    s = socket.socket(_family(host), socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    print("bound", flush=True)
    time.sleep(60)


def send_ptb(family: str, dst: str, src: str, mtu: str, qsrc: str, qdst: str) -> None:
    if family == "4":
        echo_reply = wire.icmp4(0, 0, struct.pack("!HH", 1, 1), b"")
        inner = wire.quoted_v4(qsrc, qdst, echo_reply, proto=wire.IPPROTO_ICMP, length=1500)
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s.sendto(wire.ptb4_packet(src, dst, int(mtu), inner, df=False), (dst, 0))
    else:
        echo_reply = wire.icmp6(qsrc, qdst, 129, 0, struct.pack("!HH", 1, 1), b"")
        inner = wire.quoted_v6(qsrc, qdst, echo_reply, next_header=wire.IPPROTO_ICMPV6, length=1500)
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        s.bind((src, 0))
        s.sendto(wire.icmp6(src, dst, 2, 0, struct.pack("!I", int(mtu)), inner), (dst, 0))


def send_big(dst: str, seconds: str) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, 10, 3)  # IP_MTU_DISCOVER = IP_PMTUDISC_PROBE: DF set, PTBs ignored
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        try:
            s.sendto(b"x" * 1422, (dst, 9))  # 1450 bytes on the wire: bigger than the 1400-byte hop
        except OSError:
            pass
        time.sleep(0.02)


COMMANDS: dict[str, Callable[..., None]] = {
    "send-udp": send_udp, "junk-udp": junk_udp, "raw-icmp": raw_icmp, "scrape": scrape,
    "hold-flows": hold_flows, "hold-idle": hold_idle, "hold-one": hold_one, "bind-udp": bind_udp, "send-ptb": send_ptb,
    "send-big": send_big,
}


def main(argv: list[str]) -> int:
    bounded(90)  # longer than any hold above: those end by themselves first
    COMMANDS[argv[0]](*argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

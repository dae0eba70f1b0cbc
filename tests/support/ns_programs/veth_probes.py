"""Probes for the ``veth_netns`` fixture's namespace (veth pair ``pmr0`` <-> ``pmr1``): frames
go out on ``pmr1`` and are captured on ``pmr0``. Each reads its input as JSON on stdin and
prints its result as JSON on stdout.

    bpf-capture      [hex frames]: what PacketCapture (kernel filter) delivers, (hex, pkttype)
    ring-resync      [small, large]: a truncated frame, a stuck reader resynchronised
    afpacket-drops   [ring, frame, burst, more]: PACKET_STATISTICS drops as afpacket_drops reads them
    peer-filter      {addresses, senders, peers, peers2}: which datagrams the peer listener's
                     kernel filter admits, for two peer sets and the magic-only filter
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from tests.support.ns_programs import bounded


def _sender() -> socket.socket:
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    tx.bind(("pmr1", 0))
    return tx


def bpf_capture(hexes: list[str]) -> list:
    from pmtud_relay.capture.afpacket import PacketCapture

    frames = [bytes.fromhex(h) for h in hexes]
    cap = PacketCapture("pmr0")
    tx = _sender()
    for frame in frames:
        tx.send(frame)
    got = []
    deadline = time.monotonic() + 1.0  # collect everything that arrives in a second
    while time.monotonic() < deadline:
        if select.select([cap], [], [], 0.05)[0]:
            got += [(data.hex(), pkttype) for data, pkttype in cap.drain()]
    cap.close()
    tx.close()
    return got


def ring_resync(hexes: list[str]) -> dict:
    from pmtud_relay.capture import afpacket
    from pmtud_relay.capture.afpacket import RING_FRAME_SIZE, PacketCapture

    small, large = [bytes.fromhex(h) for h in hexes]
    cap = PacketCapture("pmr0", ring=True)
    assert cap.ring is not None, "no ring"
    tx = _sender()

    def collect(n: int, seconds: float = 2.0) -> list:
        got: list = []
        deadline = time.monotonic() + seconds
        while len(got) < n and time.monotonic() < deadline:
            if select.select([cap], [], [], 0.05)[0]:
                got += cap.drain()
        return got

    out: dict = {}
    # 1. A frame larger than a slot is counted and dropped; the next one still arrives.
    tx.send(large)
    tx.send(small)
    out["after_large"] = [f.hex() for f, _ in collect(1)]
    out["truncated"] = cap.truncated
    # 2. Three frames fill the next three slots; the reader's slot is then handed back to
    #    the kernel unread (what the stall looks like: that slot empty, later ones full).
    first = cap._slot
    frames = [small[:-1] + bytes([i]) for i in range(3)]  # distinct, same length
    for f in frames:
        tx.send(f)
    time.sleep(0.2)
    afpacket._U32_PACK(cap.ring, first * RING_FRAME_SIZE, afpacket.TP_STATUS_KERNEL)
    out["stuck_first_drain"] = len(cap.drain())
    time.sleep(afpacket.RESYNC_AFTER * 3)
    out["resynced"] = [f.hex() for f, _ in cap.drain()]
    # 3. And reading goes on normally from there.
    tx.send(small)
    out["after_resync"] = [f.hex() for f, _ in collect(1)]
    out["counters"] = cap.counters()
    cap.close()
    tx.close()
    return out


def afpacket_drops(args: list) -> dict:
    from pmtud_relay import metrics
    from pmtud_relay.capture.afpacket import PacketCapture

    ring, frame_hex, burst, more = args
    frame = bytes.fromhex(frame_hex)
    # The socket path gets a small buffer (SO_RCVBUFFORCE, doubled by the kernel): it fills fast.
    cap = PacketCapture("pmr0", ring=ring, rcvbuf=64 << 10)
    assert (cap.ring is not None) == ring
    tx = _sender()

    def send(n: int) -> None:
        for i in range(n):
            tx.send(frame)
            if i % 64 == 63:
                time.sleep(0.002)  # let the softirq keep up: no drops before the socket (backlog)
        time.sleep(0.3)

    def drain_all() -> int:
        n = 0
        while True:
            got = cap.drain(4096)
            if not got:
                return n
            n += len(got)

    out = {"idle": metrics.afpacket_drops(cap.sock)}
    send(burst)  # nothing reads the capture meanwhile
    out["first"] = metrics.afpacket_drops(cap.sock)
    out["second"] = metrics.afpacket_drops(cap.sock)
    send(more)  # the capture is still full: every one of these is dropped
    out["third"] = metrics.afpacket_drops(cap.sock)
    out["held"] = drain_all()
    send(more)  # room again: nothing dropped
    out["fourth"] = metrics.afpacket_drops(cap.sock)
    out["after"] = drain_all()
    cap.close()
    tx.close()
    return out


def peer_filter(cfg: dict) -> dict:
    from pmtud_relay.peers.filter import program_for
    from pmtud_relay.peers.receiver import PeerListener

    for cmd in (["sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=0"], ["ip", "link", "set", "lo", "up"]):
        subprocess.run(cmd, check=True, timeout=10)
    for a in cfg["addresses"]:
        subprocess.run(["ip", "addr", "add", a + ("/128" if ":" in a else "/32"), "dev", "lo", "nodad"],
                       check=True, timeout=10)
    time.sleep(0.2)
    port = 2106
    listener = PeerListener([("", port), ("198.51.100.1", port + 1), ("2001:db8::1", port + 2)],
                            peer_filter=program_for(cfg["peers"]))
    dual, v4only, v6only = listener.socks
    assert dual.family == socket.AF_INET6

    def send(src: str, dst: str, dport: int, payload: bytes) -> None:
        s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.sendto(payload, (dst, dport))
        s.close()

    def phase() -> list[str]:
        for src in cfg["senders"]:
            v6 = ":" in src
            targets = [("2001:db8::1" if v6 else "198.51.100.1", port),
                       ("2001:db8::1", port + 2) if v6 else ("198.51.100.1", port + 1)]
            for dst, dport in targets:
                for kind, payload in (("magic", b"PMTR" + bytes(80)), ("nomagic", b"XXXX" + bytes(80))):
                    send(src, dst, dport, payload + f"{src}>{dport}:{kind}".encode())
        time.sleep(0.2)
        got = []
        for sock in listener.socks:
            for data, _host, _ in PeerListener.drain(sock):
                got.append(data[84:].decode())
        return sorted(got)

    out = {"first": phase()}
    listener.set_filter(program_for(cfg["peers2"]))
    out["second"] = phase()
    listener.set_filter(program_for(None))
    out["magic"] = phase()
    listener.close()
    return out


COMMANDS: dict[str, Callable] = {"bpf-capture": bpf_capture, "ring-resync": ring_resync,
                                 "afpacket-drops": afpacket_drops, "peer-filter": peer_filter}


def main(argv: list[str]) -> int:
    bounded(60)  # the tests wait 20-40 s
    json.dump(COMMANDS[argv[0]](json.load(sys.stdin)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""NFLOG capture probes for the veth namespace of ``tests.support.netns.NetNS`` (PTBs sent on
``v0``, captured on ``v1``); each prints one JSON line with what it measured.

    delivery BACKEND     lone PTBs' latency, then a burst of 1 000 (batched?)
    adaptive BACKEND     the batch tuner: lone PTBs, bursts, calm, lone again
    enobufs              a tiny socket buffer overflowed: overruns and losses counted
    loggers              the namespace's nf_log default loggers before/during/after a capture
    flood FAMILY BACKEND one spoofed source floods, 5 legitimate ones in between; copies seen
    overrun RELAY_PID    a frozen relay's socket overflows; is a marker PTB relayed afterwards?
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable

from pmtud_relay.nflog.capture import NflogCapture, interface_mac
from pmtud_relay.rules import RuleSpec, get_backend
from tests.support import wire
from tests.support.ns_programs import bounded

PEER = "02:00:00:00:05:01"
SOL_PACKET, PACKET_IGNORE_OUTGOING, SO_RCVBUFFORCE = 263, 23, 33
OPEN_LIMITS = RuleSpec(("v1",), source_rate=10000, source_burst=10000, global_rate=10000, global_burst=10000)


class Wire:
    """The sending side on ``v0``: PTB frames to ``v1``'s MAC."""

    def __init__(self) -> None:
        self.mac1 = interface_mac("v1").hex(":")
        self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.tx.bind(("v0", 0))
        self.tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)

    def ptb(self, family: int, outer_src: str, dport: int, mtu: int | None = None) -> bytes:
        if family == 4:
            return wire.flow_ptb_frame(4, self.mac1, PEER, outer_src=outer_src, vip="192.0.2.10",
                                       client="203.0.113.2", sport=443, dport=dport, mtu=mtu or 1400)
        return wire.flow_ptb_frame(6, self.mac1, PEER, outer_src=outer_src, vip="2001:db8:ffff::10",
                                   client="2001:db8:c::2", sport=443, dport=dport, mtu=mtu or 1400)

    def send_paced(self, frames: list[bytes], per_ms: int = 50) -> None:
        """Send without overflowing the veth backlog (netdev_max_backlog, 1000): ~per_ms per ms."""
        for i, f in enumerate(frames):
            self.tx.send(f)
            if i % per_ms == per_ms - 1:
                time.sleep(0.001)


def drain_until(cap: NflogCapture, want: int, timeout: float = 3.0) -> list:
    port = cap.port("v1")
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        select.select([cap], [], [], 0.1)
        got += port.drain()
    return got


def _receiver(nonblocking: bool = True, rcvbuf: int | None = None) -> socket.socket:
    """Frames coming in on v0 (the relayed copies), not our own outgoing ones."""
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    rx.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    if rcvbuf:
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    rx.bind(("v0", 0))
    rx.setblocking(not nonblocking)
    return rx


def delivery(backend_name: str) -> dict:
    w = Wire()
    backend = get_backend(backend_name)
    backend.install(OPEN_LIMITS)
    cap = NflogCapture(2105, ["v1"])
    try:
        lat = []
        for i in range(40):
            frame = w.ptb(4, f"203.0.113.{1 + i}", 1000 + i)
            t0 = time.perf_counter()
            w.tx.send(frame)
            assert len(drain_until(cap, 1)) == 1
            lat.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.007 + (i % 5) * 0.0013)  # spread the sends over the timer tick
        lat.sort()
        d0 = cap.datagrams
        w.send_paced([w.ptb(4, f"203.0.113.{1 + i % 200}", 2000 + i) for i in range(1000)])
        got = drain_until(cap, 1000)
        return {"median_ms": lat[len(lat) // 2], "p90_ms": lat[int(len(lat) * 0.9)], "max_ms": lat[-1],
                "burst": len(got), "datagrams": cap.datagrams - d0, "lost": cap.lost, "overruns": cap.overruns}
    finally:
        cap.close()
        backend.remove()


def adaptive(backend_name: str) -> dict:
    from pmtud_relay.nflog.batching import BatchTuner

    w = Wire()
    backend = get_backend(backend_name)
    # The rules' own threshold (iptables: --nflog-threshold 100) caps the socket's: the kernel
    # takes the smaller, so the tuner's QTHRESH 1 applies with either backend.
    backend.install(OPEN_LIMITS)
    # A flush timer of 1 s: a PTB that arrives well within it was handed over by QTHRESH 1.
    tuner = BatchTuner(batch=100, high=32, now=time.monotonic())
    cap = NflogCapture(2105, ["v1"], timeout=100, tuner=tuner)
    out: dict = {"lone_before": [], "lone_after": []}

    def lone(key: str, n: int, base: int) -> None:
        for i in range(n):
            t0 = time.monotonic()
            w.tx.send(w.ptb(4, "203.0.113.5", base + i))
            got = drain_until(cap, 1, timeout=2.5)
            out[key].append([len(got), round(time.monotonic() - t0, 3), tuner.qthresh])

    try:
        lone("lone_before", 5, 100)
        # The first burst arrives one packet per datagram; reading it finds a backlog: batches.
        w.send_paced([w.ptb(4, f"203.0.113.{1 + i % 200}", 2000 + i) for i in range(1000)])
        out["burst1"] = len(drain_until(cap, 1000, timeout=5.0))
        out["qthresh_after_burst"] = tuner.qthresh
        w.send_paced([w.ptb(4, f"203.0.113.{1 + i % 200}", 4000 + i) for i in range(1000)])
        d0 = cap.datagrams
        out["burst2"] = len(drain_until(cap, 1000, timeout=5.0))
        out["burst2_datagrams"] = cap.datagrams - d0
        out["calm"] = []
        lone("calm", 1, 300)  # waits for the 1 s timer (batching); one PTB in 1 s: back to QTHRESH 1
        lone("lone_after", 3, 400)
        out.update(switches=tuner.switches, config_errors=cap.config_errors, lost=cap.lost, overruns=cap.overruns,
                   stats={k: v for k, v in cap.stats().items() if k.startswith("nflog_qthresh")})
        return out
    finally:
        cap.close()
        backend.remove()


def enobufs() -> dict:
    w = Wire()
    backend = get_backend("nft")
    backend.install(OPEN_LIMITS)
    cap = NflogCapture(2105, ["v1"], rcvbuf=4096)  # the kernel doubles it: 8 KiB, about one batch
    try:
        rcvbuf = cap.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        n = 3000
        w.send_paced([w.ptb(4, "203.0.113.9", 1 + i) for i in range(n)])  # nobody reads meanwhile
        time.sleep(0.3)
        first = len(drain_until(cap, n, timeout=1.0))
        overruns_after_burst = cap.overruns
        w.tx.send(w.ptb(4, "203.0.113.10", 9999))  # capture goes on; its sequence number reveals the loss
        after = drain_until(cap, 1, timeout=2.0)
        time.sleep(0.2)
        counters = backend.counters()
        return {"rcvbuf": rcvbuf, "first": first, "overruns": overruns_after_burst, "received": cap.received,
                "lost": cap.lost, "after": len(after), "logged": counters["logged"]}
    finally:
        cap.close()
        backend.remove()


def loggers() -> dict:
    def read() -> list[str]:
        out = []
        for pf in (2, 10):
            with open(f"/proc/sys/net/netfilter/nf_log/{pf}") as f:
                out.append(f.read().strip())
        return out

    before = read()
    cap = NflogCapture(2105, ["v1"])
    during = read()
    cap.close()
    return {"before": before, "during": during, "after": read()}


def flood(family_arg: str, backend_name: str) -> dict:
    family = int(family_arg)
    w = Wire()
    flood_src = "203.0.113.66" if family == 4 else "2001:db8:66::66"
    legit = [f"203.0.113.{i}" for i in range(1, 6)] if family == 4 else [f"2001:db8:77::{i}" for i in range(1, 6)]
    frames = []
    for i in range(3000):
        frames.append(w.ptb(family, flood_src, 10000 + i))
        if i % 600 == 300:
            k = i // 600
            frames.append(w.ptb(family, legit[k], 5000 + k))
    rx = _receiver(rcvbuf=1 << 23)
    t0 = time.monotonic()
    w.send_paced(frames)
    elapsed = time.monotonic() - t0
    time.sleep(1.0)
    copies = []
    while True:
        try:
            f = rx.recv(65535)
        except BlockingIOError:
            break
        if f[0] & 1 and f[12:14] == b"\x08\x00" and f[23] == 1 and f[34] == 3:
            copies.append(str(ipaddress.IPv4Address(f[26:30])))
        elif f[0] & 1 and f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 2:
            copies.append(str(ipaddress.IPv6Address(f[22:38])))
    return {"counters": get_backend(backend_name).counters(), "elapsed": elapsed, "flood_src": flood_src,
            "legit": legit, "copies": copies}


def overrun(relay_pid_arg: str) -> dict:
    relay_pid = int(relay_pid_arg)
    w = Wire()
    rx = _receiver()
    # Freeze the relay so its 4 MiB socket buffer fills: distinct flows (no dedup), limits lifted.
    os.kill(relay_pid, signal.SIGSTOP)
    try:
        w.send_paced([w.ptb(4, f"198.51.100.{1 + i % 200}", 10000 + i % 50000) for i in range(150000)], per_ms=60)
        time.sleep(0.5)
    finally:
        os.kill(relay_pid, signal.SIGCONT)
    time.sleep(2.0)  # let it drain the backlog
    while True:
        try:
            rx.recv(65535)
        except BlockingIOError:
            break
    marker = w.ptb(4, "198.51.100.250", 65001, mtu=1300)
    w.tx.send(marker)
    deadline = time.monotonic() + 5
    seen = False
    while time.monotonic() < deadline and not seen:
        r, _, _ = select.select([rx], [], [], 0.2)
        while r:
            try:
                f = rx.recv(65535)
            except BlockingIOError:
                break
            seen = seen or bool(f[0] & 1 and f[12:] == marker[12:])
    return {"marker_relayed": seen}


COMMANDS: dict[str, Callable[..., dict]] = {
    "delivery": delivery, "adaptive": adaptive, "enobufs": enobufs, "loggers": loggers, "flood": flood,
    "overrun": overrun,
}


def main(argv: list[str]) -> int:
    bounded(100)  # the tests wait 60-90 s for a probe
    print(json.dumps(COMMANDS[argv[0]](*argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

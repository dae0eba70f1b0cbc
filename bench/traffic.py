"""Generator and observer sockets for the namespace benchmarks (standard library only)."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import struct
import time

from netns import Topology, in_netns

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
_TS = struct.Struct("qq")


def open_tx(topo: Topology) -> socket.socket:
    """A send-only packet socket on the generator's eth0."""
    with in_netns(topo.gen):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.bind(("eth0", 0))
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 << 20)
    except OSError:
        pass
    return s


def open_tap(topo: Topology, *, outgoing: bool = True, program: bytes | None = None,
             rcvbuf: int = 64 << 20) -> socket.socket:
    """A tap on r0 (the relay's veth peer, observer side) with kernel receive timestamps.

    ``outgoing``: also see the frames the bridge sends towards the relay (the PTBs)."""
    with in_netns(topo.obs):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        if program is not None:
            s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)
        if not outgoing:
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        s.bind(("r0", ETH_P_ALL))
    s.setblocking(False)
    return s


def drain_tap(s: socket.socket, limit: int = 10_000_000) -> list[tuple[bytes, int, int]]:
    """Everything queued on a tap: [(frame, pkttype, kernel timestamp ns), …]."""
    out = []
    cspace = socket.CMSG_SPACE(_TS.size)
    for _ in range(limit):
        try:
            data, anc, _flags, addr = s.recvmsg(65536, cspace)
        except (BlockingIOError, InterruptedError):
            break
        ts = 0
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = _TS.unpack_from(cdata)
                ts = sec * 1_000_000_000 + nsec
        out.append((data, addr[2], ts))
    return out


def bpf_drop_v4_source(src: bytes) -> bytes:
    """A classic BPF program (packed insns, for a sock_fprog) dropping IPv4 frames from ``src``."""
    import ctypes

    insns = [
        (0x28, 0, 0, 12),  # ldh [12]
        (0x15, 0, 3, 0x0800),  # jeq #0x800, next, accept
        (0x20, 0, 0, 26),  # ld [26]  (outer IPv4 source)
        (0x15, 0, 1, int.from_bytes(src, "big")),  # jeq src → drop
        (0x06, 0, 0, 0),  # ret 0
        (0x06, 0, 0, 0x40000),  # ret all
    ]
    # the jeq at index 1 jumps 3 forward to "ret all" when not IPv4
    code = b"".join(struct.pack("=HBBI", *i) for i in insns)
    buf = ctypes.create_string_buffer(code)
    _keep.append(buf)
    return struct.pack("@HP", len(insns), ctypes.addressof(buf))  # struct sock_fprog


_keep: list = []


# -- generator processes ---------------------------------------------------------------------
def _blast(fd: int, frames: list[bytes], seconds: float, max_frames: int, cpu: int | None, rate: float | None,
           q) -> None:
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    s = socket.socket(fileno=fd)
    send = s.send
    n = len(frames)
    sent = errors = 0
    i = 0
    chunk = 64
    t0 = time.monotonic()
    deadline = t0 + seconds
    if rate is None:
        while sent < max_frames:
            batch = frames[i : i + chunk] if i + chunk <= n else frames[i:] + frames[: i + chunk - n]
            i = (i + chunk) % n
            for f in batch:
                try:
                    send(f)
                except OSError:
                    errors += 1
            sent += chunk
            if time.monotonic() >= deadline:
                break
    else:
        tick = 0.001
        per_tick = rate * tick
        due = 0.0
        next_t = t0
        while sent < max_frames:
            now = time.monotonic()
            if now >= deadline:
                break
            if now < next_t:
                time.sleep(next_t - now)
            next_t += tick
            due += per_tick
            k = int(due)
            due -= k
            for _ in range(k):
                try:
                    send(frames[i])
                except OSError:
                    errors += 1
                i = (i + 1) % n
                sent += 1
    elapsed = time.monotonic() - t0
    s.detach()
    q.put({"sent": sent, "errors": errors, "elapsed": elapsed, "rate": sent / elapsed if elapsed else 0.0})


class Generator:
    """A forked process sending ``frames`` (cycled) at ``rate`` frames/s (None: as fast as it can)."""

    def __init__(self, sock: socket.socket, frames: list[bytes], seconds: float, *, rate: float | None = None,
                 cpu: int | None = 0, max_frames: int = 50_000_000):
        ctx = mp.get_context("fork")
        self.q = ctx.Queue()
        self.proc = ctx.Process(target=_blast, args=(sock.fileno(), frames, seconds, max_frames, cpu, rate, self.q),
                                daemon=True)
        self.seconds = seconds

    def start(self) -> Generator:
        self.proc.start()
        return self

    def join(self) -> dict:
        try:
            res = self.q.get(timeout=self.seconds + 30)
        finally:
            self.proc.join(timeout=5)
            if self.proc.is_alive():
                self.proc.kill()
        return res

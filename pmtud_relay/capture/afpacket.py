"""AF_PACKET capture on one interface, with the PTB BPF filter attached in the kernel.

The socket is opened with protocol 0 (it receives nothing), the filter and options are
set, and only then is it bound to the interface with ETH_P_ALL, so no unfiltered
packet is ever queued. Frames whose VLAN tag was stripped into metadata get it back
(from the ring's frame header, or PACKET_AUXDATA), so the copy leaves on the VLAN the PTB
arrived on.

Frames are read from a PACKET_RX_RING (TPACKET_V2) shared with the kernel through mmap:
the kernel writes each frame into the next slot and hands it over by setting the slot's
status; ``drain()`` copies out every ready frame and hands the slots back, with no system
call per frame (the per-frame recvmsg() was most of the receive cost). V2, not V3: a V3
block is only handed over when full or when its timer fires (milliseconds), which would
delay a lone PTB; a V2 slot wakes the reader as soon as it is filled. Where the ring cannot
be used (no mmap support, or a CPU without x86's store ordering, where reading the status
word from Python gives no acquire barrier) capture falls back to one recvmsg() per frame.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import socket
import struct
import time
from collections.abc import Mapping

from pmtud_relay.capture import bpf
from pmtud_relay.core.frame import insert_vlan_tag
from pmtud_relay.core.shun import SAMPLE
from pmtud_relay.packetsocket import PACKET_RX_RING, SOL_PACKET, ring_slots, ring_supported, setup_ring

ETH_P_ALL = 0x0003
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 0x1

_AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
_CMSG_SPACE = socket.CMSG_SPACE(_AUXDATA.size)
MAX_FRAME = 65536
DEFAULT_RCVBUF = 4 << 20

#: struct tpacket2_hdr: status, len, snaplen, mac, net, sec, nsec, vlan_tci, vlan_tpid.
_TP2_HDR = struct.Struct("=IIIHHIIHH")
_TP2_PKTTYPE = 32 + 10  # sockaddr_ll follows at TPACKET_ALIGN(32); sll_pkttype is at +10
#: Ring geometry: 2 KiB slots hold any PTB (an ICMPv6 error is at most 1280 bytes of IP, an
#: ICMPv4 one 576 by RFC 1812; larger frames are counted as truncated), 1 MiB in all: 512
#: frames of burst between two reads, a whole default global_burst (500). The ring is mapped
#: into the process, so all of it is resident memory (docs/performance.md, "Footprint").
RING_FRAME_SIZE = 2048
RING_BLOCK_SIZE = 1 << 16
RING_BLOCKS = 16
#: Seconds of wake-ups that find no frame at the reader's slot before it resynchronises.
RESYNC_AFTER = 0.01


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def attach_filter(sock: socket.socket, program: list[bpf.Insn]) -> None:
    """SO_ATTACH_FILTER with a ``struct sock_fprog`` pointing at the packed program."""
    code = ctypes.create_string_buffer(bpf.pack(program))
    fprog = _SockFprog(len(program), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
    # The kernel copied the program; ``code`` may be freed now.


class PacketCapture:
    """A non-blocking PTB capture socket bound to one interface.

    ``ring``: read through a PACKET_RX_RING (None: where the CPU allows it, see the module
    docstring); False: one recvmsg() per frame. ``sample``: see :func:`blocklist_prefix`.
    """

    def __init__(
        self,
        ifname: str,
        rcvbuf: int = DEFAULT_RCVBUF,
        program: list[bpf.Insn] | None = None,
        ring: bool | None = None,
        sample: int | None = SAMPLE,
    ):
        self.ifname = ifname
        self.sample = sample  # 1 in this many frames of a held source still passes (None: none)
        if ring is None:
            ring = ring_supported()
        self.ring: mmap.mmap | None = None
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            attach_filter(sock, program if program is not None else bpf.ptb_filter())
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            if ring:
                try:
                    self.ring = _setup_ring(sock)
                except OSError:  # e.g. no CONFIG_PACKET_MMAP-era support, or no memory: fall back
                    self.ring = None
            if self.ring is None:
                sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
                except PermissionError:  # without CAP_NET_ADMIN: capped by net.core.rmem_max
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            sock.bind((ifname, ETH_P_ALL))
        except BaseException:
            if self.ring is not None:
                self.ring.close()
            sock.close()
            raise
        self.sock = sock
        self._program = program if program is not None else bpf.ptb_filter()
        self.blocked: frozenset[bytes] = frozenset()
        self._samples: dict[bytes, int | None] = {}  # held source -> N (None: every frame dropped)
        self.mac: bytes = sock.getsockname()[4]
        self.ifindex = socket.if_nametoindex(ifname)
        self.truncated = 0
        self.resyncs = 0
        self._idle_since: float | None = None
        self._slot = 0  # the next ring slot to look at
        self._slots = ring_slots(RING_BLOCK_SIZE, RING_BLOCKS, RING_FRAME_SIZE)
        if self.ring is not None:
            # The ring's drain replaces recvmsg()'s on this instance: no branch per wake-up.
            self.drain = self._drain_ring  # type: ignore[method-assign]

    #: Capture protocol (capture/base.py): set_blocked() drops held sources in the kernel filter.
    holds_sources = True

    def fileno(self) -> int:
        return self.sock.fileno()

    def pending_error(self) -> int:
        """The socket's pending error (SO_ERROR, read and cleared): ENETDOWN when the interface
        went down; getsockopt's own errno when the socket is unusable (closed: EBADF)."""
        try:
            return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as exc:
            return exc.errno or errno.EBADF

    def counters(self) -> dict[str, int]:
        """Cumulative counts of events that are not PTB decisions (exported as metrics)."""
        return {"truncated": self.truncated, "ring_resync": self.resyncs}

    def set_blocked(self, sources) -> None:
        """Drop frames from these outer IPv4/IPv6 sources in the kernel but a random one in N
        (the PTB filter with a prefix; see core/shun.py): ``sources`` maps each source to its N
        (core.shun.Shunner.samples), or is a plain set (N = ``self.sample``). Replacing a socket
        filter is atomic. The kernel strips the
        outer VLAN tag before the filter runs, so untagged and single-tagged frames are matched;
        a frame with two tags (QinQ) is not, and still reaches userspace and its rate limits
        (tests/test_shun.py checks both on a real kernel)."""
        if isinstance(sources, Mapping):
            samples = {s: (n if self.sample is not None else None) for s, n in sources.items()}
        else:
            samples = dict.fromkeys(sources, self.sample)
        if samples == self._samples:
            return
        attach_filter(self.sock, blocklist_prefix(samples) + self._program)
        self._samples = samples
        self.blocked = frozenset(samples)

    def drain(self, limit: int = 256) -> list[tuple[bytes, int]]:
        """Read up to ``limit`` queued frames without blocking: [(frame, pkttype), …]."""
        out = []
        recvmsg = self.sock.recvmsg
        for _ in range(limit):
            try:
                data, anc, flags, addr = recvmsg(MAX_FRAME, _CMSG_SPACE, socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.ENETDOWN, errno.ENXIO, errno.ENODEV):
                    break
                raise
            if flags & socket.MSG_TRUNC:
                self.truncated += 1
                continue
            for level, kind, cdata in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(cdata) >= _AUXDATA.size:
                    status, _len, _snap, _mac, _net, tci, tpid = _AUXDATA.unpack_from(cdata)
                    if status & TP_STATUS_VLAN_VALID:
                        data = insert_vlan_tag(data, tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci)
            out.append((data, addr[2]))
        return out

    def _drain_ring(self, limit: int = 256) -> list[tuple[bytes, int]]:
        """``drain`` for the ring: copy out up to ``limit`` ready frames, hand their slots back."""
        out: list[tuple[bytes, int]] = []
        append = out.append
        ring = self.ring
        assert ring is not None  # installed as drain only with a ring (once per wake-up)
        unpack = _TP2_HDR.unpack_from
        release = _U32_PACK
        slot = self._slot
        slots = self._slots
        for _ in range(limit):
            base = slot * RING_FRAME_SIZE
            status, length, snaplen, mac, _net, _sec, _nsec, tci, tpid = unpack(ring, base)
            if not status & TP_STATUS_USER:
                if not out:
                    resumed = self._check_stuck(slot)
                    if resumed != slot:  # resynchronised: read from there now, not at the next wake-up
                        slot = resumed
                        continue
                break
            if snaplen < length:  # larger than a slot: cannot be a usable PTB anyway
                self.truncated += 1
            else:
                start = base + mac
                data = ring[start : start + snaplen]
                if status & TP_STATUS_VLAN_VALID:
                    data = insert_vlan_tag(data, tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci)
                append((data, ring[base + _TP2_PKTTYPE]))
            release(ring, base, TP_STATUS_KERNEL)
            slot += 1
            if slot == slots:
                slot = 0
        self._slot = slot
        if out:
            self._idle_since = None
        return out

    def _check_stuck(self, slot: int) -> int:
        """A wake-up found no frame at ``slot``. Normally the kernel is still copying into it
        (it hands slots over in order, but frames on two CPUs can finish out of order) and the
        next wake-up finds it. Seen under overload on 6.18: the reader's slot stays empty
        while later slots hold frames, so every wake-up finds nothing and the event loop spins.
        If that lasts RESYNC_AFTER seconds, carry on from the oldest frame the ring holds
        (by kernel timestamp); ``resyncs`` counts it."""
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
            return slot
        if now - self._idle_since < RESYNC_AFTER:
            return slot
        self._idle_since = None
        ring = self.ring
        assert ring is not None  # only the ring's drain asks
        oldest = None
        for i in range(self._slots):
            status, _l, _s, _m, _n, sec, nsec, _t, _p = _TP2_HDR.unpack_from(ring, i * RING_FRAME_SIZE)
            if status & TP_STATUS_USER and (oldest is None or (sec, nsec) < oldest[0]):
                oldest = ((sec, nsec), i)
        if oldest is None:
            return slot
        self.resyncs += 1
        return oldest[1]

    def close(self) -> None:
        if self.ring is not None:
            try:
                self.ring.close()
            except BufferError:  # a memoryview still points into it; the socket close unmaps nothing
                pass
        self.sock.close()


_U32_PACK = struct.Struct("=I").pack_into


def blocklist_prefix(sources, sample: int | None = SAMPLE) -> list[bpf.Insn]:
    """BPF instructions that drop frames from ``sources`` (4- or 16-byte outer IP sources)
    whose EtherType at offset 12 is IPv4/IPv6 as the filter sees them (the kernel has stripped
    the outer VLAN tag by then: untagged and single-tagged frames), and fall through to whatever
    follows for every other frame.

    One in N frames of a held source, picked by the kernel's random ancillary load (the low
    log2(N) bits of a fresh 32-bit random number all zero), falls through too, so a held router's
    genuine PTBs keep a path to its bucket (core/shun.py). ``sources`` maps each source to its N
    (a power of two >= 2, or None: drop every frame), or is a plain set that takes ``sample``."""
    if isinstance(sources, Mapping):
        samples = dict(sources)
    else:
        samples = dict.fromkeys(sources, sample)
    for n in samples.values():
        if n is not None and (n < 2 or n & (n - 1)):
            raise ValueError(f"sample must be a power of two >= 2, got {n}")

    def target(src: bytes) -> str:
        n = samples[src]
        return "drop" if n is None else f"held_{n}"

    v4 = sorted(s for s in samples if len(s) == 4)
    v6 = sorted(s for s in samples if len(s) == 16)
    if not v4 and not v6:
        return []
    # Conditional jumps reach 255 instructions at most; every jump past a list of sources is a
    # JA (32-bit offset), so any number of held sources assembles (shun_max_sources has no cap).
    a = bpf._Asm()
    a.op(bpf.LD | bpf.H | bpf.ABS, 12)
    a.jump(bpf.JMP | bpf.JEQ | bpf.K, 0x86DD, None, "not_v6")
    a.goto("v6")
    a.label("not_v6")
    a.jump(bpf.JMP | bpf.JEQ | bpf.K, 0x0800, "v4", None)
    a.goto("pass")
    a.label("v4")
    if v4:
        a.op(bpf.LD | bpf.W | bpf.ABS, 14 + 12)
        for i, src in enumerate(v4):
            a.jump(bpf.JMP | bpf.JEQ | bpf.K, int.from_bytes(src, "big"), None, f"v4_{i + 1}")
            a.goto(target(src))
            a.label(f"v4_{i + 1}")
    a.goto("pass")
    a.label("v6")
    for i, src in enumerate(v6):
        nxt = f"v6_{i + 1}"
        for w in range(4):
            a.op(bpf.LD | bpf.W | bpf.ABS, 14 + 8 + 4 * w)
            word = int.from_bytes(src[4 * w : 4 * w + 4], "big")
            a.jump(bpf.JMP | bpf.JEQ | bpf.K, word, None, nxt)
        a.goto(target(src))
        a.label(nxt)
    a.goto("pass")
    for n in sorted({n for n in samples.values() if n is not None}):
        a.label(f"held_{n}")
        a.op(bpf.LD | bpf.W | bpf.ABS, bpf.SKF_AD_OFF + bpf.SKF_AD_RANDOM)
        a.jump(bpf.JMP | bpf.JSET | bpf.K, n - 1, "drop", "pass")
    a.label("drop")
    a.op(bpf.RET | bpf.K, 0)
    a.label("pass")
    prog = a.assemble()
    return prog


def _setup_ring(sock: socket.socket) -> mmap.mmap:
    """TPACKET_V2 receive ring of RING_BLOCKS blocks; returns the mapping."""
    return setup_ring(sock, PACKET_RX_RING, RING_BLOCK_SIZE, RING_BLOCKS, RING_FRAME_SIZE)

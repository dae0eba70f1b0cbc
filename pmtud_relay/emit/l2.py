"""L2 emitter: a send-only AF_PACKET socket per interface.

The socket is bound with protocol 0, so it never receives. Send errors are returned
as errno values for the caller to count; they are never fatal.

Copies are written into a PACKET_TX_RING (TPACKET_V2) shared with the kernel through mmap
and sent in batches: :meth:`L2Emitter.queue` fills the next slot, :meth:`L2Emitter.flush`
makes one send() call that transmits every filled slot, so a wake-up that relays many PTBs
costs one system call instead of one per copy. ``queue`` flushes by itself every
:data:`FLUSH_EVERY` copies, so a copy never waits behind more than that many others.
``send`` is queue-and-flush, for single frames. Without the ring (a CPU without x86's
store ordering, where a store from Python to the status word gives no release barrier; or
a kernel that refuses the ring), every copy is one send() as before.
"""

from __future__ import annotations

import errno
import mmap
import platform
import socket
import struct

SOL_PACKET = 263
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_VERSION = 10
TPACKET_V2 = 1
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_SENDING = 2
TP_STATUS_WRONG_FORMAT = 4

RING_FRAME_SIZE = 2048
RING_BLOCK_SIZE = 1 << 16
RING_BLOCKS = 16  # 512 slots, 1 MiB
#: Frame data starts at TPACKET2_HDRLEN - sizeof(struct sockaddr_ll) = 52 - 20.
_DATA = 32
MAX_RING_FRAME = RING_FRAME_SIZE - _DATA
#: Copies queued before ``queue`` flushes on its own (bounds the wait of the first one).
FLUSH_EVERY = 32

_TPACKET_REQ = struct.Struct("=IIII")
_STATUS = struct.Struct("=I")
_LENS = struct.Struct("=II")  # tp_len, tp_snaplen
_RING_ARCHES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


class L2Emitter:
    def __init__(self, ifname: str, ring: bool | None = None):
        self.ifname = ifname
        if ring is None:
            ring = platform.machine().lower() in _RING_ARCHES
        self.ring: mmap.mmap | None = None
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            if ring:
                try:
                    sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
                    sock.setsockopt(SOL_PACKET, PACKET_LOSS, 1)  # skip, never stall on, a slot the kernel rejects
                    frames = RING_BLOCK_SIZE // RING_FRAME_SIZE * RING_BLOCKS
                    sock.setsockopt(SOL_PACKET, PACKET_TX_RING,
                                    _TPACKET_REQ.pack(RING_BLOCK_SIZE, RING_BLOCKS, RING_FRAME_SIZE, frames))
                    self.ring = mmap.mmap(sock.fileno(), RING_BLOCK_SIZE * RING_BLOCKS, mmap.MAP_SHARED,
                                          mmap.PROT_READ | mmap.PROT_WRITE)
                except OSError:
                    sock.close()
                    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                    self.ring = None
            sock.bind((ifname, 0))
            sock.setblocking(False)
        except BaseException:
            if self.ring is not None:
                self.ring.close()
            sock.close()
            raise
        self.sock = sock
        self.mac: bytes = sock.getsockname()[4]
        self._slots = RING_BLOCK_SIZE // RING_FRAME_SIZE * RING_BLOCKS
        self._slot = 0
        self._pending = 0
        self._direct: socket.socket | None = None  # for frames larger than a ring slot
        self.rejected = 0  # slots the kernel marked TP_STATUS_WRONG_FORMAT (counted as EMSGSIZE)

    def send(self, frame: bytes) -> int:
        """Send one frame now; return 0 or the errno of the failure (ENOBUFS, ENETDOWN, …)."""
        if self.ring is None:
            try:
                self.sock.send(frame)
            except OSError as exc:
                return exc.errno or -1
            return 0
        err = self.queue(frame)
        return self.flush() or err

    def queue(self, frame: bytes) -> int:
        """Put ``frame`` in the ring to be sent by the next :meth:`flush`; return 0 or an errno
        (the copy is dropped: the ring is full of frames the kernel has not sent yet)."""
        ring = self.ring
        if ring is None:
            return self.send(frame)
        n = len(frame)
        if n > MAX_RING_FRAME:
            return self.flush() or self._send_direct(frame)
        base = self._slot * RING_FRAME_SIZE
        status = _STATUS.unpack_from(ring, base)[0]
        err = 0
        if status != TP_STATUS_AVAILABLE:
            if status & TP_STATUS_WRONG_FORMAT:  # an earlier copy the kernel refused and skipped
                self.rejected += 1
                err = errno.EMSGSIZE
            else:  # the kernel has not sent this slot's copy yet: push what is queued, look again
                err = self.flush()
                status = _STATUS.unpack_from(ring, base)[0]
                if status & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING):
                    return err or errno.ENOBUFS
        ring[base + _DATA : base + _DATA + n] = frame
        _LENS.pack_into(ring, base + 4, n, n)
        _STATUS.pack_into(ring, base, TP_STATUS_SEND_REQUEST)  # last: hands the slot to the kernel
        slot = self._slot + 1
        self._slot = 0 if slot == self._slots else slot
        self._pending += 1
        if self._pending >= FLUSH_EVERY:
            return self.flush() or err
        return err

    def flush(self) -> int:
        """Send every queued copy with one system call; return 0 or the errno of a failure."""
        if not self._pending:
            return 0
        self._pending = 0
        try:
            self.sock.send(b"")
        except OSError as exc:
            return exc.errno or -1
        return 0

    def _send_direct(self, frame: bytes) -> int:
        if self._direct is None:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                s.bind((self.ifname, 0))
                s.setblocking(False)
            except BaseException:
                s.close()
                raise
            self._direct = s
        try:
            self._direct.send(frame)
        except OSError as exc:
            return exc.errno or -1
        return 0

    def close(self) -> None:
        if self.ring is not None:
            self.flush()
            try:
                self.ring.close()
            except BufferError:
                pass
        if self._direct is not None:
            self._direct.close()
        self.sock.close()

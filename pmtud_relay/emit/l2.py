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

A copy larger than the interface takes (MTU + 14 bytes, + 4 with one VLAN tag) is refused
here with EMSGSIZE, before the kernel sees it: the ring runs with PACKET_LOSS (a bad slot
must not stall the ones behind it), and with it the kernel drops such a slot silently (no
error, no count) and logs a line for each one. Copies leave the interface they arrived on,
so this takes an MTU lowered in between, or a frame with two tags; :meth:`L2Emitter.refresh_mtu`
re-reads the MTU (the daemon calls it on every link event of the interface).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import socket
import struct

from pmtud_relay.packetsocket import PACKET_TX_RING, ring_slots, ring_supported, setup_ring

TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_SENDING = 2
SIOCGIFMTU = 0x8921

RING_FRAME_SIZE = 2048
RING_BLOCK_SIZE = 1 << 16
RING_BLOCKS = 4  # 128 slots, 256 KiB: four flushes' worth (FLUSH_EVERY); a full ring drops a copy (ENOBUFS)
#: Frame data starts at TPACKET2_HDRLEN - sizeof(struct sockaddr_ll) = 52 - 20.
_DATA = 32
MAX_RING_FRAME = RING_FRAME_SIZE - _DATA
#: Copies queued before ``queue`` flushes on its own (bounds the wait of the first one).
FLUSH_EVERY = 32

_STATUS = struct.Struct("=I")
_LENS = struct.Struct("=II")  # tp_len, tp_snaplen
_IFREQ_MTU = struct.Struct("16si20x")  # struct ifreq: name, ifr_mtu; 40 bytes in all
_VLAN_TPIDS = (b"\x81\x00", b"\x88\xa8")


class L2Emitter:
    def __init__(self, ifname: str, ring: bool | None = None):
        self.ifname = ifname
        if ring is None:
            ring = ring_supported()
        self.ring: mmap.mmap | None = None
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            if ring:
                try:
                    # PACKET_LOSS: skip, never stall on, a slot the kernel rejects
                    self.ring = setup_ring(sock, PACKET_TX_RING, RING_BLOCK_SIZE, RING_BLOCKS, RING_FRAME_SIZE,
                                           loss=True)
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
        self._slots = ring_slots(RING_BLOCK_SIZE, RING_BLOCKS, RING_FRAME_SIZE)
        self._slot = 0
        self._pending = 0
        self._direct: socket.socket | None = None  # for frames larger than a ring slot
        self._max_len = 0  # the longest untagged frame the interface takes (MTU + 14)
        self.refresh_mtu()

    def refresh_mtu(self) -> None:
        """Read the interface's MTU again (SIOCGIFMTU); on failure keep what was known."""
        try:
            req = _IFREQ_MTU.pack(self.ifname.encode()[:15], 0)
            mtu = _IFREQ_MTU.unpack(fcntl.ioctl(self.sock.fileno(), SIOCGIFMTU, req))[1]
        except OSError:
            if not self._max_len:
                self._max_len = 65535  # unknown: leave it to the kernel
            return
        self._max_len = mtu + 14

    def _too_long(self, frame: bytes, n: int) -> bool:
        """Longer than the interface takes: MTU + 14, or MTU + 18 with a VLAN tag."""
        return n > self._max_len + 4 or frame[12:14] not in _VLAN_TPIDS

    def send(self, frame: bytes) -> int:
        """Send one frame now; return 0 or the errno of the failure (ENOBUFS, ENETDOWN, …)."""
        if self.ring is None:
            n = len(frame)
            if n > self._max_len and self._too_long(frame, n):
                return errno.EMSGSIZE
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
        if n > self._max_len and self._too_long(frame, n):
            return errno.EMSGSIZE  # the kernel would drop it silently (PACKET_LOSS), see above
        if n > MAX_RING_FRAME:
            return self.flush() or self._send_direct(frame)
        base = self._slot * RING_FRAME_SIZE
        err = 0
        if _STATUS.unpack_from(ring, base)[0] != TP_STATUS_AVAILABLE:
            # The kernel has not sent this slot's copy yet: push what is queued, look again.
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

"""Packet-socket rings: the TPACKET_V2 ring set-up shared by capture and the L2 emitter.

Capture (:mod:`pmtud_relay.capture.afpacket`) reads frames from a ``PACKET_RX_RING``, the L2
emitter (:mod:`pmtud_relay.emit.l2`) writes copies into a ``PACKET_TX_RING``; both are
``TPACKET_V2`` rings of fixed-size slots mapped into the process with ``mmap``, and both are
only used where reading or writing a slot's status word from Python is ordered as the kernel
needs it (x86's store ordering: elsewhere Python gives no acquire or release barrier, and
the callers fall back to one system call per frame). Each caller keeps its own geometry, the
slot layout it reads or writes and its fallback; this module only asks for the ring.
"""

from __future__ import annotations

import mmap
import platform
import socket
import struct

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_LOSS = 14
TPACKET_V2 = 1

_TPACKET_REQ = struct.Struct("=IIII")  # struct tpacket_req: block size, blocks, frame size, frames
#: Machines whose store ordering lets Python read and write a slot's status word safely.
RING_ARCHES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


def ring_supported() -> bool:
    """True where a ring may be used: this CPU's memory ordering makes slot hand-over safe."""
    return platform.machine().lower() in RING_ARCHES


def ring_slots(block_size: int, blocks: int, frame_size: int) -> int:
    """How many frame slots a ring of ``blocks`` blocks of ``block_size`` bytes holds."""
    return block_size // frame_size * blocks


def setup_ring(sock: socket.socket, ring: int, block_size: int, blocks: int, frame_size: int,
               loss: bool = False) -> mmap.mmap:
    """Give ``sock`` a TPACKET_V2 ring (``ring``: PACKET_RX_RING or PACKET_TX_RING) and map it.

    ``loss``: PACKET_LOSS, so a transmit slot the kernel rejects is skipped rather than
    stalling the ones behind it. Raises OSError when the kernel refuses the ring (no memory,
    no support) or the mapping fails; the socket may then have options set and the caller
    falls back (or opens a fresh socket)."""
    sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
    if loss:
        sock.setsockopt(SOL_PACKET, PACKET_LOSS, 1)
    frames = ring_slots(block_size, blocks, frame_size)
    sock.setsockopt(SOL_PACKET, ring, _TPACKET_REQ.pack(block_size, blocks, frame_size, frames))
    return mmap.mmap(sock.fileno(), block_size * blocks, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

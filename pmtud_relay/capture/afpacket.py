"""AF_PACKET capture on one interface, with the PTB BPF filter attached in the kernel.

The socket is opened with protocol 0 (it receives nothing), the filter and options are
set, and only then is it bound to the interface with ETH_P_ALL, so no unfiltered
packet is ever queued. Frames whose VLAN tag was stripped into metadata get it back
from PACKET_AUXDATA, so the copy leaves on the VLAN the PTB arrived on.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct

from pmtud_relay.capture import bpf
from pmtud_relay.core.frame import insert_vlan_tag

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40

_AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
_CMSG_SPACE = socket.CMSG_SPACE(_AUXDATA.size)
MAX_FRAME = 65536
DEFAULT_RCVBUF = 4 << 20


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def attach_filter(sock: socket.socket, program: list[bpf.Insn]) -> None:
    """SO_ATTACH_FILTER with a ``struct sock_fprog`` pointing at the packed program."""
    code = ctypes.create_string_buffer(bpf.pack(program))
    fprog = _SockFprog(len(program), ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
    # The kernel copied the program; ``code`` may be freed now.


class PacketCapture:
    """A non-blocking PTB capture socket bound to one interface."""

    def __init__(self, ifname: str, rcvbuf: int = DEFAULT_RCVBUF, program: list[bpf.Insn] | None = None):
        self.ifname = ifname
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            attach_filter(sock, program if program is not None else bpf.ptb_filter())
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:  # without CAP_NET_ADMIN: capped by net.core.rmem_max
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            sock.bind((ifname, ETH_P_ALL))
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.mac: bytes = sock.getsockname()[4]
        self.ifindex = socket.if_nametoindex(ifname)
        self.truncated = 0

    def fileno(self) -> int:
        return self.sock.fileno()

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

    def close(self) -> None:
        self.sock.close()

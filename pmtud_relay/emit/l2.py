"""L2 emitter: a send-only AF_PACKET socket per interface.

The socket is bound with protocol 0, so it never receives. Send errors are returned
as errno values for the caller to count; they are never fatal.
"""

from __future__ import annotations

import socket


class L2Emitter:
    def __init__(self, ifname: str):
        self.ifname = ifname
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.bind((ifname, 0))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.mac: bytes = sock.getsockname()[4]

    def send(self, frame: bytes) -> int:
        """Send one frame; return 0 or the errno of the failure (ENOBUFS, ENETDOWN, …)."""
        try:
            self.sock.send(frame)
        except OSError as exc:
            return exc.errno or -1
        return 0

    def close(self) -> None:
        self.sock.close()

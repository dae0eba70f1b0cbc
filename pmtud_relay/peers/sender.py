"""Peer emitter: signed PTBs as UDP datagrams to peers, one non-blocking socket per family.

Unconnected sockets and ``sendto`` with ``MSG_DONTWAIT``: a send never blocks, so a dead,
filtered or unroutable peer costs one failed system call (counted) and never delays the
others. ICMP errors from peers are not read (unconnected UDP sockets do not report them).

The same sockets receive the peers' acknowledgements (a peer answers the address and port a
datagram came from): :meth:`open_all` opens them up front so the service can watch them, and
:meth:`set_filter` gives them the listener's in-kernel filter (magic + peer addresses).
"""

from __future__ import annotations

import errno
import socket

DEFAULT_SNDBUF = 1 << 20


class PeerEmitter:
    def __init__(self, sndbuf: int = DEFAULT_SNDBUF):
        self._socks: dict[int, socket.socket | None] = {}
        self._sndbuf = sndbuf
        self.open_errors: dict[int, int] = {}

    def _sock(self, family: int) -> socket.socket | None:
        if family in self._socks:
            return self._socks[family]
        af = socket.AF_INET6 if family == 6 else socket.AF_INET
        try:
            sock = socket.socket(af, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:  # e.g. IPv6 disabled on this host
            self.open_errors[family] = exc.errno or -1
            self._socks[family] = None
            return None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._sndbuf)
        except OSError:
            pass
        self._socks[family] = sock
        return sock

    def open_all(self) -> list[socket.socket]:
        """Open both families' sockets now (a family the host lacks is skipped); return them."""
        return [s for s in (self._sock(4), self._sock(6)) if s is not None]

    def set_filter(self, program) -> None:
        """Attach a classic BPF program (capture/peer_filter.py) to every open socket."""
        from pmtud_relay.capture.afpacket import attach_filter

        for sock in self._socks.values():
            if sock is not None:
                attach_filter(sock, program)

    def send(self, datagram: bytes, address: str, port: int) -> int:
        """Send one datagram; 0 or the errno of the failure (EAGAIN, ENETUNREACH, …)."""
        family = 6 if ":" in address else 4
        sock = self._sock(family)
        if sock is None:
            return self.open_errors.get(family) or errno.EAFNOSUPPORT
        try:
            sock.sendto(datagram, socket.MSG_DONTWAIT, (address, port))
        except OSError as exc:
            return exc.errno or -1
        return 0

    def close(self) -> None:
        for sock in self._socks.values():
            if sock is not None:
                sock.close()
        self._socks.clear()

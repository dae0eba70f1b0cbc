"""The owner lookup's I/O: two plain netlink sockets, one request and one answer each.

``NETLINK_SOCK_DIAG`` (inet_diag exact lookup, ``tcp_info`` included) and ``NETLINK_ROUTE``
(``RTM_GETROUTE``). Neither needs a capability: inet_diag answers any process about any
socket of its network namespace (only a few attributes, such as the socket mark, are reserved
to CAP_NET_ADMIN, and they are not asked for), and a route lookup is open to everyone
(tests/test_nonroot_caps.py checks both as an unprivileged user). The kernel answers a netlink
request inside the ``send()`` that carries it, so the sockets are non-blocking and a missing
answer is an error, never a wait.
"""

from __future__ import annotations

import errno
import socket
from typing import NamedTuple

from . import wire

_RCV = 65536


class LookupError_(OSError):
    """The kernel gave no usable answer (other than "no such socket")."""


class Owner(NamedTuple):
    state: int
    uid: int
    inode: int
    pmtu: int | None


class KernelLookup:
    """Owner and path-MTU lookups in this network namespace."""

    def __init__(self) -> None:
        flags = socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        self._diag = socket.socket(socket.AF_NETLINK, flags, wire.NETLINK_SOCK_DIAG)
        try:
            self._route = socket.socket(socket.AF_NETLINK, flags, wire.NETLINK_ROUTE)
        except BaseException:
            self._diag.close()
            raise
        self._seq = 0

    def _ask(self, sock: socket.socket, request: bytes) -> bytes:
        try:
            sock.send(request)
            return sock.recv(_RCV)
        except BlockingIOError as exc:
            raise LookupError_(errno.ETIMEDOUT, "no answer from the kernel") from exc

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def owner(self, family: int, proto: int, local: bytes, lport: int, remote: bytes,
              rport: int) -> Owner | None:
        """The socket whose local side is local:lport and remote side remote:rport, or None."""
        seq = self._next_seq()
        data = self._ask(self._diag, wire.diag_request(family, proto, local, lport, remote, rport, seq))
        answer = wire.parse_diag_answer(data, seq)
        if answer is None:
            raise LookupError_(errno.EBADMSG, "unreadable sock_diag answer")
        if isinstance(answer, int):
            if answer == errno.ENOENT:
                return None
            raise LookupError_(answer, "sock_diag: " + errno.errorcode.get(answer, str(answer)))
        return Owner(*answer)

    def route_mtu(self, family: int, src: bytes, dst: bytes) -> int | None:
        """The path MTU the kernel holds for dst from src (0: none learnt), None on error."""
        seq = self._next_seq()
        try:
            data = self._ask(self._route, wire.route_request(family, src, dst, seq))
        except (LookupError_, OSError):
            return None
        return wire.parse_route_mtu(data, seq)

    def close(self) -> None:
        self._diag.close()
        self._route.close()

"""Peer receiver: UDP listener for relayed PTBs, and the loopback injector that hands an
accepted PTB to this host's own receive path.

Injection uses a raw IP socket with the header included: ``AF_INET/SOCK_RAW/IPPROTO_RAW`` (which
implies ``IP_HDRINCL``) for IPv4, ``AF_INET6/SOCK_RAW/IPPROTO_RAW`` (which implies
``IPV6_HDRINCL``, Linux >= 4.5) for IPv6. The PTB is sent, unchanged, to its own outer
destination, a VIP of this host: the route is the ``local`` table's, the packet loops through
``lo`` into ``ip_rcv``/``ipv6_rcv`` → ICMP → the owning socket's error handler, and the PMTU
drops exactly as if the router's PTB had arrived here. It never touches a NIC, so the
AF_PACKET capture on the uplinks never sees it, and it arrives with the output route attached,
so reverse-path filtering does not apply. Why not TUN: docs/peers.md.
"""

from __future__ import annotations

import errno
import socket
import struct

from pmtud_relay.capture.afpacket import attach_filter
from pmtud_relay.peers.filter import PeerFilter
from pmtud_relay.peers.inbox import DEFAULT_PORT

MAX_DATAGRAM = 65535
DEFAULT_RCVBUF = 1 << 20
IPV6_HDRINCL = 36  # linux/in6.h; IPPROTO_RAW sockets have it on already
IP_PKTINFO = 8  # linux/in.h (not in Python's socket module before 3.13 on every build)
_IN_PKTINFO = struct.Struct("=I4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
_IN6_PKTINFO = struct.Struct("=16sI")  # ipi6_addr, ipi6_ifindex
_ANCBUF = socket.CMSG_SPACE(_IN6_PKTINFO.size) + socket.CMSG_SPACE(_IN_PKTINFO.size)


def parse_listen(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``ADDR:PORT``, ``[V6ADDR]:PORT``, ``ADDR`` or ``:PORT`` → (address, port).
    An empty address means every address (dual-stack ``::`` when IPv6 works)."""
    import ipaddress

    text = text.strip()
    port = default_port
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [ADDRESS]:PORT")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        host, port_text = text, ""
    else:
        host, _, port_text = text.partition(":")
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{text!r}: port must be within 1..65535")
        port = int(port_text)
    if host in ("", "*"):
        return "", port
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None


class PeerListener:
    """Non-blocking UDP sockets bound to the listen addresses, each with the in-kernel peer filter
    (capture/peer_filter.py) attached before it is bound, so nothing unfiltered is ever queued."""

    def __init__(self, addresses: list[tuple[str, int]], rcvbuf: int = DEFAULT_RCVBUF,
                 peer_filter: PeerFilter | None = None):
        self.socks: list[socket.socket] = []
        self.filter = peer_filter
        try:
            for host, port in addresses:
                self.socks.append(self._bind(host, port, rcvbuf, peer_filter))
        except BaseException:
            self.close()
            raise

    def set_filter(self, peer_filter: PeerFilter) -> None:
        """Replace every socket's filter (atomic per socket). OSError if the kernel refuses it
        (e.g. ENOMEM: a large program over net.core.optmem_max); the old filter stays then."""
        for sock in self.socks:
            attach_filter(sock, peer_filter.program)
        self.filter = peer_filter

    @staticmethod
    def _bind(host: str, port: int, rcvbuf: int, peer_filter: PeerFilter | None = None) -> socket.socket:
        sock = PeerListener._open(host, port, peer_filter)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        except OSError:
            pass
        # The local address each datagram was sent to (drain_from), so that an acknowledgement
        # leaves from it (reply) and not from whatever the route back would pick on a host
        # with several addresses. A dual-stack socket reports IPv4 ones as v4-mapped.
        try:
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        except OSError:
            pass
        return sock

    @staticmethod
    def _open(host: str, port: int, peer_filter: PeerFilter | None) -> socket.socket:
        def filtered(sock: socket.socket) -> socket.socket:
            if peer_filter is not None:
                attach_filter(sock, peer_filter.program)
            return sock

        if host == "":
            try:  # dual-stack wildcard: IPv4 peers arrive as ::ffff:a.b.c.d
                sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            except OSError:
                sock = None
            if sock is not None:
                try:
                    filtered(sock)
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    sock.bind(("::", port))
                except OSError as exc:
                    sock.close()
                    if exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                        raise
                    sock = None
            if sock is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
                try:
                    filtered(sock)
                    sock.bind(("0.0.0.0", port))
                except BaseException:
                    sock.close()
                    raise
        else:
            af = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(af, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            try:
                filtered(sock)
                if af == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
            except BaseException:
                sock.close()
                raise
        return sock

    def bound(self) -> list[str]:
        out = []
        for s in self.socks:
            host, port = s.getsockname()[:2]
            out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return out

    @staticmethod
    def drain(sock: socket.socket, limit: int = 256) -> list[tuple[bytes, str, int]]:
        """Up to ``limit`` queued datagrams: [(data, sender address, sender port), …]."""
        out = []
        for _ in range(limit):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP errors queued on the socket, e.g. ECONNREFUSED
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                raise
            host = addr[0]
            if host.startswith("::ffff:") and "." in host:
                host = host[7:]
            out.append((data, host, addr[1]))
        return out

    @staticmethod
    def drain_from(sock: socket.socket, limit: int = 256) -> list[tuple[bytes, str, int, tuple | None]]:
        """:meth:`drain`, plus the local address each datagram was sent to: ``(packed address,
        interface index)`` as :meth:`reply` takes it, or None if the kernel did not say."""
        out = []
        for _ in range(limit):
            try:
                data, anc, _flags, addr = sock.recvmsg(MAX_DATAGRAM, _ANCBUF)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                raise
            local = None
            for level, kind, cdata in anc:
                if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(cdata) >= _IN6_PKTINFO.size:
                    local = _IN6_PKTINFO.unpack_from(cdata)
                elif level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(cdata) >= _IN_PKTINFO.size:
                    ifindex, _spec, dst = _IN_PKTINFO.unpack_from(cdata)
                    local = (dst, ifindex)
            host = addr[0]
            if host.startswith("::ffff:") and "." in host:
                host = host[7:]
            out.append((data, host, addr[1], local))
        return out

    @staticmethod
    def reply(sock: socket.socket, data: bytes, host: str, port: int, local: tuple | None) -> int:
        """Send ``data`` to ``host``:``port`` through ``sock``, from ``local`` (as
        :meth:`drain_from` gave it; None: the kernel's choice). 0 or errno."""
        anc = []
        if sock.family == socket.AF_INET6:
            dest = "::ffff:" + host if "." in host else host
            if local is not None and len(local[0]) == 16:
                addr, ifindex = local
                link_local = addr[0] == 0xFE and addr[1] & 0xC0 == 0x80
                anc.append((socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                            _IN6_PKTINFO.pack(addr, ifindex if link_local else 0)))
        else:
            dest = host
            if local is not None and len(local[0]) == 4:
                anc.append((socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, local[0], bytes(4))))
        try:
            sock.sendmsg([data], anc, socket.MSG_DONTWAIT, (dest, port))
        except OSError as exc:
            return exc.errno or -1
        return 0

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []


class LoopbackInjector:
    """Raw header-included IP sockets that deliver a PTB to a local address via ``lo``."""

    def __init__(self, families: tuple[int, ...] = (4, 6)):
        self._socks: dict[int, socket.socket] = {}
        self.unavailable: dict[int, str] = {}
        try:
            for family in families:
                self._open(family)
        except BaseException:
            self.close()
            raise

    def _open(self, family: int) -> None:
        af = socket.AF_INET6 if family == 6 else socket.AF_INET
        try:
            sock = socket.socket(af, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, socket.IPPROTO_RAW)
        except PermissionError:
            raise
        except OSError as exc:  # no IPv6 on this host: IPv4 injection still works
            self.unavailable[family] = exc.strerror or str(exc)
            return
        try:
            if family == 6:  # implied by IPPROTO_RAW since Linux 4.5; say so explicitly
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_HDRINCL, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            sock.shutdown(socket.SHUT_RD)  # IPPROTO_RAW receives nothing; make it explicit
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                sock.close()
                self.unavailable[family] = exc.strerror or str(exc)
                return
        self._socks[family] = sock

    def inject(self, packet: bytes, family: int, dst: str) -> int:
        """Send ``packet`` (a complete IP packet) to ``dst`` (a local address). 0 or errno."""
        sock = self._socks.get(family)
        if sock is None:
            return errno.EAFNOSUPPORT
        try:
            sock.sendto(packet, (dst, 0))
        except OSError as exc:
            return exc.errno or -1
        return 0

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks.clear()

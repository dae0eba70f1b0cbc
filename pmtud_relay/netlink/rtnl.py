"""rtnetlink dumps (links, addresses, routes) on a plain ``AF_NETLINK`` socket.

The daemon's own host facts (service addresses, the default-route interface) need three dumps
and a handful of attributes each; this reads them with ``struct``, like ``linkwatch.py`` reads
link events, so the daemon does not load pyroute2 (about 11 MiB of resident memory on Debian
12's Python 3.11, see docs/performance.md). Dumps need no privilege.

:func:`parse_messages` is total: any bytes give the messages it could read, never an exception.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Iterator, NamedTuple

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
IFLA_IFNAME = 3
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_PRIORITY = 6
RTA_MULTIPATH = 9
RTA_TABLE = 15
RT_TABLE_MAIN = 254
RTN_UNICAST = 1

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")  # len, type
_RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex
_ERRNO = struct.Struct("=i")


class NetlinkError(OSError):
    pass


class Link(NamedTuple):
    index: int
    name: str | None
    kind: str | None  # IFLA_INFO_KIND: "dummy", "veth", "vlan", … (None: a plain device)


class Address(NamedTuple):
    index: int
    family: int
    prefixlen: int
    address: bytes  # IFA_LOCAL, else IFA_ADDRESS (4 or 16 bytes)


class Route(NamedTuple):
    family: int
    dst_len: int
    table: int
    type: int
    priority: int
    oifs: tuple[int, ...]  # RTA_OIF, or every next hop's of RTA_MULTIPATH


def _align(n: int) -> int:
    return (n + 3) & ~3


def attributes(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type without NLA flags, value start, value end) of each attribute in data[start:end]."""
    a = start
    while end - a >= _RTATTR.size:
        alen, akind = _RTATTR.unpack_from(data, a)
        if alen < _RTATTR.size or alen > end - a:
            return
        yield akind & 0x3FFF, a + _RTATTR.size, a + alen
        a += _align(alen)


def _text(data: bytes, start: int, end: int) -> str | None:
    raw = bytes(data[start:end]).split(b"\0", 1)[0]
    try:
        return raw.decode("ascii") or None
    except UnicodeDecodeError:
        return None


def parse_messages(data: bytes) -> Iterator[tuple[int, bytes, int, int]]:
    """(type, data, body start, end) of each netlink message; stops at the first inconsistent length."""
    n = len(data)
    off = 0
    while n - off >= _NLMSGHDR.size:
        length, kind = _NLMSGHDR.unpack_from(data, off)[:2]
        if length < _NLMSGHDR.size or length > n - off:
            return
        yield kind, data, off + _NLMSGHDR.size, off + length
        off += _align(length)


def parse_link(data: bytes, body: int, end: int) -> Link | None:
    if end - body < _IFINFOMSG.size:
        return None
    index = _IFINFOMSG.unpack_from(data, body)[2]
    name = kind = None
    for akind, s, e in attributes(data, body + _IFINFOMSG.size, end):
        if akind == IFLA_IFNAME:
            name = _text(data, s, e)
        elif akind == IFLA_LINKINFO:
            for ikind, s2, e2 in attributes(data, s, e):
                if ikind == IFLA_INFO_KIND:
                    kind = _text(data, s2, e2)
    return Link(index, name, kind)


def parse_address(data: bytes, body: int, end: int) -> Address | None:
    if end - body < _IFADDRMSG.size:
        return None
    family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(data, body)
    local = address = None
    for akind, s, e in attributes(data, body + _IFADDRMSG.size, end):
        if akind == IFA_LOCAL:
            local = bytes(data[s:e])
        elif akind == IFA_ADDRESS:
            address = bytes(data[s:e])
    value = local or address
    want = 4 if family == socket.AF_INET else 16 if family == socket.AF_INET6 else 0
    if value is None or len(value) != want:
        return None
    return Address(index, family, prefixlen, value)


def parse_route(data: bytes, body: int, end: int) -> Route | None:
    if end - body < _RTMSG.size:
        return None
    family, dst_len, _src_len, _tos, table, _proto, _scope, rtype, _flags = _RTMSG.unpack_from(data, body)
    priority = 0
    oifs: list[int] = []
    for akind, s, e in attributes(data, body + _RTMSG.size, end):
        if akind == RTA_TABLE and e - s >= 4:
            table = struct.unpack_from("=I", data, s)[0]
        elif akind == RTA_PRIORITY and e - s >= 4:
            priority = struct.unpack_from("=I", data, s)[0]
        elif akind == RTA_OIF and e - s >= 4:
            oifs.append(struct.unpack_from("=i", data, s)[0])
        elif akind == RTA_MULTIPATH:
            h = s
            while e - h >= _RTNEXTHOP.size:
                hlen, _f, _hops, ifindex = _RTNEXTHOP.unpack_from(data, h)
                if hlen < _RTNEXTHOP.size or hlen > e - h:
                    break
                oifs.append(ifindex)
                h += _align(hlen)
    return Route(family, dst_len, table, rtype, priority, tuple(oifs))


def dump(kind: int, body: bytes, sock: socket.socket | None = None) -> list[tuple[int, bytes, int, int]]:
    """One NLM_F_DUMP request; every reply message (type, data, body start, end) until NLMSG_DONE.
    Raises NetlinkError (an OSError) on a netlink error reply."""
    own = sock is None
    if own:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        if own:
            sock.bind((0, 0))
        seq = int.from_bytes(os.urandom(4), "little") or 1
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        out = []
        while True:
            data = sock.recv(1 << 16)
            if not data:
                raise NetlinkError(errno.EIO, "netlink: empty read during a dump")
            for mtype, buf, start, end in parse_messages(data):
                if _NLMSGHDR.unpack_from(buf, start - _NLMSGHDR.size)[3] != seq:
                    continue  # not ours (an event on a shared socket)
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    err = -_ERRNO.unpack_from(buf, start)[0] if end - start >= 4 else errno.EIO
                    if err:
                        raise NetlinkError(err, os.strerror(err))
                    continue
                out.append((mtype, buf, start, end))
    finally:
        if own:
            sock.close()


def links(sock: socket.socket | None = None) -> list[Link]:
    found = (parse_link(d, s, e) for t, d, s, e in dump(RTM_GETLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0), sock)
             if t == RTM_NEWLINK)
    return [link for link in found if link is not None]


def addresses(sock: socket.socket | None = None) -> list[Address]:
    found = (parse_address(d, s, e) for t, d, s, e in dump(RTM_GETADDR, _IFADDRMSG.pack(0, 0, 0, 0, 0), sock)
             if t == RTM_NEWADDR)
    return [a for a in found if a is not None]


def routes(family: int, sock: socket.socket | None = None) -> list[Route]:
    found = (parse_route(d, s, e) for t, d, s, e in dump(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), sock)
             if t == RTM_NEWROUTE)
    return [r for r in found if r is not None]

"""rtnetlink dumps (links, addresses, routes) on a plain ``AF_NETLINK`` socket.

The daemon's own host facts (service addresses, the default-route interface) need three dumps
and a handful of attributes each; this reads them with ``struct``, like ``linkwatch.py`` reads
link events, so the daemon does not load pyroute2 (about 11 MiB of resident memory on Debian
12's Python 3.11, see docs/performance.md). Dumps need no privilege.

:func:`parse_link`, :func:`parse_address` and :func:`parse_route` are total, like the message and
attribute walk they use (:mod:`pmtud_relay.netlink.messages`): any bytes give what could be read,
never an exception.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import NamedTuple

from pmtud_relay.netlink.messages import IFINFOMSG as _IFINFOMSG
from pmtud_relay.netlink.messages import (
    IFLA_IFNAME,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    attributes,
    error_code,
    message,
    split_messages,
)
from pmtud_relay.netlink.messages import NETLINK_ROUTE as NETLINK_ROUTE  # hostinfo.py opens its socket with it
from pmtud_relay.netlink.messages import NLMSGHDR as _NLMSGHDR
from pmtud_relay.netlink.messages import RTMSG as _RTMSG
from pmtud_relay.netlink.messages import align as _align
from pmtud_relay.netlink.messages import parse_messages as parse_messages  # tests/test_hostinfo.py fuzzes it here

IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_OIF = 4
RTA_PRIORITY = 6
RTA_MULTIPATH = 9
RTA_TABLE = 15
RT_TABLE_MAIN = 254
RTN_UNICAST = 1

_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex


class NetlinkError(OSError):
    pass


class Link(NamedTuple):
    index: int  # type: ignore[assignment]  # the field shadows tuple.index, as it always has
    name: str | None
    kind: str | None  # IFLA_INFO_KIND: "dummy", "veth", "vlan", … (None: a plain device)


class Address(NamedTuple):
    index: int  # type: ignore[assignment]  # as Link.index
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


def _text(data: bytes, start: int, end: int) -> str | None:
    raw = bytes(data[start:end]).split(b"\0", 1)[0]
    try:
        return raw.decode("ascii") or None
    except UnicodeDecodeError:
        return None


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
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) if sock is None else sock
    try:
        if own:
            s.bind((0, 0))
        seq = int.from_bytes(os.urandom(4), "little") or 1
        s.send(message(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, body))
        out: list[tuple[int, bytes, int, int]] = []
        while True:
            data = s.recv(1 << 16)
            if not data:
                raise NetlinkError(errno.EIO, "netlink: empty read during a dump")
            for mtype, mseq, mstart, end in split_messages(data)[0]:
                if mseq != seq:
                    continue  # not ours (an event on a shared socket)
                if mtype == NLMSG_DONE:
                    return out
                start = mstart + _NLMSGHDR.size
                if mtype == NLMSG_ERROR:
                    err = error_code(data, start, end)
                    if err is None:  # too short to hold an error code
                        err = errno.EIO
                    if err:
                        raise NetlinkError(err, os.strerror(err))
                    continue
                out.append((mtype, data, start, end))
    finally:
        if own:
            s.close()


def links(sock: socket.socket | None = None) -> list[Link]:
    found = (parse_link(d, s, e) for t, d, s, e in dump(RTM_GETLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0), sock)
             if t == RTM_NEWLINK)
    return [link for link in found if link is not None]


def addresses(sock: socket.socket | None = None) -> list[Address]:
    found = (parse_address(d, s, e) for t, d, s, e in dump(RTM_GETADDR, _IFADDRMSG.pack(0, 0, 0, 0, 0), sock)
             if t == RTM_NEWADDR)
    return [a for a in found if a is not None]


def routes(family: int, sock: socket.socket | None = None) -> list[Route]:
    request = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
    found = (parse_route(d, s, e) for t, d, s, e in dump(RTM_GETROUTE, request, sock) if t == RTM_NEWROUTE)
    return [r for r in found if r is not None]

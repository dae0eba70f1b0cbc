"""Link events from the kernel, so the daemon can re-bind when an interface comes back.

A plain ``AF_NETLINK``/``NETLINK_ROUTE`` socket subscribed to ``RTMGRP_LINK`` (and to the
address groups, so service-address discovery follows address changes), registered with
the daemon's event loop like a capture socket: no thread, no second event loop (pyroute2's
synchronous ``IPRoute`` runs one of its own), no extra dependency, and joining the group needs
no privilege. The kernel multicasts an ``RTM_NEWLINK`` for every change of a link (up, down,
rename, carrier, MTU) and an ``RTM_DELLINK`` when one is deleted; only the ``ifinfomsg``
header (index, flags) and the ``IFLA_IFNAME`` attribute are read.

:func:`parse_link_messages` is total: for any bytes it returns the events it could read and
never raises (fuzzed in ``tests/test_linkwatch.py``). Only messages from the kernel (netlink
port id 0) are accepted; sending to the group needs CAP_NET_ADMIN anyway.

The *configured name* is what counts (docs/operations.md, "Interfaces that go away"): the
daemon binds to whichever interface carries that name while it is up, and lets go of it when
it goes down, is deleted or is renamed away.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
from typing import NamedTuple

from pmtud_relay.netlink.messages import IFINFOMSG as _IFINFOMSG
from pmtud_relay.netlink.messages import (
    IFLA_IFNAME,
    NETLINK_ROUTE,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    attributes,
    parse_messages,
)

RTMGRP_LINK = 1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
IFF_UP = 0x1
IFNAMSIZ = 16
SIOCGIFFLAGS = 0x8913
SIOCGIFINDEX = 0x8933

_IFREQ_FLAGS = struct.Struct("16sh22x")  # struct ifreq: name, ifr_flags (union padded to 24)
_IFREQ_INDEX = struct.Struct("16si20x")  # struct ifreq: name, ifr_ifindex; 40 bytes in all
RCVBUF = 1 << 20


class LinkEvent(NamedTuple):
    deleted: bool  # RTM_DELLINK
    index: int  # type: ignore[assignment]  # the field shadows tuple.index, as it always has
    name: str | None  # IFLA_IFNAME, None when absent or not text
    up: bool  # IFF_UP (administratively up)


def has_address_messages(data: bytes) -> bool:
    """True if the datagram holds an RTM_NEWADDR/RTM_DELADDR (an address came or went). Never raises."""
    return any(kind in (RTM_NEWADDR, RTM_DELADDR) for kind, _, _, _ in parse_messages(data))


def parse_link_messages(data: bytes) -> list[LinkEvent]:
    """The RTM_NEWLINK/RTM_DELLINK events in one datagram. Never raises; stops at the first
    message whose length is inconsistent."""
    events: list[LinkEvent] = []
    for kind, _, body, end in parse_messages(data):
        if kind not in (RTM_NEWLINK, RTM_DELLINK) or end - body < _IFINFOMSG.size:
            continue
        _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, body)
        name = None
        for akind, s, e in attributes(data, body + _IFINFOMSG.size, end):
            if akind == IFLA_IFNAME:
                raw = bytes(data[s:e]).split(b"\0", 1)[0]
                if 0 < len(raw) < IFNAMSIZ:
                    try:
                        name = raw.decode("ascii")
                    except UnicodeDecodeError:
                        name = None
        events.append(LinkEvent(kind == RTM_DELLINK, index, name, bool(flags & IFF_UP)))
    return events


class LinkWatcher:
    """The subscribed netlink socket (non-blocking). ``read()`` drains it."""

    def __init__(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                             NETLINK_ROUTE)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            except OSError:
                pass
            sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.overruns = 0
        #: set by read() when an address was added or removed (service-address discovery follows)
        self.addresses_changed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, limit: int = 256) -> tuple[list[LinkEvent], bool]:
        """(events, overrun): every queued event; ``overrun`` when the kernel dropped some
        (ENOBUFS), after which the caller must look at every link it cares about again."""
        events: list[LinkEvent] = []
        overrun = False
        for _ in range(limit):
            try:
                data, addr = self.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    overrun = True
                    self.overruns += 1
                    continue
                raise
            if addr[0] != 0:  # not from the kernel
                continue
            events.extend(parse_link_messages(data))
            if not self.addresses_changed and has_address_messages(data):
                self.addresses_changed = True
        return events, overrun

    def state(self, name: str) -> tuple[int, bool] | None:
        """(ifindex, administratively up) of the interface called ``name`` now, or None."""
        return link_state(name, self.sock)

    def close(self) -> None:
        self.sock.close()


def link_state(name: str, sock: socket.socket | None = None) -> tuple[int, bool] | None:
    """(ifindex, IFF_UP) of ``name`` from two ioctls (any socket of this network namespace
    will do), or None when no interface has that name."""
    raw = name.encode("ascii", "replace")
    if not 0 < len(raw) < IFNAMSIZ:
        return None
    own = sock is None
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) if sock is None else sock
    try:
        try:
            index = _IFREQ_INDEX.unpack(fcntl.ioctl(s, SIOCGIFINDEX, _IFREQ_INDEX.pack(raw, 0)))[1]
            flags = _IFREQ_FLAGS.unpack(fcntl.ioctl(s, SIOCGIFFLAGS, _IFREQ_FLAGS.pack(raw, 0)))[1]
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENXIO):
                return None
            raise
        return index, bool(flags & IFF_UP)
    finally:
        if own:
            s.close()

"""Netlink messages and attributes: the one walker and builder every netlink user shares. No I/O.

A netlink datagram is a run of messages, each a ``nlmsghdr`` (host byte order: length, type,
flags, sequence number, port id) and a body, every message and attribute 4-byte aligned; an
attribute is a ``nlattr``/``rtattr`` (length, type) and its value. rtnetlink dumps and link
events (:mod:`pmtud_relay.netlink.rtnl`, :mod:`pmtud_relay.netlink.linkwatch`), the owner
lookup (:mod:`pmtud_relay.confirm.wire`) and nfnetlink_log (:mod:`pmtud_relay.nflog.wire`)
all read and build them with the functions here.

:func:`split_messages` is the walk: one pass, one header unpack per message, the messages
returned as a list. :func:`parse_batch` is the same walk with the messages of one type
parsed on the way, the fast path for NFLOG's batches of up to a hundred packet messages a
datagram (no tuple and no second loop per packet message; ``bench/nflog_parse.py``).
:func:`parse_messages` and :func:`attributes` are the iterator forms. Everything here is
total: any bytes give what could be read, never an exception.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import TypeVar

# --- netlink (include/uapi/linux/netlink.h) ------------------------------------------------
NETLINK_ROUTE = 0
NETLINK_SOCK_DIAG = 4
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

# --- rtnetlink (include/uapi/linux/rtnetlink.h, if_link.h, if_addr.h) ----------------------
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
IFLA_IFNAME = 3
RTA_DST = 1
RTA_SRC = 2

AF_INET = 2
AF_INET6 = 10

# --- header structs ------------------------------------------------------------------------
NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLATTR = struct.Struct("=HH")  # len, type (rtattr has the same layout)
NLMSGERR = struct.Struct("=i")  # error (negative errno, 0: an ack), then the request's header
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
NLMSGHDR_LEN = NLMSGHDR.size  # 16

#: One message of :func:`split_messages`: (type, sequence number, start, end); ``start`` is
#: the message's own start (its header), its body starts NLMSGHDR_LEN later.
Message = tuple[int, int, int, int]
_T = TypeVar("_T")


def align(n: int) -> int:
    """``n`` rounded up to netlink's 4-byte alignment (NLMSG_ALIGN, NLA_ALIGN)."""
    return (n + 3) & ~3


# --- walking -------------------------------------------------------------------------------
def split_messages(data: bytes) -> tuple[list[Message], bool]:
    """(messages, clean): every message in ``data`` as (type, seq, start, end), in order.

    The walk stops at the first message whose length is inconsistent (shorter than a header
    or running past the data); ``clean`` is False then, and also when what follows the last
    message is shorter than a header but not all zero bytes."""
    out: list[Message] = []
    append = out.append
    unpack = NLMSGHDR.unpack_from
    n = len(data)
    off = 0
    while n - off >= NLMSGHDR_LEN:
        length, kind, _flags, seq, _pid = unpack(data, off)
        if length < NLMSGHDR_LEN or length > n - off:
            return out, False
        end = off + length
        append((kind, seq, off, end))
        off = (end + 3) & ~3
    return out, not (off < n and any(data[off:]))


def parse_batch(data: bytes, kind: int, parse: Callable[[bytes, int, int], _T | None]
                ) -> tuple[list[_T], int, list[Message], bool]:
    """The walk of :func:`split_messages` with the messages of one type parsed on the way:
    (parsed, failed, others, clean).

    Every message of type ``kind`` goes to ``parse(data, start, end)`` (``start``: the
    message's header); what it returns is appended to ``parsed``, a None counted in
    ``failed``. Every other message is listed in ``others`` as (type, seq, start, end), and
    ``clean`` is :func:`split_messages`'. The fast path for a datagram that is mostly one
    type (NFLOG's batches of packet messages): no tuple per message of that type, no
    second loop over them."""
    parsed: list[_T] = []
    others: list[Message] = []
    append = parsed.append
    unpack = NLMSGHDR.unpack_from
    failed = 0
    n = len(data)
    off = 0
    while n - off >= NLMSGHDR_LEN:
        length, mkind, _flags, seq, _pid = unpack(data, off)
        if length < NLMSGHDR_LEN or length > n - off:
            return parsed, failed, others, False
        end = off + length
        if mkind == kind:
            item = parse(data, off, end)
            if item is None:
                failed += 1
            else:
                append(item)
        else:
            others.append((mkind, seq, off, end))
        off = (end + 3) & ~3
    return parsed, failed, others, not (off < n and any(data[off:]))


def parse_messages(data: bytes) -> Iterator[tuple[int, bytes, int, int]]:
    """(type, data, body start, end) of each netlink message; stops at the first inconsistent length."""
    for kind, _seq, start, end in split_messages(data)[0]:
        yield kind, data, start + NLMSGHDR_LEN, end


def attributes(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type without NLA flags, value start, value end) of each attribute in data[start:end];
    stops at the first attribute whose length is inconsistent."""
    a = start
    while end - a >= NLATTR.size:
        alen, akind = NLATTR.unpack_from(data, a)
        if alen < NLATTR.size or alen > end - a:
            return
        yield akind & NLA_TYPE_MASK, a + NLATTR.size, a + alen
        a += align(alen)


def error_code(data: bytes, body: int, end: int) -> int | None:
    """The errno of the NLMSG_ERROR whose body starts at ``body`` (positive; 0: an ack), or
    None when the body is too short to hold one."""
    if end - body < NLMSGERR.size:
        return None
    (err,) = NLMSGERR.unpack_from(data, body)
    return -err if err < 0 else err


def echoed_seq(data: bytes, body: int, end: int) -> int | None:
    """The sequence number of the request an NLMSG_ERROR echoes (its header follows the
    error code), or None when the message is too short to hold it."""
    if end - body < NLMSGERR.size + NLMSGHDR_LEN:
        return None
    return int(NLMSGHDR.unpack_from(data, body + NLMSGERR.size)[3])


# --- building ------------------------------------------------------------------------------
def message(kind: int, flags: int, seq: int, body: bytes, pid: int = 0) -> bytes:
    """One netlink message: the header, then ``body``."""
    return NLMSGHDR.pack(NLMSGHDR_LEN + len(body), kind, flags, seq, pid) + body


def attr(kind: int, value: bytes) -> bytes:
    """One attribute, padded to the next 4-byte boundary."""
    length = NLATTR.size + len(value)
    return NLATTR.pack(length, kind) + value + b"\0" * (align(length) - length)

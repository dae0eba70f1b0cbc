"""Netlink messages for the owner lookup, encoded and decoded as pure functions (no I/O).

Two requests, each answered by the kernel within the ``send()`` that carries it:

* ``SOCK_DIAG_BY_FAMILY`` on ``NETLINK_SOCK_DIAG`` (inet_diag): the *exact* lookup of one
  4-tuple (no ``NLM_F_DUMP``), TCP or UDP, IPv4 or IPv6, asking for ``INET_DIAG_INFO`` so a
  TCP socket's ``tcp_info`` (and its ``tcpi_pmtu``) comes back in the same answer. The kernel
  answers with one ``inet_diag_msg`` or an ``NLMSG_ERROR`` carrying ``-ENOENT``.
* ``RTM_GETROUTE`` on ``NETLINK_ROUTE``: the route the kernel would use from a VIP to a
  client, as ``ip route get CLIENT from VIP`` asks it; a path MTU learnt from a PTB shows as
  ``RTAX_MTU`` in its ``RTA_METRICS`` (UDP keeps no per-socket PMTU: it lives in that route
  exception).

The kernel's two exact lookups read the socket id differently: TCP's (``inet_diag_find_one_icsk``)
takes ``idiag_src`` as the socket's local side, UDP's (``udp_dump_one``) takes ``idiag_src`` as
the remote side ("src and dst are swapped for historical reasons", net/ipv4/udp_diag.c).
:func:`diag_request` hides that: callers pass local and remote.

Every decoder is total: any bytes give an answer or ``None``, never an exception (fuzzed in
``tests/test_confirm_wire.py``).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from pmtud_relay.netlink.messages import AF_INET as AF_INET
from pmtud_relay.netlink.messages import AF_INET6 as AF_INET6
from pmtud_relay.netlink.messages import NETLINK_ROUTE as NETLINK_ROUTE
from pmtud_relay.netlink.messages import NETLINK_SOCK_DIAG as NETLINK_SOCK_DIAG
from pmtud_relay.netlink.messages import NLM_F_REQUEST as NLM_F_REQUEST
from pmtud_relay.netlink.messages import NLMSG_DONE as NLMSG_DONE
from pmtud_relay.netlink.messages import NLMSG_ERROR as NLMSG_ERROR
from pmtud_relay.netlink.messages import NLMSGHDR_LEN, attributes, error_code, message, split_messages
from pmtud_relay.netlink.messages import RTA_DST as RTA_DST
from pmtud_relay.netlink.messages import RTA_SRC as RTA_SRC
from pmtud_relay.netlink.messages import RTM_GETROUTE as RTM_GETROUTE
from pmtud_relay.netlink.messages import RTM_NEWROUTE as RTM_NEWROUTE
from pmtud_relay.netlink.messages import RTMSG as _RTMSG
from pmtud_relay.netlink.messages import attr as _rtattr

SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_INFO = 2
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
RTA_METRICS = 8
RTAX_MTU = 2
RTM_F_LOOKUP_TABLE = 0x1000
IPPROTO_TCP = 6
IPPROTO_UDP = 17

#: TCP states (include/net/tcp_states.h) that matter here.
TCP_ESTABLISHED = 1
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_LISTEN = 10
TCP_NEW_SYN_RECV = 12
#: States in which no socket can act on a PTB for the flow: a listener is what an exact
#: lookup falls back to when no connection matches (the kernel's ICMP handler never does),
#: a TIME_WAIT or closed socket is a remnant of a finished flow (service.py looks at the
#: route of a TIME_WAIT one).
NOT_AN_OWNER = frozenset({TCP_LISTEN, TCP_TIME_WAIT, TCP_CLOSE})

_DIAG_REQ = struct.Struct("=BBBxI")  # family, protocol, ext, pad, states
_SOCKID_PORTS = struct.Struct("!HH")  # sport, dport (network order)
_SOCKID_TAIL = struct.Struct("=III")  # if, cookie[2]
_DIAG_MSG = struct.Struct("=BBBB")  # family, state, timer, retrans
_DIAG_MSG_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode (after the 48-byte id)
_DIAG_MSG_LEN = 4 + 48 + 20
_U32 = struct.Struct("=I")
#: tcp_info: eight one-byte fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked,
#: lost, retrans, fackets, last_data_sent, last_ack_sent, last_data_recv, last_ack_recv, pmtu.
TCPI_PMTU_OFFSET = 8 + 13 * 4


class DiagAnswer(NamedTuple):
    """One socket the exact lookup found."""

    state: int  # TCP state (UDP: TCP_ESTABLISHED when connected, TCP_CLOSE when not)
    uid: int
    inode: int
    pmtu: int | None  # tcp_info's tcpi_pmtu (TCP only), None when absent


def _pad16(addr: bytes) -> bytes:
    return addr + b"\0" * (16 - len(addr))


def diag_request(family: int, proto: int, local: bytes, lport: int, remote: bytes, rport: int,
                 seq: int) -> bytes:
    """The SOCK_DIAG_BY_FAMILY exact-lookup request for the socket whose local side is
    ``local:lport`` and remote side ``remote:rport`` (``family`` 4 or 6, addresses packed)."""
    if proto == IPPROTO_UDP:  # udp_dump_one reads the id the other way round
        src, sport, dst, dport = remote, rport, local, lport
    else:
        src, sport, dst, dport = local, lport, remote, rport
    ext = 1 << (INET_DIAG_INFO - 1) if proto == IPPROTO_TCP else 0
    body = (
        _DIAG_REQ.pack(AF_INET if family == 4 else AF_INET6, proto, ext, 0xFFFFFFFF)
        + _SOCKID_PORTS.pack(sport & 0xFFFF, dport & 0xFFFF)
        + _pad16(src) + _pad16(dst)
        + _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    )
    return message(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, body)


def parse_diag_answer(data: bytes, seq: int) -> DiagAnswer | int | None:
    """The answer to request ``seq`` in ``data``: a :class:`DiagAnswer`, a positive errno
    (ENOENT: no socket), or None if ``data`` holds neither."""
    for kind, mseq, start, end in split_messages(data)[0]:
        if mseq != seq:
            continue
        body = start + NLMSGHDR_LEN
        if kind == NLMSG_ERROR:
            return error_code(data, body, end)  # 0 would be an ack, which an exact lookup never sends
        if kind == SOCK_DIAG_BY_FAMILY and end - body >= _DIAG_MSG_LEN:
            _family, state, _timer, _retrans = _DIAG_MSG.unpack_from(data, body)
            _expires, _rq, _wq, uid, inode = _DIAG_MSG_TAIL.unpack_from(data, body + 4 + 48)
            pmtu = None
            for akind, s, e in attributes(data, body + _DIAG_MSG_LEN, end):
                if akind == INET_DIAG_INFO and e - s >= TCPI_PMTU_OFFSET + 4:
                    (pmtu,) = _U32.unpack_from(data, s + TCPI_PMTU_OFFSET)
            return DiagAnswer(state, uid, inode, pmtu)
    return None


def route_request(family: int, src: bytes, dst: bytes, seq: int) -> bytes:
    """RTM_GETROUTE for ``dst`` from ``src``: ``ip route get DST from SRC``."""
    bits = 32 if family == 4 else 128
    body = (
        _RTMSG.pack(AF_INET if family == 4 else AF_INET6, bits, bits, 0, 0, 0, 0, 0, 0)
        + _rtattr(RTA_DST, dst) + _rtattr(RTA_SRC, src)
    )
    return message(RTM_GETROUTE, NLM_F_REQUEST, seq, body)


def parse_route_mtu(data: bytes, seq: int) -> int | None:
    """The path MTU in the answer to route request ``seq``: RTAX_MTU of RTA_METRICS, 0 when the
    route carries none (no PMTU learnt), None when ``data`` holds no answer or an error."""
    for kind, mseq, start, end in split_messages(data)[0]:
        if mseq != seq:
            continue
        body = start + NLMSGHDR_LEN
        if kind == RTM_NEWROUTE and end - body >= _RTMSG.size:
            mtu = 0
            for akind, s, e in attributes(data, body + _RTMSG.size, end):
                if akind == RTA_METRICS:
                    for mkind, ms, me in attributes(data, s, e):
                        if mkind == RTAX_MTU and me - ms >= 4:
                            (mtu,) = _U32.unpack_from(data, ms)
            return mtu
        if kind == NLMSG_ERROR:
            return None
    return None

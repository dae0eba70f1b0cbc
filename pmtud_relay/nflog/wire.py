"""nfnetlink_log wire format: build config requests, parse packet messages. No I/O.

The kernel's NFLOG subsystem (``include/uapi/linux/netfilter/nfnetlink_log.h``) talks
netlink: a ``nlmsghdr`` (host byte order), an ``nfgenmsg`` (family, version 0, group in
network order) and 4-byte aligned attributes whose payloads are in network order.

:func:`parse_datagram` turns one received datagram into :class:`NflogPacket` records
(plus the acks and errors it carried) and is total: it never raises, whatever the
bytes. :class:`~pmtud_relay.nflog.fastpath.PacketParser` gives the same records faster
for a socket's stream of messages, reading each with the attribute layout learned from
earlier ones.
:func:`rebuild_frame` turns a record back into the Ethernet frame the core's
``parse_frame`` expects, or names the reason it cannot (:class:`NflogDrop`).
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

# --- netlink: the shared walker and builder, and the names this module's users read here ----
from pmtud_relay.netlink.messages import NETLINK_NETFILTER as NETLINK_NETFILTER
from pmtud_relay.netlink.messages import NETLINK_NO_ENOBUFS as NETLINK_NO_ENOBUFS
from pmtud_relay.netlink.messages import NLA_F_NESTED as NLA_F_NESTED
from pmtud_relay.netlink.messages import NLA_F_NET_BYTEORDER as NLA_F_NET_BYTEORDER
from pmtud_relay.netlink.messages import (
    NLA_TYPE_MASK,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSG_OVERRUN,
    echoed_seq,
    error_code,
    parse_batch,
)
from pmtud_relay.netlink.messages import NLATTR as _NLATTR
from pmtud_relay.netlink.messages import NLMSGHDR_LEN as _NLMSGHDR_LEN
from pmtud_relay.netlink.messages import SOL_NETLINK as SOL_NETLINK
from pmtud_relay.netlink.messages import align as _align
from pmtud_relay.netlink.messages import attr as _attr
from pmtud_relay.netlink.messages import message as _message

# --- nfnetlink_log ----------------------------------------------------------------------
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = NFNL_SUBSYS_ULOG << 8 | 0
NFULNL_MSG_CONFIG = NFNL_SUBSYS_ULOG << 8 | 1

# Config attributes.
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_NLBUFSIZ = 3
NFULA_CFG_TIMEOUT = 4
NFULA_CFG_QTHRESH = 5
NFULA_CFG_FLAGS = 6

# NFULA_CFG_CMD commands.
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_CFG_CMD_PF_BIND = 3
NFULNL_CFG_CMD_PF_UNBIND = 4

NFULNL_COPY_NONE = 0
NFULNL_COPY_META = 1
NFULNL_COPY_PACKET = 2

NFULNL_CFG_F_SEQ = 0x0001
NFULNL_CFG_F_SEQ_GLOBAL = 0x0002
NFULNL_CFG_F_CONNTRACK = 0x0004

# Packet attributes.
NFULA_PACKET_HDR = 1
NFULA_MARK = 2
NFULA_TIMESTAMP = 3
NFULA_IFINDEX_INDEV = 4
NFULA_IFINDEX_OUTDEV = 5
NFULA_IFINDEX_PHYSINDEV = 6
NFULA_IFINDEX_PHYSOUTDEV = 7
NFULA_HWADDR = 8
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NFULA_UID = 11
NFULA_SEQ = 12
NFULA_SEQ_GLOBAL = 13
NFULA_GID = 14
NFULA_HWTYPE = 15
NFULA_HWHEADER = 16
NFULA_HWLEN = 17
NFULA_CT = 18
NFULA_CT_INFO = 19
NFULA_VLAN = 20
NFULA_L2HDR = 21

NFULA_VLAN_PROTO = 1
NFULA_VLAN_TCI = 2

ARPHRD_ETHER = 1
ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD

AF_INET = 2
AF_INET6 = 10

#: Largest copy range the kernel accepts (NFULNL_COPY_RANGE_MAX is 0xFFFF minus the
#: attribute header; larger values are clamped, never refused).
COPY_RANGE_MAX = 0xFFFF

_NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (group)
_U16 = struct.Struct("!H").unpack_from
_U32 = struct.Struct("!I").unpack_from
_PKT_HDR = struct.Struct("!HBx").unpack_from  # hw_protocol, hook
_TIMESTAMP = struct.Struct("!QQ").unpack_from  # sec, usec
_HWADDR_LEN = struct.Struct("!H").unpack_from
_HDR_LEN = _NLMSGHDR_LEN + _NFGENMSG.size  # 20
_new_tuple = tuple.__new__  # a NamedTuple from a tuple, without the generated __new__'s cost


# --- requests (pure builders) --------------------------------------------------------------
def config_message(group: int, attrs: bytes, seq: int, family: int = 0, pid: int = 0) -> bytes:
    """One NFULNL_MSG_CONFIG request (NLM_F_REQUEST|NLM_F_ACK) for ``group``.

    ``family`` is the nfgenmsg family: AF_INET/AF_INET6 for PF_(UN)BIND, 0 (AF_UNSPEC)
    for everything else.
    """
    body = _NFGENMSG.pack(family & 0xFF, 0, group & 0xFFFF) + attrs
    return _message(NFULNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, body, pid)


def cmd_attr(command: int) -> bytes:
    """NFULA_CFG_CMD: struct nfulnl_msg_config_cmd { u8 command }."""
    return _attr(NFULA_CFG_CMD, bytes((command,)))


def mode_attr(copy_range: int, mode: int = NFULNL_COPY_PACKET) -> bytes:
    """NFULA_CFG_MODE: struct nfulnl_msg_config_mode { be32 copy_range; u8 copy_mode; u8 pad }."""
    return _attr(NFULA_CFG_MODE, struct.pack("!IBx", copy_range, mode))


def u32_attr(kind: int, value: int) -> bytes:
    """NFULA_CFG_NLBUFSIZ, NFULA_CFG_TIMEOUT (1/100 s) and NFULA_CFG_QTHRESH: be32."""
    return _attr(kind, struct.pack("!I", value))


def flags_attr(flags: int) -> bytes:
    """NFULA_CFG_FLAGS: be16."""
    return _attr(NFULA_CFG_FLAGS, struct.pack("!H", flags))


# --- parsed records ----------------------------------------------------------------------
class NflogPacket(NamedTuple):
    """One logged packet. Absent integer attributes are -1, absent byte strings None."""

    group: int  # nfgenmsg res_id
    family: int  # nfgenmsg family (AF_INET 2, AF_INET6 10, ...)
    hw_protocol: int  # NFULA_PACKET_HDR: EtherType in host order
    hook: int  # NFULA_PACKET_HDR: netfilter hook (0 = prerouting)
    payload: bytes | None  # starts at the network header
    indev: int  # NFULA_IFINDEX_INDEV
    outdev: int
    physindev: int
    hwaddr: bytes | None  # NFULA_HWADDR, cut to its stated length (source MAC)
    hwtype: int  # ARPHRD_* of the input device
    hwlen: int  # the input device's hard_header_len
    hwheader: bytes | None  # the link-layer header as received
    timestamp: float | None  # seconds (sec + usec/1e6), only when the skb had a stamp
    seq: int  # per-group sequence number (NFULNL_CFG_F_SEQ)
    seq_global: int
    prefix: bytes | None  # the rule's log prefix, NUL stripped
    mark: int
    vlan_proto: int  # NFULA_VLAN (bridge family only)
    vlan_tci: int
    l2hdr: bytes | None  # NFULA_L2HDR (bridge family only)


class Batch(NamedTuple):
    """Everything one datagram carried."""

    packets: list[NflogPacket]
    acks: list[tuple[int, int]]  # (request seq, errno) from NLMSG_ERROR; errno 0 = success
    malformed: int  # messages or attribute lists that were cut short or inconsistent
    overrun: bool  # an NLMSG_OVERRUN message was seen


def parse_datagram(data: bytes) -> Batch:
    """Parse every netlink message in ``data``. Never raises."""
    return _parse_datagram(data, parse_packet_message)


def _parse_datagram(data: bytes, parse_packet) -> Batch:
    """The message walk shared by :func:`parse_datagram` and the fast path's
    :class:`~pmtud_relay.nflog.fastpath.PacketParser`: ``parse_packet(data, start, end)``
    parses each NFULNL_MSG_PACKET (None: malformed)."""
    packets: list[NflogPacket] = []
    acks: list[tuple[int, int]] = []
    malformed = 0
    overrun = False
    try:
        packets, malformed, others, clean = parse_batch(data, NFULNL_MSG_PACKET, parse_packet)
        if not clean:
            malformed += 1  # a message cut short, or trailing garbage shorter than a header
        for kind, seq, start, end in others:
            if kind == NLMSG_ERROR:
                body = start + _NLMSGHDR_LEN
                err = error_code(data, body, end)
                if err is None:
                    malformed += 1
                else:
                    # The echoed request header carries the request's sequence number.
                    req_seq = echoed_seq(data, body, end)
                    acks.append((seq if req_seq is None else req_seq, err))
            elif kind == NLMSG_OVERRUN:
                overrun = True
            # NLMSG_NOOP, NLMSG_DONE and anything else: skip.
    except Exception:  # pragma: no cover - the walk is bounds-checked
        malformed += 1
    return _new_tuple(Batch, (packets, acks, malformed, overrun))  # Batch(...) without its Python __new__


def parse_packet_message(data: bytes, start: int, end: int) -> NflogPacket | None:
    """Parse one NFULNL_MSG_PACKET spanning ``data[start:end]``; None if malformed."""
    if end - start < _HDR_LEN or end > len(data):
        return None
    family, _version, group = _NFGENMSG.unpack_from(data, start + _NLMSGHDR_LEN)
    hw_protocol = hook = -1
    payload = hwaddr = hwheader = prefix = l2hdr = None
    indev = outdev = physindev = hwtype = hwlen = seq = seq_global = mark = -1
    vlan_proto = vlan_tci = -1
    timestamp = None
    off = start + _HDR_LEN
    while end - off >= _NLATTR.size:
        alen, akind = _NLATTR.unpack_from(data, off)
        if alen < _NLATTR.size or alen > end - off:
            return None
        p = off + _NLATTR.size
        plen = alen - _NLATTR.size
        akind &= NLA_TYPE_MASK
        if akind == NFULA_PAYLOAD:
            payload = data[p : p + plen]
        elif akind == NFULA_IFINDEX_INDEV:
            if plen >= 4:
                (indev,) = _U32(data, p)
        elif akind == NFULA_PACKET_HDR:
            if plen >= 4:
                hw_protocol, hook = _PKT_HDR(data, p)
        elif akind == NFULA_HWHEADER:
            hwheader = data[p : p + plen]
        elif akind == NFULA_HWADDR:
            if plen >= 4:
                (hlen,) = _HWADDR_LEN(data, p)
                hwaddr = data[p + 4 : p + 4 + min(hlen, plen - 4, 8)]
        elif akind == NFULA_HWTYPE:
            if plen >= 2:
                (hwtype,) = _U16(data, p)
        elif akind == NFULA_HWLEN:
            if plen >= 2:
                (hwlen,) = _U16(data, p)
        elif akind == NFULA_SEQ:
            if plen >= 4:
                (seq,) = _U32(data, p)
        elif akind == NFULA_SEQ_GLOBAL:
            if plen >= 4:
                (seq_global,) = _U32(data, p)
        elif akind == NFULA_TIMESTAMP:
            if plen >= 16:
                sec, usec = _TIMESTAMP(data, p)
                timestamp = sec + usec / 1e6
        elif akind == NFULA_PREFIX:
            prefix = data[p : p + plen].split(b"\0", 1)[0]
        elif akind == NFULA_IFINDEX_OUTDEV:
            if plen >= 4:
                (outdev,) = _U32(data, p)
        elif akind == NFULA_IFINDEX_PHYSINDEV:
            if plen >= 4:
                (physindev,) = _U32(data, p)
        elif akind == NFULA_MARK:
            if plen >= 4:
                (mark,) = _U32(data, p)
        elif akind == NFULA_VLAN:
            vlan_proto, vlan_tci = _parse_vlan(data, p, p + plen)
        elif akind == NFULA_L2HDR:
            l2hdr = data[p : p + plen]
        off += _align(alen)
    return NflogPacket(
        group, family, hw_protocol, hook, payload, indev, outdev, physindev, hwaddr, hwtype, hwlen,
        hwheader, timestamp, seq, seq_global, prefix, mark, vlan_proto, vlan_tci, l2hdr,
    )


def _parse_vlan(data: bytes, off: int, end: int) -> tuple[int, int]:
    proto = tci = -1
    while end - off >= _NLATTR.size:
        alen, akind = _NLATTR.unpack_from(data, off)
        if alen < _NLATTR.size or alen > end - off:
            break
        akind &= NLA_TYPE_MASK
        if alen >= 6:
            if akind == NFULA_VLAN_PROTO:
                (proto,) = _U16(data, off + 4)
            elif akind == NFULA_VLAN_TCI:
                (tci,) = _U16(data, off + 4)
        off += _align(alen)
    return proto, tci


# --- frame reconstruction ----------------------------------------------------------------
class NflogDrop(enum.Enum):
    """Why a logged packet cannot be handed to the core (counted by the capture adapter)."""

    NO_PAYLOAD = "nflog_no_payload"  # the rule or mode copied no packet bytes
    NO_L2_HEADER = "nflog_no_l2_header"  # no Ethernet header and no source MAC recorded
    FOREIGN_INTERFACE = "nflog_foreign_interface"  # arrived on an interface not configured
    MALFORMED = "nflog_malformed"  # a netlink message or attribute list was cut short

    def __str__(self) -> str:
        return self.value


_IP_ETHERTYPES = (ETH_P_IP, ETH_P_IPV6)
_ETHERTYPE_BYTES = {ETH_P_IP: b"\x08\x00", ETH_P_IPV6: b"\x86\xdd"}


def ethertype_of(pkt: NflogPacket) -> int:
    """The EtherType for the rebuilt frame: the packet header's, else the IP version's."""
    if pkt.hw_protocol in _IP_ETHERTYPES:
        return pkt.hw_protocol
    payload = pkt.payload
    if payload:
        version = payload[0] >> 4
        if version == 4:
            return ETH_P_IP
        if version == 6:
            return ETH_P_IPV6
    return pkt.hw_protocol if pkt.hw_protocol > 0 else 0


def rebuild_frame(pkt: NflogPacket, dev_mac: bytes | None = None) -> bytes | NflogDrop:
    """The Ethernet frame the input device received, or why it cannot be rebuilt.

    On an Ethernet device NFULA_HWHEADER is the MAC header the packet arrived with
    (14 bytes; on a VLAN device whose parent does not offload tagging it is 18 bytes
    and, the tag having been removed on receive, its last 4 bytes are the start of
    the IP header). Only its addresses are used: the EtherType comes from the packet
    header, so VLAN tags are never carried over. That is what the relay needs, since
    the copy leaves through the input device itself (a VLAN device tags it again).
    Without a usable header, ``dev_mac`` (the input device's MAC) is the destination
    and NFULA_HWADDR the source.
    """
    payload = pkt.payload
    if not payload:
        return NflogDrop.NO_PAYLOAD
    etype_bytes = _ETHERTYPE_BYTES.get(pkt.hw_protocol)  # ethertype_of's first answer, without the call
    if etype_bytes is None:
        etype = ethertype_of(pkt)
        etype_bytes = _ETHERTYPE_BYTES.get(etype) or struct.pack("!H", etype & 0xFFFF)
    hw = pkt.hwheader
    if hw is not None and len(hw) >= ETH_HLEN and pkt.hwtype in (ARPHRD_ETHER, -1):
        return hw[:12] + etype_bytes + payload
    src = pkt.hwaddr
    if src is not None and len(src) == 6 and dev_mac is not None and len(dev_mac) == 6:
        return dev_mac + src + etype_bytes + payload
    return NflogDrop.NO_L2_HEADER

"""The closed set of verdict reasons. Every decision the core takes names one."""

from __future__ import annotations

import enum


class Reason(enum.Enum):
    """Why a frame was relayed or dropped.

    The value is the stable, lower-case name used in logs, JSON output and metric
    labels; it never changes once released.
    """

    # Relayed.
    RELAYED = "relayed"

    # Parser: the frame is not a well-formed PTB.
    TOO_SHORT = "too_short"  # truncated at any layer
    BAD_L2 = "bad_l2"  # more than two VLAN tags
    NOT_IP = "not_ip"  # EtherType is neither IPv4 nor IPv6
    BAD_IP = "bad_ip"  # bad version, IHL or length (a bad header checksum is bad_checksum)
    FRAGMENT = "fragment"  # the outer packet is a fragment
    BAD_EXT_HEADER = "bad_ext_header"  # IPv6 extension-header chain too long or malformed
    NOT_PTB = "not_ptb"  # not ICMPv4 3/4 nor ICMPv6 2/0
    BAD_CHECKSUM = "bad_checksum"  # ICMP or outer IPv4 header checksum does not verify (checked last)
    SHORT_QUOTE = "short_quote"  # fewer bytes quoted than the quoted IP header needs
    BAD_INNER = "bad_inner"  # quoted packet is not a plausible IP header
    # The quote stops short of 8 bytes past the quoted IP header (and IPv6 extension headers):
    # the kernel needs them (ports, TCP sequence number) to find the socket, and discards it.
    SHORT_L4_QUOTE = "short_l4_quote"
    INNER_ICMP_ERROR = "inner_icmp_error"  # PTB about an ICMP error: never legitimate

    # Policy: a well-formed PTB this host must not relay.
    NOT_UNICAST = "not_unicast"  # arrived as L2 broadcast/multicast (a relayed copy)
    OTHER_HOST = "other_host"  # unicast to another host's MAC (promiscuous capture)
    OWN_FRAME = "own_frame"  # a frame this host sent
    DST_NOT_QUOTED_SRC = "dst_not_quoted_src"  # PTB not about a packet its destination sent
    NOT_VIP = "not_vip"  # quoted source is not one of the service addresses
    MTU_BELOW_FLOOR = "mtu_below_floor"
    MTU_NOT_BELOW_PACKET = "mtu_not_below_packet"  # MTU >= quoted packet length
    PROTO_NOT_ALLOWED = "proto_not_allowed"
    PORT_NOT_ALLOWED = "port_not_allowed"

    # State: dedup and rate limits.
    DUPLICATE = "duplicate"
    RATE_LIMITED_SOURCE = "rate_limited_source"
    RATE_LIMITED_GLOBAL = "rate_limited_global"

    def __str__(self) -> str:  # logfmt / JSON friendly
        return self.value

    # Members are singletons compared by identity: hash them by identity too. Enum's own
    # __hash__ is a Python-level function (hash of the name), and the relay's per-reason
    # counters hash a Reason twice per packet.
    __hash__ = object.__hash__


PARSE_REASONS = frozenset(
    {
        Reason.TOO_SHORT,
        Reason.BAD_L2,
        Reason.NOT_IP,
        Reason.BAD_IP,
        Reason.FRAGMENT,
        Reason.BAD_EXT_HEADER,
        Reason.NOT_PTB,
        Reason.BAD_CHECKSUM,
        Reason.SHORT_QUOTE,
        Reason.BAD_INNER,
        Reason.INNER_ICMP_ERROR,
        Reason.SHORT_L4_QUOTE,
    }
)

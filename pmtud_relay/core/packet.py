"""Frame parser: Ethernet (up to two VLAN tags) → IPv4/IPv6 → ICMP PTB → quoted packet.

``parse_frame`` is total: for any input it returns either a :class:`PTB` record or a
:class:`~pmtud_relay.core.reasons.Reason` saying why the frame is not a usable PTB.
It never raises. It reads with precompiled ``struct`` objects and offsets into the
original buffer; the only allocations are the address slices and the record itself.
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Union

from pmtud_relay.core.checksum import region_sum, verifies
from pmtud_relay.core.reasons import Reason

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8)  # 802.1Q, 802.1ad
MAX_VLAN_TAGS = 2

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60
IPPROTO_SCTP = 132
IPPROTO_UDPLITE = 136

#: Quoted protocols whose first four L4 bytes are source and destination port.
PORT_PROTOCOLS = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_UDPLITE})
#: ICMPv4 error types (RFC 1122 3.2.2: no ICMP error is sent about one of these).
ICMP4_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})
#: IPv6 extension headers with the generic (next header, length in 8-octet units) layout.
_GENERIC_EXT = frozenset({IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS})
#: Bound on the extension-header walk, so hostile chains cost O(1).
MAX_EXT_HEADERS = 8

ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMPV6_PKT_TOOBIG = 2

_U16 = struct.Struct("!H").unpack_from
_U32 = struct.Struct("!I").unpack_from
_PORTS = struct.Struct("!HH").unpack_from
_IPV4_FIXED = struct.Struct("!BxHxxHxBH").unpack_from  # vihl, total, frag, proto, csum
_TYPE_CODE_MTU4 = struct.Struct("!H4xH").unpack_from  # ICMPv4 type+code, next-hop MTU
_TYPE_CODE_MTU6 = struct.Struct("!H2xI").unpack_from  # ICMPv6 type+code, MTU
# The common layouts in one read each (see the fast paths in _ipv4 and _ipv6): IPv4 with a
# 20-byte header quoting a 20-byte header and ports; IPv6 with no extension header quoting a
# packet with none. Anything else takes the general path, which decides every frame the same.
_V4_COMMON = struct.Struct("!xxHxxHxBxx4s4sH4xHxxHxxHxBxx4s4sHH").unpack_from  # 52 bytes from l3
_V4_COMMON_LEN = 52
#: Bytes past the quoted IP header (IPv6: past its extension headers) a kernel needs to act on a
#: PTB: Linux pulls them before it looks up the socket (icmp_socket_deliver, icmpv6_notify) and
#: discards a shorter quote. They hold the ports and, for TCP, the sequence number.
QUOTED_L4_MIN = 8
_V6_COMMON = struct.Struct("!BxxxHBx16s16sH2xIBxxxHBx16s16sHH").unpack_from  # 92 bytes from l3
_V6_COMMON_LEN = 92
_from_bytes = int.from_bytes
_new = tuple.__new__


class PTB(NamedTuple):
    """A parsed, well-formed Packet Too Big message.

    Addresses are packed bytes (4 or 16 long). ``sport``/``dport`` are ``-1`` when the
    quoted packet carries no ports (other protocol, non-first fragment). The quote always holds
    at least 8 bytes past the quoted IP header (``QUOTED_L4_MIN``).
    """

    family: int  # 4 or 6
    outer_src: bytes  # the hop that sent the PTB
    outer_dst: bytes  # the address the PTB was sent to (a VIP, if it is for us)
    mtu: int  # next-hop MTU announced by the hop
    inner_src: bytes  # quoted packet's source: the address that sent the big packet
    inner_dst: bytes  # quoted packet's destination: the client
    proto: int  # quoted packet's (upper-layer) protocol
    sport: int
    dport: int
    inner_length: int  # quoted packet's total length as its header states it
    l3_offset: int  # outer IP header offset in ``frame``
    icmp_offset: int  # ICMP header offset in ``frame``
    frame: bytes  # the frame as received (never modified)


ParseResult = Union[PTB, Reason]

# The frequent verdicts, bound once (attribute lookups on the Enum class cost per packet).
_TOO_SHORT = Reason.TOO_SHORT
_NOT_PTB = Reason.NOT_PTB
_BAD_CHECKSUM = Reason.BAD_CHECKSUM


def parse_frame(frame: bytes) -> ParseResult:
    """Parse an Ethernet II frame; return a :class:`PTB` or the :class:`Reason` it is not one.

    Every check, the checksums included (they come last: a frame that is both malformed
    and corrupt is reported by its first structural fault)."""
    return _verified(parse_frame_unverified(frame))


def parse_ipv4(frame: bytes, l3: int) -> ParseResult:
    """Parse an IPv4 PTB starting at offset ``l3`` of ``frame`` (every check)."""
    return _verified(_ipv4(frame, l3))


def parse_ipv6(frame: bytes, l3: int) -> ParseResult:
    """Parse an IPv6 PTB starting at offset ``l3`` of ``frame`` (every check)."""
    return _verified(_ipv6(frame, l3))


def _verified(result: ParseResult) -> ParseResult:
    # checksum_ok() sees only a PTB: the `.__class__ is` test (cheapest, but mypy does not narrow on it) is first
    if result.__class__ is Reason or checksum_ok(result):  # type: ignore[arg-type]
        return result
    return _BAD_CHECKSUM


def checksum_ok(ptb: PTB) -> bool:
    """True if the checksums of a PTB from :func:`parse_frame_unverified` verify: the ICMP
    checksum, and for IPv4 the outer header's.

    The ICMP one is the costly check (a pass over the whole quote, up to 1 240 bytes), so
    the relay runs it only for a PTB it would otherwise relay; every other check is done by
    then. The IPv4 header checksum is cheaper but not free (~0.1 µs), and a frame the relay
    drops for another reason never needs it."""
    frame = ptb.frame
    l3 = ptb.l3_offset
    icmp = ptb.icmp_offset
    if ptb.family == 4:
        # The header checksum first (IHL is a multiple of 4: no odd byte; inlined verifies).
        value = _from_bytes(frame[l3:icmp], "big")
        if value % 0xFFFF or not value:
            return False
        return verifies(region_sum(frame, icmp, l3 + (frame[l3 + 2] << 8 | frame[l3 + 3])))
    end = l3 + 40 + (frame[l3 + 4] << 8 | frame[l3 + 5])
    # Over the pseudo-header (src, dst, upper-layer length, next header) + message.
    if icmp == l3 + 40:
        # No extension header: addresses and message are one contiguous region. The
        # addresses are 32 bytes (an even length), so reading [src … end) as one number
        # is congruent to adding the two parts (an odd message is padded by region_sum).
        total = region_sum(frame, l3 + 8, end) + (end - icmp) + IPPROTO_ICMPV6
    else:
        total = region_sum(frame, l3 + 8, l3 + 40) + (end - icmp) + IPPROTO_ICMPV6 + region_sum(frame, icmp, end)
    return verifies(total)


def parse_frame_unverified(frame: bytes) -> ParseResult:
    """:func:`parse_frame` without the checksums (ICMP, and the outer IPv4 header's): call
    :func:`checksum_ok` before acting on the PTB it returns."""
    n = len(frame)
    if n < ETH_HLEN:
        return _TOO_SHORT
    ethertype = frame[12] << 8 | frame[13]
    if ethertype == ETH_P_IP:  # untagged: the common case, no loop
        return _ipv4(frame, ETH_HLEN)
    if ethertype == ETH_P_IPV6:
        return _ipv6(frame, ETH_HLEN)
    off = ETH_HLEN
    tags = 0
    while ethertype in VLAN_TPIDS:
        if tags == MAX_VLAN_TAGS:
            return Reason.BAD_L2
        if n < off + 4:
            return _TOO_SHORT
        ethertype = frame[off + 2] << 8 | frame[off + 3]
        off += 4
        tags += 1
    if ethertype == ETH_P_IP:
        return _ipv4(frame, off)
    if ethertype == ETH_P_IPV6:
        return _ipv6(frame, off)
    return Reason.NOT_IP


def _ipv4(frame: bytes, l3: int) -> ParseResult:
    """An IPv4 PTB at offset ``l3`` of ``frame``, every check but the checksums."""
    n = len(frame)
    if n >= l3 + _V4_COMMON_LEN and frame[l3] == 0x45 and frame[l3 + 28] == 0x45:
        # Fast path: outer and quoted headers of 20 bytes. Returns only a PTB the general path
        # below would return identically; any other outcome is left to the general path.
        total, frag, proto, src, dst, type_code, mtu, qtotal, qfrag, qproto, qsrc, qdst, sport, dport = _V4_COMMON(
            frame, l3
        )
        if (
            proto == IPPROTO_ICMP
            and type_code == 0x0304
            and not frag & 0x3FFF
            and _V4_COMMON_LEN + 4 <= total <= n - l3  # 8 bytes of the quoted L4 header
            and qtotal >= 20
            and qproto in PORT_PROTOCOLS
        ):
            if qfrag & 0x1FFF:  # a quoted non-first fragment: no ports
                sport = dport = -1
            return _new(PTB, (4, src, dst, mtu, qsrc, qdst, qproto, sport, dport, qtotal, l3, l3 + 20, frame))
    return _ipv4_general(frame, l3)


def _ipv4_general(frame: bytes, l3: int) -> ParseResult:
    """:func:`_ipv4` for every layout (options, short quotes, other protocols, fragments)."""
    n = len(frame)
    if n < l3 + 20:
        return _TOO_SHORT
    vihl, total, frag, proto, _csum = _IPV4_FIXED(frame, l3)
    ihl = (vihl & 0x0F) << 2
    if vihl >> 4 != 4 or ihl < 20 or total < ihl:
        return Reason.BAD_IP
    end = l3 + total  # anything after is Ethernet padding
    if end > n:
        return _TOO_SHORT
    icmp = l3 + ihl
    if frag & 0x3FFF:  # MF set or non-zero offset
        return Reason.FRAGMENT
    if proto != IPPROTO_ICMP:
        return _NOT_PTB
    if end - icmp < 8:
        return _TOO_SHORT
    type_code, mtu = _TYPE_CODE_MTU4(frame, icmp)
    if type_code != 0x0304:  # ICMP_DEST_UNREACH / ICMP_FRAG_NEEDED
        return _NOT_PTB

    # The quoted packet: an IPv4 header and at least the first 8 bytes of its payload.
    q = icmp + 8
    if end - q < 20:
        return Reason.SHORT_QUOTE
    qvihl, qtotal, qfrag, qproto, _ = _IPV4_FIXED(frame, q)
    qihl = (qvihl & 0x0F) << 2
    if qvihl >> 4 != 4 or qihl < 20 or qtotal < qihl:
        return Reason.BAD_INNER
    if end - q < qihl:
        return Reason.SHORT_QUOTE
    sport = dport = -1
    l4 = q + qihl
    if not qfrag & 0x1FFF:  # first (or only) fragment: the L4 header is quoted
        if qproto == IPPROTO_ICMP and end > l4 and frame[l4] in ICMP4_ERROR_TYPES:
            return Reason.INNER_ICMP_ERROR
        if end - l4 < QUOTED_L4_MIN:
            return Reason.SHORT_L4_QUOTE
        if qproto in PORT_PROTOCOLS:
            sport, dport = _PORTS(frame, l4)
    elif end - l4 < QUOTED_L4_MIN:  # the kernel pulls 8 bytes whatever the quote holds
        return Reason.SHORT_L4_QUOTE
    # tuple.__new__ directly: the NamedTuple's generated __new__ is a Python-level call.
    return _new(
        PTB,
        (
            4,
            frame[l3 + 12 : l3 + 16],
            frame[l3 + 16 : l3 + 20],
            mtu,
            frame[q + 12 : q + 16],
            frame[q + 16 : q + 20],
            qproto,
            sport,
            dport,
            qtotal,
            l3,
            icmp,
            frame,
        ),
    )


def _ipv6(frame: bytes, l3: int) -> ParseResult:
    """An IPv6 PTB at offset ``l3`` of ``frame``, every check but the ICMP checksum."""
    n = len(frame)
    if n >= l3 + _V6_COMMON_LEN and frame[l3 + 6] == IPPROTO_ICMPV6:
        # Fast path: no extension header outside or in the quote (same contract as in _ipv4).
        vfc, plen, _nh, src, dst, type_code, mtu, qvfc, qplen, qnh, qsrc, qdst, sport, dport = _V6_COMMON(frame, l3)
        if (
            type_code == 0x0200
            and vfc >> 4 == 6
            and qvfc >> 4 == 6
            and _V6_COMMON_LEN - 36 <= plen <= n - l3 - 40  # 8 bytes of the quoted L4 header
            and qnh in PORT_PROTOCOLS
        ):
            return _new(PTB, (6, src, dst, mtu, qsrc, qdst, qnh, sport, dport, 40 + qplen, l3, l3 + 40, frame))
    return _ipv6_general(frame, l3)


def _ipv6_general(frame: bytes, l3: int) -> ParseResult:
    """:func:`_ipv6` for every layout (extension headers, short quotes, other protocols)."""
    n = len(frame)
    if n < l3 + 40:
        return _TOO_SHORT
    if frame[l3] >> 4 != 6:
        return Reason.BAD_IP
    plen = frame[l3 + 4] << 8 | frame[l3 + 5]
    if plen == 0:  # jumbogram or nonsense; a PTB is at most 1280 bytes
        return Reason.BAD_IP
    end = l3 + 40 + plen
    if end > n:
        return _TOO_SHORT
    nh = frame[l3 + 6]
    off = l3 + 40
    if nh != IPPROTO_ICMPV6:
        for _ in range(MAX_EXT_HEADERS + 1):
            if nh == IPPROTO_ICMPV6:
                break
            if end - off < 8:
                return _TOO_SHORT if nh in _GENERIC_EXT or nh in (IPPROTO_FRAGMENT, IPPROTO_AH) else _NOT_PTB
            if nh in _GENERIC_EXT:
                nh, off = frame[off], off + ((frame[off + 1] + 1) << 3)
            elif nh == IPPROTO_FRAGMENT:
                if _U16(frame, off + 2)[0] & 0xFFF9:  # offset != 0 or more fragments follow
                    return Reason.FRAGMENT
                nh, off = frame[off], off + 8
            elif nh == IPPROTO_AH:
                nh, off = frame[off], off + ((frame[off + 1] + 2) << 2)
            else:
                return _NOT_PTB
        else:
            return Reason.BAD_EXT_HEADER
    icmp = off
    if end - icmp < 8:
        return _TOO_SHORT
    type_code, mtu = _TYPE_CODE_MTU6(frame, icmp)
    if type_code != 0x0200:  # ICMPV6_PKT_TOOBIG, code 0
        return _NOT_PTB

    q = icmp + 8
    if end - q < 40:
        return Reason.SHORT_QUOTE
    if frame[q] >> 4 != 6:
        return Reason.BAD_INNER
    qplen = frame[q + 4] << 8 | frame[q + 5]
    proto = frame[q + 6]
    if proto in PORT_PROTOCOLS:  # no quoted extension header: the common case
        if end - q < 40 + QUOTED_L4_MIN:
            return Reason.SHORT_L4_QUOTE
        sport, dport = _PORTS(frame, q + 40)
    else:
        proto, sport, dport = _quoted_ipv6_l4(frame, q, end)
        if proto < 0:
            return Reason.INNER_ICMP_ERROR if proto == -1 else Reason.SHORT_L4_QUOTE
    return _new(
        PTB,
        (
            6,
            frame[l3 + 8 : l3 + 24],
            frame[l3 + 24 : l3 + 40],
            mtu,
            frame[q + 8 : q + 24],
            frame[q + 24 : q + 40],
            proto,
            sport,
            dport,
            40 + qplen,
            l3,
            icmp,
            frame,
        ),
    )


def _quoted_ipv6_l4(frame: bytes, q: int, end: int) -> tuple[int, int, int]:
    """Walk the quoted packet's extension headers as far as the quote allows.

    Returns (protocol, sport, dport); ports are -1 when not quoted. The protocol is -1 when
    the quoted packet is itself an ICMPv6 error, -2 when the quote ends inside the extension
    headers or less than 8 bytes after them (the kernel's ipv6_skip_exthdr / pull fails).
    """
    nh = frame[q + 6]
    off = q + 40
    for _ in range(MAX_EXT_HEADERS):
        if nh in _GENERIC_EXT or nh == IPPROTO_AH:
            if end - off < 2:
                return -2, -1, -1
            step = ((frame[off + 1] + 1) << 3) if nh != IPPROTO_AH else ((frame[off + 1] + 2) << 2)
            nh, off = frame[off], off + step
        elif nh == IPPROTO_FRAGMENT:
            if end - off < 8:
                return -2, -1, -1
            first = not (_U16(frame, off + 2)[0] & 0xFFF8)
            nh, off = frame[off], off + 8
            if not first:
                return nh, -1, -1
        else:
            break
    if nh == IPPROTO_ICMPV6 and end > off and frame[off] < 128:
        return -1, -1, -1
    if end - off < QUOTED_L4_MIN:
        return -2, -1, -1
    if nh in PORT_PROTOCOLS:
        sport, dport = _PORTS(frame, off)
        return nh, sport, dport
    return nh, -1, -1

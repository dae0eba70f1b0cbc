"""The quoted packet's sequence word: what the owner's kernel checks besides the ports.

:func:`quoted_tag` reads the quoted TCP sequence number or SCTP verification tag of a parsed
:class:`~pmtud_relay.core.packet.PTB`, for dedup (core/dedup.py: a forged PTB quoting another
sequence number must not suppress the router's genuine one). Pure; reads only offsets the
parser already checked.
"""

from __future__ import annotations

import struct

from pmtud_relay.core.packet import (
    _GENERIC_EXT,
    _U32,
    IPPROTO_AH,
    IPPROTO_FRAGMENT,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    MAX_EXT_HEADERS,
    PTB,
)

#: What :func:`quoted_tag` returns when the quote holds no such word (see there).
NO_TAG = -1
# From the outer IP header: IPv4 total length, quoted version/IHL, quoted L4 bytes 4-7 (20-byte
# headers); IPv6 payload length, quoted next header, quoted L4 bytes 4-7 (no extension header).
_V4_TAG = struct.Struct("!2xH24xB23xI").unpack_from
_V4_TAG_LEN = 56
_V6_TAG = struct.Struct("!4xH48xB37xI").unpack_from
_V6_TAG_LEN = 96


def quoted_tag(ptb: PTB) -> int:
    """The quoted 32-bit word besides the ports that the owner's kernel checks before it acts
    on the PTB: TCP's sequence number (it must lie in the socket's send window) or SCTP's
    verification tag (it must be the association's). 0 for every other protocol (UDP's next
    bytes are its length and checksum, which no kernel matches: the ports are all there is);
    :data:`NO_TAG` for TCP or SCTP when the quote stops before the word or has no L4 header
    (such a PTB is one no kernel acts on; in dedup's arithmetic modulo 2^32, NO_TAG counts as
    0xFFFFFFFF, so leaving the word out gives a forger nothing a guess would not).

    Called only for a PTB that passed the policy (dedup keys on it), so it reads the offsets
    the parser already checked and re-walks quoted IPv6 extension headers only when there are
    some."""
    family, _, _, _, _, _, proto, sport, _, _, l3, icmp, frame = ptb  # one unpack: no property calls
    if proto != IPPROTO_TCP and proto != IPPROTO_SCTP:
        return 0
    if sport < 0:  # a quoted non-first fragment, or no room for the ports
        return NO_TAG
    # The common layouts (no IPv4 options or IPv6 extension headers, outside or in the quote) in
    # one struct read each; everything else below.
    if family == 4:
        if icmp == l3 + 20 and len(frame) >= l3 + _V4_TAG_LEN:
            total, qvihl, tag = _V4_TAG(frame, l3)
            if qvihl == 0x45 and total >= _V4_TAG_LEN:
                return tag
    elif icmp == l3 + 40 and len(frame) >= l3 + _V6_TAG_LEN:
        plen, qnh, tag = _V6_TAG(frame, l3)
        if qnh == proto and plen >= _V6_TAG_LEN - 40:
            return tag
    q = icmp + 8
    if family == 4:
        end = l3 + (frame[l3 + 2] << 8 | frame[l3 + 3])
        l4 = q + ((frame[q] & 0x0F) << 2)
    else:
        end = l3 + 40 + (frame[l3 + 4] << 8 | frame[l3 + 5])
        l4 = q + 40 if frame[q + 6] == proto else _quoted_ipv6_l4_offset(frame, q, end)
    if end - l4 < 8:
        return NO_TAG
    return _U32(frame, l4 + 4)[0]


def _quoted_ipv6_l4_offset(frame: bytes, q: int, end: int) -> int:
    """Offset of the quoted upper-layer header behind quoted IPv6 extension headers (the walk
    of :func:`_quoted_ipv6_l4`, for a packet it already found ports in)."""
    nh = frame[q + 6]
    off = q + 40
    for _ in range(MAX_EXT_HEADERS):
        if end - off < 2:
            break
        if nh in _GENERIC_EXT:
            nh, off = frame[off], off + ((frame[off + 1] + 1) << 3)
        elif nh == IPPROTO_AH:
            nh, off = frame[off], off + ((frame[off + 1] + 2) << 2)
        elif nh == IPPROTO_FRAGMENT:
            nh, off = frame[off], off + 8
        else:
            break
    return off

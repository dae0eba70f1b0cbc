"""Which well-formed PTBs a peer receiver must not inject: ones this host's kernel would not
accept had they arrived on the wire. Sans-IO.

Injection sends the PTB through ``lo`` with its output route attached, so the checks the kernel
makes on a packet arriving from a NIC (martian source, source routing) never run: in the routed lab
(Linux 6.18, tests/test_e2e_peers.py) an injected PTB from 127.0.0.1 or ``::1``, or
quoting a packet with LSRR or a type-0 routing header, lowered the PMTU just like a genuine one.
The peer relay must not open that path, so the receiver refuses:

* **A loopback outer source** (127.0.0.0/8, ``::1``): no router sends from there; from the wire
  the kernel drops it as a martian (IPv6: ``ip6_rcv_core`` drops a non-loopback packet from
  ``::1``).
* **Source routes**, in the outer header or the quoted one: an IPv4 LSRR or SSRR option, an IPv6
  routing header of type 0 (deprecated by RFC 5095; Linux neither sends nor honours it). The
  kernel drops a source-routed packet it receives (``accept_source_route`` off), and a packet
  really sent with a source route carries its next hop as destination, so a PTB quoting one
  cannot be about a connection to the peer it names.

The walks are bounded (IPv4 options: at most 40 bytes; IPv6: at most ``MAX_EXT_HEADERS``
headers) and read only bytes the parser already proved present.
"""

from __future__ import annotations

from pmtud_relay.core.packet import (
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMPV6,
    IPPROTO_ROUTING,
    MAX_EXT_HEADERS,
    PTB,
)
from pmtud_relay.peers.wire import PeerReason

IPOPT_END = 0
IPOPT_NOOP = 1
IPOPT_LSRR = 0x83  # 131: loose source and record route
IPOPT_SSRR = 0x89  # 137: strict source and record route
IPV6_SRCRT_TYPE_0 = 0

_LOOPBACK_V6 = bytes(15) + b"\x01"

#: The reasons :func:`refusal` gives (the peer receiver counts them like the decoder's).
INJECTION_REASONS = frozenset({PeerReason.SOURCE_ROUTED, PeerReason.LOOPBACK_SOURCE})


def refusal(ptb: PTB) -> PeerReason | None:
    """The reason not to inject ``ptb`` (from ``parse_packet``: IP header at ``l3_offset``),
    or None."""
    frame = ptb.frame
    l3 = ptb.l3_offset
    icmp = ptb.icmp_offset
    if ptb.family == 4:
        if ptb.outer_src[0] == 127:
            return PeerReason.LOOPBACK_SOURCE
        q = icmp + 8
        qihl = (frame[q] & 0x0F) << 2
        if _v4_source_routed(frame, l3 + 20, icmp) or _v4_source_routed(frame, q + 20, q + qihl):
            return PeerReason.SOURCE_ROUTED
        return None
    if ptb.outer_src == _LOOPBACK_V6:
        return PeerReason.LOOPBACK_SOURCE
    end = l3 + 40 + (frame[l3 + 4] << 8 | frame[l3 + 5])
    if _v6_routing_type0(frame, frame[l3 + 6], l3 + 40, icmp):
        return PeerReason.SOURCE_ROUTED
    q = icmp + 8
    if _v6_routing_type0(frame, frame[q + 6], q + 40, end):
        return PeerReason.SOURCE_ROUTED
    return None


def _v4_source_routed(frame: bytes, off: int, end: int) -> bool:
    """True if the IPv4 options in frame[off:end] hold an LSRR or SSRR option. A malformed
    length ends the walk (the kernel drops such a header anyway); a source-route type byte
    met before that counts, whatever its length says."""
    while off < end:
        opt = frame[off]
        if opt == IPOPT_END:
            return False
        if opt == IPOPT_NOOP:
            off += 1
            continue
        if opt == IPOPT_LSRR or opt == IPOPT_SSRR:
            return True
        if off + 1 >= end:
            return False
        length = frame[off + 1]
        if length < 2:
            return False
        off += length
    return False


def _v6_routing_type0(frame: bytes, nh: int, off: int, end: int) -> bool:
    """True if the IPv6 extension-header chain starting with ``nh`` at ``off`` holds a routing
    header of type 0 before ``end`` (the ICMPv6 header for the outer chain, the quote's end
    for the quoted one)."""
    for _ in range(MAX_EXT_HEADERS):
        if nh == IPPROTO_ICMPV6 or end - off < 2:
            return False
        if nh == IPPROTO_ROUTING:
            if end - off >= 3 and frame[off + 2] == IPV6_SRCRT_TYPE_0:
                return True
            nh, off = frame[off], off + ((frame[off + 1] + 1) << 3)
        elif nh == IPPROTO_HOPOPTS or nh == IPPROTO_DSTOPTS:
            nh, off = frame[off], off + ((frame[off + 1] + 1) << 3)
        elif nh == IPPROTO_AH:
            nh, off = frame[off], off + ((frame[off + 1] + 2) << 2)
        elif nh == IPPROTO_FRAGMENT:
            if end - off < 8 or frame[off + 2] << 8 | frame[off + 3] & 0xF8:  # a non-first fragment
                return False
            nh, off = frame[off], off + 8
        else:
            return False
    return False

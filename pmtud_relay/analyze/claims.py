"""What a frame the parser rejected says it is, by its type fields alone (``pmtud-relay
analyze``): a malformed PTB (truncated, bad checksum, short quote, ...) or other traffic. Pure."""

from __future__ import annotations

from pmtud_relay.core.packet import (
    _U16,
    ETH_HLEN,
    ETH_P_IP,
    ETH_P_IPV6,
    ICMP_DEST_UNREACH,
    ICMP_FRAG_NEEDED,
    ICMPV6_PKT_TOOBIG,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    MAX_VLAN_TAGS,
    VLAN_TPIDS,
)


def claimed_ptb(frame: bytes) -> tuple[int, int] | None:
    """(family, outer IP header offset) when ``frame`` says it is a PTB by its type fields
    alone (EtherType after up to two VLAN tags, IP version and protocol, a first fragment,
    ICMP type and code), whatever else is wrong with it; None otherwise.

    For reports about frames :func:`parse_frame` rejected (``pmtud-relay analyze``): it tells
    a malformed PTB (truncated, bad checksum, short quote, …) from other traffic. Never raises.
    """
    n = len(frame)
    if n < ETH_HLEN:
        return None
    ethertype = frame[12] << 8 | frame[13]
    off, tags = ETH_HLEN, 0
    while ethertype in VLAN_TPIDS and tags < MAX_VLAN_TAGS and n >= off + 4:
        ethertype = frame[off + 2] << 8 | frame[off + 3]
        off += 4
        tags += 1
    if ethertype == ETH_P_IP:
        if n < off + 20 or frame[off] >> 4 != 4:
            return None
        ihl = (frame[off] & 0x0F) << 2
        if ihl < 20 or frame[off + 9] != IPPROTO_ICMP or _U16(frame, off + 6)[0] & 0x1FFF or n < off + ihl + 2:
            return None
        if frame[off + ihl] == ICMP_DEST_UNREACH and frame[off + ihl + 1] == ICMP_FRAG_NEEDED:
            return 4, off
    elif ethertype == ETH_P_IPV6:
        if (n >= off + 42 and frame[off] >> 4 == 6 and frame[off + 6] == IPPROTO_ICMPV6
                and frame[off + 40] == ICMPV6_PKT_TOOBIG and frame[off + 41] == 0):
            return 6, off
    return None

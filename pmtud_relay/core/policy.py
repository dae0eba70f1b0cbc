"""Relay policy: which well-formed PTBs this host may relay.

A PTB is relayed only if it reached this host as unicast, is about a packet its
destination sent (outer destination == quoted source), that source is one of the
service addresses (VIPs), its MTU is plausible, and it passes the optional protocol
and port allow-lists.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from pmtud_relay.core.packet import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_UDPLITE,
    PTB,
)
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.slots import slotted

# Linux packet types (sockaddr_ll.sll_pkttype), the arrival facts capture reports.
PACKET_HOST = 0
PACKET_BROADCAST = 1
PACKET_MULTICAST = 2
PACKET_OTHERHOST = 3
PACKET_OUTGOING = 4
#: Not a kernel packet type: a broadcast or multicast frame the caller identified as another
#: relay's L2 copy, checked like a captured PTB but for its group MAC, to be looked up (delivery
#: confirmation), never relayed again.
PACKET_L2_COPY = 0x100

#: The kernel's default net.ipv4.route.min_pmtu.
DEFAULT_FLOOR_V4 = 552
#: IPv6 minimum link MTU (RFC 8200).
DEFAULT_FLOOR_V6 = 1280

#: Names accepted in the protocol allow-list; ``icmp`` covers ICMPv4 and ICMPv6.
PROTOCOL_NAMES = {
    "tcp": (IPPROTO_TCP,),
    "udp": (IPPROTO_UDP,),
    "sctp": (IPPROTO_SCTP,),
    "udplite": (IPPROTO_UDPLITE,),
    "icmp": (IPPROTO_ICMP, IPPROTO_ICMPV6),
}


def protocol_numbers(names: Iterable[str]) -> frozenset[int]:
    """Map allow-list names (``tcp``, ``udp``, … or numbers) to protocol numbers."""
    out: set[int] = set()
    for name in names:
        key = str(name).strip().lower()
        if key in PROTOCOL_NAMES:
            out.update(PROTOCOL_NAMES[key])
        elif key.isascii() and key.isdigit() and 0 <= int(key) <= 255:  # str.isdigit() also admits '²', '٦'
            out.add(int(key))
        else:
            raise ValueError(f"unknown protocol {name!r} (use {', '.join(PROTOCOL_NAMES)} or a number 0-255)")
    return frozenset(out)


class VipSet:
    """Service addresses: exact addresses (fast set lookup) plus prefixes.

    Immutable once built; build a new one when discovery finds a change.
    """

    __slots__ = ("_exact", "_prefixes", "networks")

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network | str] = ()):
        nets = tuple(sorted({ipaddress.ip_network(n, strict=False) for n in networks}, key=_net_sort_key))
        self.networks = nets
        self._exact = frozenset(n.network_address.packed for n in nets if n.num_addresses == 1)
        self._prefixes = tuple(
            (n.max_prefixlen // 8, int(n.network_address), int(n.netmask)) for n in nets if n.num_addresses > 1
        )

    def __contains__(self, packed: bytes) -> bool:
        if packed in self._exact:
            return True
        if self._prefixes:
            length = len(packed)
            value = int.from_bytes(packed, "big")
            for plen, net, mask in self._prefixes:
                if plen == length and value & mask == net:
                    return True
        return False

    def __len__(self) -> int:
        return len(self.networks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VipSet) and self.networks == other.networks

    def __hash__(self) -> int:
        return hash(self.networks)

    def __repr__(self) -> str:
        return f"VipSet({[str(n) for n in self.networks]})"


def _net_sort_key(n):
    return (n.version, n)


@slotted
@dataclass(frozen=True)
class Policy:
    """What may be relayed. Pure data; see :meth:`check`."""

    vips: VipSet = field(default_factory=VipSet)
    floor_v4: int = DEFAULT_FLOOR_V4
    floor_v6: int = DEFAULT_FLOOR_V6
    protocols: frozenset[int] | None = None  # None: any quoted protocol
    ports: frozenset[int] | None = None  # None: any quoted source port

    def __post_init__(self) -> None:
        if not 68 <= self.floor_v4 <= 65535:
            raise ValueError(f"floor_v4 must be within 68..65535, got {self.floor_v4}")
        if not 1280 <= self.floor_v6 <= 65535:
            raise ValueError(f"floor_v6 must be within 1280..65535, got {self.floor_v6}")
        if self.ports is not None and any(not 0 < p < 65536 for p in self.ports):
            raise ValueError("ports must be within 1..65535")

    def check(self, ptb: PTB, pkttype: int = PACKET_HOST) -> Reason | None:
        """Return the reason to drop ``ptb``, or None if policy allows relaying it.

        The L2 test (group bit of the destination MAC) applies only to PTBs parsed from a frame;
        a bare IP packet (``l3_offset`` 0, as a peer relays it) has no MAC to test.
        ``PACKET_L2_COPY`` skips the L2 test (another relay's copy, looked up, never relayed)."""
        if (pkttype != PACKET_HOST or (ptb.l3_offset and ptb.frame[0] & 1)) and pkttype != PACKET_L2_COPY:
            if pkttype == PACKET_OUTGOING:
                return Reason.OWN_FRAME
            if pkttype == PACKET_OTHERHOST:
                return Reason.OTHER_HOST
            return Reason.NOT_UNICAST
        if ptb.outer_dst != ptb.inner_src:
            return Reason.DST_NOT_QUOTED_SRC
        vips = self.vips
        # The exact-address set first: a C-level lookup; VipSet.__contains__ is a Python call.
        if ptb.inner_src not in vips._exact and (not vips._prefixes or ptb.inner_src not in vips):
            return Reason.NOT_VIP
        if ptb.mtu < (self.floor_v4 if ptb.family == 4 else self.floor_v6):
            return Reason.MTU_BELOW_FLOOR
        if ptb.mtu >= ptb.inner_length:
            return Reason.MTU_NOT_BELOW_PACKET
        if self.protocols is not None and ptb.proto not in self.protocols:
            return Reason.PROTO_NOT_ALLOWED
        if self.ports is not None and ptb.sport not in self.ports:
            return Reason.PORT_NOT_ALLOWED
        return None

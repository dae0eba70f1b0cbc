"""What an MTU value hints at: encapsulation overheads and kernel floors.

Shared by ``doctor`` (learned PMTU exceptions, tunnel interfaces) and ``analyze``
(MTUs announced in captured PTBs). These are hints, not diagnoses: a value is
explained by the common encapsulation that produces it from a 1500-byte link.
"""

from __future__ import annotations

#: Exact values seen on 1500-byte paths, with the overhead that produces them.
EXACT_HINTS_V4: dict[int, str] = {
    1492: "PPPoE (8-byte PPPoE/PPP header)",
    1480: "IPIP or SIT/6in4 (20-byte outer IPv4 header): LVS/IPVS tunnel mode, 6in4 tunnel brokers",
    1476: "GRE over IPv4 (20-byte outer IPv4 + 4-byte GRE header)",
    1472: "GRE with a key (28 bytes) or IPIP/6in4 over PPPoE (1492 - 20)",
    1462: "GRETAP (outer IPv4 + GRE + inner Ethernet header, 38 bytes)",
    1450: "VXLAN or Geneve over IPv4 (50 bytes: outer IPv4 + UDP + VXLAN + inner Ethernet)",
    1440: "WireGuard over IPv4 (60 bytes)",
    1430: "VXLAN or Geneve over IPv6 (70 bytes)",
    1420: "WireGuard over IPv6 (80 bytes)",
    1400: "a round value often configured by hand on VPN/tunnel interfaces or by MSS-clamping routers",
    576: "the classic IPv4 minimum datagram size (some middleboxes and old stacks announce it)",
}
EXACT_HINTS_V6: dict[int, str] = {
    1492: "PPPoE (8-byte PPPoE/PPP header)",
    1480: "6in4/SIT tunnel (IPv6 carried in IPv4, 20 bytes): the usual tunnel-broker MTU",
    1476: "IPv6 over GRE over IPv4 (24 bytes)",
    1472: "6in4 over PPPoE (1492 - 20) or GRE with a key",
    1460: "IPv6-in-IPv6 (ip6tnl, 40-byte outer IPv6 header)",
    1456: "ip6gre (40-byte outer IPv6 + 4-byte GRE header)",
    1452: "ip6tnl with the encapsulation-limit option (48 bytes) or 6in6 over PPPoE",
    1450: "VXLAN or Geneve over IPv4 (50 bytes)",
    1440: "WireGuard over IPv4 (60 bytes)",
    1430: "VXLAN or Geneve over IPv6 (70 bytes)",
    1420: "WireGuard over IPv6 (80 bytes)",
    1400: "a round value often configured by hand on VPN/tunnel interfaces",
}

#: IPsec ESP overhead depends on cipher, integrity check, padding and mode (tunnel
#: mode over IPv4: roughly 50-73 bytes), so ESP shows up as a range, e.g. 1438.
ESP_RANGE = (1410, 1446)
ESP_HINT = "IPsec ESP likely (tunnel-mode overhead is 50-73 bytes depending on cipher and padding, e.g. 1438)"

#: The kernel's floors: net.ipv4.route.min_pmtu default and the IPv6 minimum MTU.
FLOOR_V4 = 552
FLOOR_V6 = 1280


def mtu_hint(mtu: int, family: int) -> str | None:
    """A short explanation of ``mtu`` for an IPv4 (4) or IPv6 (6) path, or None."""
    if family == 6:
        if mtu == FLOOR_V6:
            return "IPv6 minimum MTU (1280): a legitimately small path, a conservative tunnel, or a PMTU collapse"
        if mtu < FLOOR_V6:
            return "below the IPv6 minimum MTU of 1280: invalid; the kernel uses 1280"
        exact = EXACT_HINTS_V6.get(mtu)
    else:
        if mtu == FLOOR_V4:
            return "the Linux IPv4 PMTU floor (net.ipv4.route.min_pmtu default 552): a PMTU collapse or forged PTB"
        if mtu < FLOOR_V4:
            return "below the Linux IPv4 PMTU floor of 552: clamped by the kernel; usually forged or broken"
        exact = EXACT_HINTS_V4.get(mtu)
    if exact:
        return exact
    if ESP_RANGE[0] <= mtu <= ESP_RANGE[1]:
        return ESP_HINT
    return None


#: Encapsulation overhead per link kind: (minimum, typical, explanation). The minimum is
#: used to decide that a tunnel MTU is too large; family-dependent kinds are resolved by
#: :func:`tunnel_overhead`.
KIND_OVERHEAD: dict[str, tuple[int, int, str]] = {
    "ipip": (20, 20, "an outer IPv4 header (20 bytes)"),
    "sit": (20, 20, "an outer IPv4 header (20 bytes, IPv6 in IPv4)"),
    "gre": (24, 24, "an outer IPv4 header and a GRE header (20 + 4 bytes; +4 each for key, checksum, sequence)"),
    "gretap": (38, 38, "an outer IPv4 header, a GRE header and the inner Ethernet header (20 + 4 + 14 bytes)"),
    "erspan": (50, 50, "outer IPv4, GRE, ERSPAN and inner Ethernet headers (about 50 bytes)"),
    "ip6tnl": (40, 48, "an outer IPv6 header (40 bytes) plus the 8-byte encapsulation-limit option by default"),
    "ip6gre": (44, 52, "an outer IPv6 header and a GRE header (40 + 4 bytes, +8 with encapsulation limit)"),
    "ip6gretap": (58, 66,
                  "outer IPv6, GRE and inner Ethernet headers (40 + 4 + 14 bytes, +8 with encapsulation limit)"),
    "vti": (50, 73, "IPsec ESP in tunnel mode (outer IP, ESP header, IV, padding, trailer, ICV: 50-73 bytes)"),
    "vti6": (70, 93, "IPsec ESP in tunnel mode over IPv6 (70-93 bytes)"),
    "xfrm": (50, 73, "IPsec ESP (50-73 bytes depending on cipher and mode)"),
    "wireguard": (60, 80, "WireGuard (60 bytes over IPv4, 80 over IPv6)"),
    "vxlan": (50, 50, "VXLAN (outer IP, UDP, VXLAN and inner Ethernet: 50 bytes over IPv4, 70 over IPv6)"),
    "geneve": (50, 50, "Geneve (50 bytes over IPv4, 70 over IPv6, plus options)"),
    "bareudp": (28, 28, "outer IPv4 + UDP (28 bytes)"),
}

TUNNEL_KINDS = frozenset(KIND_OVERHEAD)


def tunnel_overhead(kind: str, outer_family: int | None) -> tuple[int, int, str] | None:
    """(minimum, typical, explanation) for a tunnel of ``kind`` whose outer family is known or None."""
    base = KIND_OVERHEAD.get(kind)
    if base is None:
        return None
    lo, typ, text = base
    if kind == "wireguard":  # 60 over IPv4, 80 over IPv6; unknown: 60 minimum, 80 typical
        if outer_family == 4:
            typ = lo
        elif outer_family == 6:
            lo = typ
    elif outer_family == 6 and kind in ("vxlan", "geneve", "bareudp"):
        lo, typ = lo + 20, typ + 20
    return lo, typ, text

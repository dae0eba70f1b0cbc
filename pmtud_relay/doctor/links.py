"""Interfaces and tunnels whose MTU is below (or wrongly above) what carries them.

:func:`collect` reads links through pyroute2 into plain :class:`LinkRecord` values;
:func:`check` is pure, so tests can feed it records.

The lower device of a link is, in order: the kind's own link attribute
(``IFLA_VXLAN_LINK``, ``IFLA_GRE_LINK``, ``IFLA_IPTUN_LINK``, ...), ``IFLA_LINK`` (not
for veth, where it names the peer), the interface the route to the tunnel's remote
address leaves through, and for tunnels without any of these (WireGuard, flow-based
VXLAN/Geneve) the default-route interface, marked as assumed.
"""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass, replace

from pmtud_relay.doctor.findings import Finding, Severity
from pmtud_relay.doctor.hints import TUNNEL_KINDS, tunnel_overhead

_KIND_LINK_ATTR = {
    "vxlan": "IFLA_VXLAN_LINK",
    "gre": "IFLA_GRE_LINK", "gretap": "IFLA_GRE_LINK", "ip6gre": "IFLA_GRE_LINK",
    "ip6gretap": "IFLA_GRE_LINK", "erspan": "IFLA_GRE_LINK",
    "ipip": "IFLA_IPTUN_LINK", "sit": "IFLA_IPTUN_LINK", "ip6tnl": "IFLA_IPTUN_LINK",
    "vti": "IFLA_VTI_LINK", "vti6": "IFLA_VTI_LINK",
    "xfrm": "IFLA_XFRM_LINK",
}
_KIND_REMOTE_ATTRS = {
    "vxlan": ("IFLA_VXLAN_GROUP", "IFLA_VXLAN_GROUP6"),
    "geneve": ("IFLA_GENEVE_REMOTE", "IFLA_GENEVE_REMOTE6"),
    "gre": ("IFLA_GRE_REMOTE",), "gretap": ("IFLA_GRE_REMOTE",), "erspan": ("IFLA_GRE_REMOTE",),
    "ip6gre": ("IFLA_GRE_REMOTE",), "ip6gretap": ("IFLA_GRE_REMOTE",),
    "ipip": ("IFLA_IPTUN_REMOTE",), "sit": ("IFLA_IPTUN_REMOTE",), "ip6tnl": ("IFLA_IPTUN_REMOTE",),
    "vti": ("IFLA_VTI_REMOTE",), "vti6": ("IFLA_VTI_REMOTE",),
}
_OUTER_V6_KINDS = {"ip6tnl", "ip6gre", "ip6gretap", "vti6"}


@dataclass(frozen=True)
class LinkRecord:
    index: int
    name: str
    kind: str | None  # IFLA_INFO_KIND; None for physical NICs and lo
    mtu: int
    up: bool
    lower: int | None = None  # lower device index (same namespace)
    lower_source: str = ""  # "attribute", "route to <remote>", "default route (assumed)"
    peer: int | None = None  # veth peer index when it is in the same namespace
    remote: str | None = None  # tunnel remote address
    outer_family: int | None = None  # 4 or 6 when known


def _attr(msg, name):
    try:
        return msg.get_attr(name)
    except Exception:  # pragma: no cover - pyroute2 decoding oddities
        return None


def collect(ipr=None) -> list[LinkRecord]:
    """Links of the current network namespace, with lower devices resolved."""
    from pyroute2 import IPRoute

    own = ipr is None
    ipr = ipr or IPRoute()
    try:
        records: list[LinkRecord] = []
        for link in ipr.get_links():
            info = _attr(link, "IFLA_LINKINFO")
            kind = _attr(info, "IFLA_INFO_KIND") if info is not None else None
            data = _attr(info, "IFLA_INFO_DATA") if info is not None else None
            other_ns = _attr(link, "IFLA_LINK_NETNSID") is not None
            iflink = _attr(link, "IFLA_LINK")
            lower = peer = None
            source = ""
            if data is not None and kind in _KIND_LINK_ATTR:
                value = _attr(data, _KIND_LINK_ATTR[kind])
                if value:
                    lower, source = value, "attribute"
            if kind == "veth":
                peer = iflink if iflink and not other_ns else None
            elif lower is None and iflink and iflink != link["index"] and not other_ns:
                lower, source = iflink, "attribute"
            remote = None
            if data is not None and kind is not None:
                for name in _KIND_REMOTE_ATTRS.get(kind, ()):
                    value = _attr(data, name)
                    if value and value not in ("0.0.0.0", "::"):
                        remote = value
                        break
            outer = None
            if remote:
                outer = 6 if ":" in remote else 4
            elif kind in _OUTER_V6_KINDS:
                outer = 6
            records.append(LinkRecord(
                index=link["index"], name=_attr(link, "IFLA_IFNAME") or f"if{link['index']}", kind=kind,
                mtu=_attr(link, "IFLA_MTU") or 0, up=bool(link["flags"] & 1), lower=lower,
                lower_source=source, peer=peer, remote=remote, outer_family=outer,
            ))
        by_index = {r.index: r for r in records}
        resolved = []
        default_index = None
        for r in records:
            if r.kind in TUNNEL_KINDS and r.lower is None:
                if r.remote:
                    try:
                        routes = ipr.route("get", dst=r.remote)
                        oif = _attr(routes[0], "RTA_OIF") if routes else None
                    except Exception:
                        oif = None
                    if oif and oif in by_index and oif != r.index:
                        r = replace(r, lower=oif, lower_source=f"route to {r.remote}")
                else:
                    if default_index is None:
                        default_index = _default_index(ipr)
                    if default_index and default_index != r.index:
                        r = replace(r, lower=default_index, lower_source="default route (assumed)")
            resolved.append(r)
        return resolved
    finally:
        if own:
            ipr.close()


def _default_index(ipr) -> int:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            for route in ipr.get_default_routes(family=family):
                oif = _attr(route, "RTA_OIF")
                if oif:
                    return oif
        except Exception:
            pass
    return 0


def check(records: list[LinkRecord]) -> list[Finding]:
    by_index = {r.index: r for r in records}
    findings: list[Finding] = []
    seen_pairs: set[frozenset[int]] = set()
    tunnels = 0
    for r in records:
        state = "" if r.up else " (down)"
        cap = (lambda s: s) if r.up else (lambda s: min(s, Severity.INFO))
        if r.kind == "veth" and r.peer in by_index:
            pair = frozenset((r.index, r.peer))
            if pair in seen_pairs:
                continue
            seen_pairs.add(pair)
            p = by_index[r.peer]
            if p.mtu != r.mtu:
                small, big = (r, p) if r.mtu < p.mtu else (p, r)
                findings.append(Finding(
                    f"interfaces.{r.name}",
                    cap(Severity.WARNING) if (r.up and p.up) else Severity.INFO,
                    f"veth pair {r.name} (mtu {r.mtu}) <-> {p.name} (mtu {p.mtu}) has mismatched MTUs{state}",
                    f"{big.name} sends frames up to {big.mtu} bytes that {small.name} must receive; the kernel "
                    f"drops non-GSO frames larger than {small.name}'s MTU on the way in, silently, with no PTB "
                    "(the sender's kernel sees nothing wrong): a black hole for large UDP and unsegmented "
                    "packets.",
                    f"ip link set dev {big.name} mtu {small.mtu} (or raise {small.name} to {big.mtu})",
                    {"a": asdict(r), "b": asdict(p)},
                ))
            continue
        lower = by_index.get(r.lower) if r.lower else None
        overhead = tunnel_overhead(r.kind, r.outer_family) if r.kind in TUNNEL_KINDS else None
        if overhead is not None:  # every TUNNEL_KINDS kind has one
            tunnels += 1
            lo, typ, text = overhead
            if lower is None:
                findings.append(Finding(
                    f"interfaces.{r.name}", Severity.INFO,
                    f"{r.kind} tunnel {r.name} mtu {r.mtu}{state}; lower device unknown",
                    f"A {r.kind} tunnel adds {text}; packets larger than its MTU get a Frag-Needed/PTB from this "
                    "host, and the lower path must carry the MTU plus that overhead.", "",
                    {"link": asdict(r), "overhead_min": lo, "overhead_typical": typ}))
                continue
            room = lower.mtu - r.mtu
            assumed = f" (lower device via {r.lower_source})" if r.lower_source != "attribute" else ""
            data = {"link": asdict(r), "lower": asdict(lower), "overhead_min": lo, "overhead_typical": typ}
            if room < lo:
                findings.append(Finding(
                    f"interfaces.{r.name}", cap(Severity.WARNING),
                    f"{r.kind} tunnel {r.name} mtu {r.mtu} is too large for {lower.name} mtu {lower.mtu}: "
                    f"needs at least {lo} bytes of overhead, has {room}{state}",
                    f"A {r.kind} tunnel adds {text}{assumed}. Packets between {lower.mtu - lo + 1} and {r.mtu} "
                    f"bytes fit the tunnel but not {lower.name} once encapsulated: they are fragmented after "
                    "encapsulation or dropped, and any PTB about the outer packet goes to this host, not to the "
                    "sender. Inner senders never learn the right MTU.",
                    f"ip link set dev {r.name} mtu {lower.mtu - typ}",
                    data,
                ))
            else:
                findings.append(Finding(
                    f"interfaces.{r.name}", Severity.INFO,
                    f"{r.kind} tunnel {r.name} mtu {r.mtu} = {lower.name} mtu {lower.mtu} - {room}{state}",
                    f"A {r.kind} tunnel adds {text}{assumed}, so its MTU is below the lower device's. Hosts "
                    f"sending through it learn {r.mtu} from PTBs this host generates (watch "
                    "OutDestUnreachs); an MSS clamp on the tunnel saves TCP the round trip.", "",
                    data,
                ))
            continue
        if lower is not None and r.mtu != lower.mtu:
            below = r.mtu < lower.mtu
            findings.append(Finding(
                f"interfaces.{r.name}", Severity.INFO if below else cap(Severity.WARNING),
                f"{r.kind or 'interface'} {r.name} mtu {r.mtu} is {'below' if below else 'above'} its lower "
                f"device {lower.name} mtu {lower.mtu}{state}",
                ("Traffic routed through it is limited to the smaller MTU; this host answers larger DF packets "
                 "with Frag-Needed/PTBs." if below else
                 "Frames larger than the lower device's MTU cannot be sent and are dropped."),
                "" if below else f"ip link set dev {r.name} mtu {lower.mtu}",
                {"link": asdict(r), "lower": asdict(lower)},
            ))
    if not findings:
        findings.append(Finding(
            "interfaces", Severity.OK,
            f"{len(records)} interfaces: no tunnels and no MTU mismatches" if not tunnels
            else f"{len(records)} interfaces: tunnel MTUs consistent",
            data={"interfaces": {r.name: r.mtu for r in records}}))
    return findings

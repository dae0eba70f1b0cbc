"""Host facts through rtnetlink (pmtud_relay/netlink/rtnl.py): default interface, service addresses.

Service addresses (VIPs) are discovered where operators and Kubernetes put them: addresses on
the interfaces named by ``vip_interfaces`` (default ``lo`` and ``@dummy``). On ``lo`` a prefix
makes the whole prefix local (the "AnyIP" idiom), so the whole prefix counts; on any other
interface only the address itself. ``@dummy`` stands for every interface of kind dummy, which
includes ``kube-ipvs0`` (kube-proxy in IPVS mode puts every Service address there). Other
entries are interface names or shell-style patterns (``vip*``). Loopback and link-local
addresses are never VIPs. docs/deployment.md says where VIPs live per Kubernetes set-up.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Iterable, Sequence

from pmtud_relay.netlink import rtnl

DEFAULT_VIP_INTERFACES = ("lo", "@dummy")
KIND_PREFIX = "@"  # "@dummy": every interface of that kind (IFLA_INFO_KIND)

_NOT_SERVICE = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("fe80::/10"),
)


class HostInfoError(RuntimeError):
    pass


def vip_interface_matches(link: rtnl.Link, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith(KIND_PREFIX):
            if link.kind == pattern[len(KIND_PREFIX):]:
                return True
        elif link.name is not None and fnmatch.fnmatchcase(link.name, pattern):
            return True
    return False


def select_vips(links: Iterable[rtnl.Link], addresses: Iterable[rtnl.Address],
                patterns: Sequence[str] = DEFAULT_VIP_INTERFACES,
                ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The service addresses among ``addresses``: those on a link ``patterns`` selects."""
    service_links = {link.index: link.name == "lo" for link in links if vip_interface_matches(link, patterns)}
    found = set()
    for addr in addresses:
        whole_prefix = service_links.get(addr.index)
        if whole_prefix is None:
            continue
        ip = ipaddress.ip_address(addr.address)
        if any(ip in net for net in _NOT_SERVICE):
            continue
        plen = min(addr.prefixlen, ip.max_prefixlen) if whole_prefix else ip.max_prefixlen
        found.add(ipaddress.ip_network(f"{ip}/{plen}", strict=False))
    return sorted(found, key=lambda n: (n.version, n))


def discover_vips(patterns: Sequence[str] = DEFAULT_VIP_INTERFACES,
                  ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Addresses on the interfaces ``patterns`` selects that can be service addresses (one link
    dump and one address dump)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, rtnl.NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        return select_vips(rtnl.links(sock), rtnl.addresses(sock), patterns)
    finally:
        sock.close()


def default_interface() -> str:
    """The interface holding the IPv4 default route (main table, lowest metric), else the IPv6 one."""
    for family in (socket.AF_INET, socket.AF_INET6):
        defaults = [r for r in rtnl.routes(family)
                    if r.dst_len == 0 and r.table == rtnl.RT_TABLE_MAIN and r.type == rtnl.RTN_UNICAST and r.oifs]
        for route in sorted(defaults, key=lambda r: r.priority):
            try:
                return socket.if_indextoname(route.oifs[0])
            except OSError:
                continue
    raise HostInfoError("no default route: name the capture interface(s) with --interface")

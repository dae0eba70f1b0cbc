"""Host facts through netlink (pyroute2): default interface, service addresses.

Service addresses (VIPs) are discovered the way operators configure them: addresses on
``lo`` (a prefix on ``lo`` makes the whole prefix local, the "AnyIP" idiom, so the whole
prefix counts) and on ``dummy`` interfaces (host address only). Loopback and link-local
addresses are never VIPs.
"""

from __future__ import annotations

import ipaddress
import socket

from pyroute2 import IPRoute

_NOT_SERVICE = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("fe80::/10"),
)


class HostInfoError(RuntimeError):
    pass


def _attr(msg, name):
    return msg.get_attr(name) if hasattr(msg, "get_attr") else msg.get(name)


def _link_kind(link) -> str | None:
    info = _attr(link, "IFLA_LINKINFO")
    if info is None:
        return None
    return info.get_attr("IFLA_INFO_KIND")


def discover_vips(ipr: IPRoute | None = None) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Addresses on ``lo`` and dummy interfaces that can be service addresses."""
    own = ipr is None
    ipr = ipr or IPRoute()
    try:
        service_links = {}
        for link in ipr.get_links():
            name = _attr(link, "IFLA_IFNAME")
            kind = _link_kind(link)
            if name == "lo" or kind == "dummy":
                service_links[link["index"]] = name == "lo"
        found = set()
        for addr in ipr.get_addr():
            index = addr["index"]
            if index not in service_links:
                continue
            text = _attr(addr, "IFA_LOCAL") or _attr(addr, "IFA_ADDRESS")
            if not text:
                continue
            ip = ipaddress.ip_address(text)
            if any(ip in net for net in _NOT_SERVICE):
                continue
            plen = addr["prefixlen"] if service_links[index] else ip.max_prefixlen
            found.add(ipaddress.ip_network(f"{ip}/{plen}", strict=False))
        return sorted(found, key=lambda n: (n.version, n))
    finally:
        if own:
            ipr.close()


def default_interface(ipr: IPRoute | None = None) -> str:
    """The interface holding the IPv4 default route, else the IPv6 one."""
    own = ipr is None
    ipr = ipr or IPRoute()
    try:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_default_routes(family=family):
                oif = _attr(route, "RTA_OIF")
                if oif is None:
                    multipath = _attr(route, "RTA_MULTIPATH") or []
                    oif = multipath[0]["oif"] if multipath else None
                if oif is not None:
                    return socket.if_indextoname(oif)
        raise HostInfoError("no default route: name the capture interface(s) with --interface")
    finally:
        if own:
            ipr.close()

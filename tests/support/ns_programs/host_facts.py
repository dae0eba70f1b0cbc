"""Host facts inside a namespace; JSON on stdout.

    facts     stdin: a JSON list of vip_interfaces pattern lists; the daemon's own rtnetlink
              dumps (default interface, VIPs, links, addresses) and pyroute2's (the reference)
    default   the default interface, or "error: REASON"
"""

from __future__ import annotations

import ipaddress
import json
import sys

from tests.support.ns_programs import bounded


def facts(patterns: list[list[str]]) -> dict:
    from pyroute2 import IPRoute

    from pmtud_relay import hostinfo
    from pmtud_relay.netlink import rtnl

    out: dict = {"default": hostinfo.default_interface(),
                 "vips": {",".join(p): [str(n) for n in hostinfo.discover_vips(tuple(p))] for p in patterns},
                 "links": sorted([link.name, link.kind] for link in rtnl.links())}
    with IPRoute() as ipr:
        def kind(link):
            info = link.get_attr("IFLA_LINKINFO")
            return info.get_attr("IFLA_INFO_KIND") if info is not None else None

        out["ref_links"] = sorted([link.get_attr("IFLA_IFNAME"), kind(link)] for link in ipr.get_links())
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        out["ref_addrs"] = sorted([names[a["index"]], a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"),
                                   a["prefixlen"]] for a in ipr.get_addr())
    byidx = {link.index: link.name for link in rtnl.links()}
    out["addrs"] = sorted([byidx[a.index], str(ipaddress.ip_address(a.address)), a.prefixlen]
                          for a in rtnl.addresses())
    return out


def default() -> str:
    from pmtud_relay import hostinfo

    try:
        return hostinfo.default_interface()
    except hostinfo.HostInfoError as exc:
        return "error: " + str(exc)


if __name__ == "__main__":
    bounded(30)
    print(json.dumps(facts(json.load(sys.stdin)) if sys.argv[1] == "facts" else default()))

"""Building the lab: namespaces, sysctls, links, addresses, routes and neighbours.

:class:`LabBuild` holds the steps :class:`~pmtud_relay.lab.topology.Lab` runs in ``up()``
and :class:`~pmtud_relay.lab.routed.RoutedLab` reuses for its routed variant.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Callable

from .addressing import (
    CLIENT4,
    CLIENT6,
    CLIENT_MTU,
    ICMP_TABLE,
    ROUTER4,
    ROUTER6,
    ROUTER_CLIENT4,
    ROUTER_CLIENT6,
    ROUTER_CLIENT_MTU,
    SERVER_MTU,
    VIP4,
    VIP6,
    Server,
)
from .netns import (
    LabError,
    _run,
    list_netns,
)


class LabBuild:
    """The steps that build a lab, shared by :class:`~pmtud_relay.lab.topology.Lab` and
    :class:`~pmtud_relay.lab.routed.RoutedLab` (which mix them with their own)."""

    # Set by Lab.__init__; the methods are Lab's.
    servers: list[Server]
    ns_client: str
    ns_router: str
    ns_injector: str | None
    _nodes: dict[str, str]  # node name -> namespace
    _created: list[str]
    ip: Callable[..., subprocess.CompletedProcess]
    run: Callable[..., subprocess.CompletedProcess]
    sysctl: Callable[[str, dict[str, object]], None]
    ns: Callable[[str], str]

    # -- building blocks shared with the routed lab (lab/routed.py) -----------------------------
    def _create_namespaces(self) -> None:
        existing = set(list_netns())
        for node, ns in self._nodes.items():
            if ns in existing:
                raise LabError(f"namespace {ns} already exists")
            _run(["ip", "netns", "add", ns])
            self._created.append(ns)

    def _base_sysctls(self) -> dict[str, object]:
        """Set in every namespace before interfaces appear (DAD, RA)."""
        return {
            "net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0,
            "net.ipv6.conf.all.dad_transmits": 0, "net.ipv6.conf.default.dad_transmits": 0,
            "net.ipv6.conf.all.accept_ra": 0, "net.ipv6.conf.default.accept_ra": 0,
            "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
        }

    def _router_sysctls(self) -> dict[str, object]:
        return {
            "net.ipv4.ip_forward": 1,
            "net.ipv6.conf.all.forwarding": 1,
        }

    def _router_hash(self) -> None:
        """ECMP on the packet's own headers (addresses, protocol, ports), as a hardware router
        hashes. Policy 1 ("L4") is not that between namespaces: it takes the skb's hash when one
        is present, and an skb from a local socket carries the socket's hash across the veth,
        which the client's kernel changes when its SYN times out; the retried SYN then landed
        on another server, which answered it while the first one still held the half-open
        connection, and the client got a reset (seen in the soak, docs/security.md). Custom
        field hashing (policy 3, both families) arrived in Linux 5.14; older kernels keep 1."""
        for fam in ("ipv4", "ipv6"):
            try:
                self.sysctl("router", {f"net.{fam}.fib_multipath_hash_fields": 0x0037,
                                       f"net.{fam}.fib_multipath_hash_policy": 3})
            except LabError:
                self.sysctl("router", {f"net.{fam}.fib_multipath_hash_policy": 1})

    def _prepare_nodes(self) -> None:
        self._create_namespaces()
        base = self._base_sysctls()
        for node in self._nodes:
            self.sysctl(node, base)
            self.ip(node, "link", "set", "lo", "up")
        self.sysctl("router", self._router_sysctls())
        self._router_hash()

    def _build_client_link(self) -> None:
        """client <-> router, with the asymmetric MTU that makes the router send PTBs."""
        self.ip("router", "link", "add", "cl0", "address", "02:00:00:00:01:01",
                "mtu", str(ROUTER_CLIENT_MTU), "type", "veth", "peer", "name", "eth0",
                "address", "02:00:00:00:01:02", "mtu", str(CLIENT_MTU),
                "netns", self.ns_client)
        self.ip("client", "addr", "add", f"{CLIENT4}/24", "dev", "eth0")
        self.ip("client", "addr", "add", f"{CLIENT6}/64", "dev", "eth0", "nodad")
        self.ip("client", "link", "set", "eth0", "up")
        self.ip("client", "route", "add", "default", "via", ROUTER_CLIENT4)
        self.ip("client", "-6", "route", "add", "default", "via", ROUTER_CLIENT6)
        self.ip("router", "addr", "add", f"{ROUTER_CLIENT4}/24", "dev", "cl0")
        self.ip("router", "addr", "add", f"{ROUTER_CLIENT6}/64", "dev", "cl0", "nodad")
        self.ip("router", "link", "set", "cl0", "up")
        self._neigh("client", "eth0", ROUTER_CLIENT4, ROUTER_CLIENT6, "02:00:00:00:01:01")
        self._neigh("router", "cl0", CLIENT4, CLIENT6, "02:00:00:00:01:02")

    def _route_vips(self, dev_of) -> None:
        """L4 ECMP to the VIPs over every server (``dev_of(server)``: the router's device towards
        it), but the router's own ICMP errors for the VIPs all go to s1: the deterministic form
        of the misdelivery a real ECMP router produces."""
        hops4: list[str] = []
        hops6: list[str] = []
        for s in self.servers:
            hops4 += ["nexthop", "via", s.ipv4, "dev", dev_of(s)]
            hops6 += ["nexthop", "via", s.ipv6, "dev", dev_of(s)]
        if len(self.servers) == 1:
            s = self.servers[0]
            self.ip("router", "route", "add", f"{VIP4}/32", "via", s.ipv4, "dev", dev_of(s))
            self.ip("router", "-6", "route", "add", f"{VIP6}/128", "via", s.ipv6, "dev", dev_of(s))
        else:
            self.ip("router", "route", "add", f"{VIP4}/32", *hops4)
            self.ip("router", "-6", "route", "add", f"{VIP6}/128", *hops6)
        s1 = self.servers[0]
        self.ip("router", "route", "add", f"{VIP4}/32", "via", s1.ipv4, "dev", dev_of(s1),
                "table", str(ICMP_TABLE))
        self.ip("router", "-6", "route", "add", f"{VIP6}/128", "via", s1.ipv6, "dev", dev_of(s1),
                "table", str(ICMP_TABLE))
        self.ip("router", "rule", "add", "ipproto", "icmp", "to", VIP4, "lookup",
                str(ICMP_TABLE))
        self.ip("router", "-6", "rule", "add", "ipproto", "ipv6-icmp", "to", VIP6, "lookup",
                str(ICMP_TABLE))

    def _build(self) -> None:
        self._prepare_nodes()
        if self.ns_injector:
            # the injector only sends hand-made frames; keep it silent otherwise
            self.sysctl("injector", {"net.ipv6.conf.all.disable_ipv6": 1,
                                     "net.ipv6.conf.default.disable_ipv6": 1})
        self._build_client_link()

        # the servers' L2 segment
        self.ip("router", "link", "add", "br0", "address", "02:00:00:00:05:01", "type", "bridge",
                "forward_delay", "0", "stp_state", "0", "mcast_snooping", "0")
        self.ip("router", "addr", "add", f"{ROUTER4}/24", "dev", "br0")
        self.ip("router", "addr", "add", f"{ROUTER6}/64", "dev", "br0", "nodad")
        self.ip("router", "link", "set", "br0", "up")

        for s in self.servers:
            self.ip("router", "link", "add", s.bridge_port, "address",
                    f"02:00:00:00:06:{0x10 + s.index:02x}", "type", "veth", "peer", "name",
                    s.iface, "address", s.mac, "mtu", str(SERVER_MTU), "netns", s.ns)
            self.ip("router", "link", "set", s.bridge_port, "master", "br0")
            self.ip("router", "link", "set", s.bridge_port, "up")
            # static FDB entry: unicast frames to a server are never flooded to the others
            self.run("router", ["bridge", "fdb", "replace", s.mac, "dev", s.bridge_port,
                                "master", "static"])
            self.sysctl(s.name, {
                "net.ipv4.tcp_mtu_probing": 0,      # never hide the black hole
                "net.ipv4.ip_no_pmtu_disc": 0,
                "net.ipv4.conf.all.arp_announce": 2,
            })
            self.ip(s.name, "addr", "add", f"{s.ipv4}/24", "dev", s.iface)
            self.ip(s.name, "addr", "add", f"{s.ipv6}/64", "dev", s.iface, "nodad")
            self.ip(s.name, "addr", "add", f"{VIP4}/32", "dev", "lo")
            self.ip(s.name, "addr", "add", f"{VIP6}/128", "dev", "lo", "nodad")
            self.ip(s.name, "link", "set", s.iface, "up")
            self.ip(s.name, "route", "add", "default", "via", ROUTER4)
            self.ip(s.name, "-6", "route", "add", "default", "via", ROUTER6)

        if self.ns_injector:
            self.ip("router", "link", "add", "pinj", "address", "02:00:00:00:06:fe",
                    "type", "veth", "peer", "name", "eth0", "address", "02:00:00:00:05:fe",
                    "netns", self.ns_injector)
            self.ip("router", "link", "set", "pinj", "master", "br0")
            self.ip("router", "link", "set", "pinj", "up")
            self.ip("injector", "link", "set", "eth0", "up")

        # Permanent neighbour entries: no ARP/ND at all, so the first packets of a run are never
        # queued or lost, and IPv6 ECMP (which falls back to the first nexthop while a sibling's
        # neighbour is unresolved) picks nexthops by the L4 hash alone.
        for s in self.servers:
            self._neigh("router", "br0", s.ipv4, s.ipv6, s.mac)
            self._neigh(s.name, s.iface, ROUTER4, ROUTER6, "02:00:00:00:05:01")
        self._route_vips(lambda s: "br0")
        self._wait_links_up()

    def _neigh(self, node: str, dev: str, a4: str, a6: str, mac: str) -> None:
        for addr in (a4, a6):
            self.ip(node, "neigh", "replace", addr, "lladdr", mac, "dev", dev, "nud", "permanent")

    def _wait_links_up(self, timeout: float = 5.0) -> None:
        """Wait until every interface is operationally up and every bridge port forwards.

        A veth's carrier change reaches operstate (and the qdisc) through linkwatch, which may
        delay it by up to a second: packets sent before that are dropped, which would turn the
        first SYNs of a run into 1 s retransmissions."""
        deadline = time.monotonic() + timeout
        pending: list[str] = []
        while True:
            pending = []
            for node in self._nodes:
                for link in json.loads(self.ip(node, "-j", "link", "show").stdout):
                    if link.get("ifname") == "lo":
                        continue
                    if link.get("operstate") != "UP" or link.get("qdisc") == "noop":
                        pending.append(f"{node}:{link.get('ifname')}={link.get('operstate')}")
            for port in json.loads(self.run("router", ["bridge", "-j", "link", "show"]).stdout):
                if port.get("state") != "forwarding":
                    pending.append(f"router:{port.get('ifname')}={port.get('state')}")
            if not pending:
                return
            if time.monotonic() > deadline:
                raise LabError(f"links not up after {timeout}s: {', '.join(pending)}")
            time.sleep(0.05)

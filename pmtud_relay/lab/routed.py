"""Routed (L3) ECMP topology: every server in its own subnet behind the router, no shared L2.

Layout (one lab = one unique tag; every namespace name starts with it)::

    client ns               router ns                                   server ns (s1..sN)
    eth0 1500 <--veth--> cl0 (MTU 1400)                                 lo: VIP 192.0.2.10/32
    203.0.113.2/24          203.0.113.1/24                                  2001:db8:ffff::10/128
    2001:db8:c::2/64        2001:db8:c::1/64
                            r1 198.51.100.1/28   2001:db8:5:1::1/64 <--veth--> s1 eth0 198.51.100.2/28
                                                                                       2001:db8:5:1::2/64
                            r2 198.51.100.17/28  2001:db8:5:2::1/64 <--veth--> s2 eth0 198.51.100.18/28
                                                                                       2001:db8:5:2::2/64
                            rN 198.51.100.(16(N-1)+1)/28, 2001:db8:5:N::1/64 ...

The router hashes the VIP over every server on L4 (addresses, protocol, ports: policy 3) and routes
its own ICMP errors for the VIP (``ip rule ipproto icmp|ipv6-icmp to VIP lookup 100``) to s1
only: PTBs about flows owned by s2..sN reach s1, and no L2 broadcast from s1 can reach anyone.
Servers reach each other's unicast addresses through the router (peer relay traffic).

Reverse-path filtering: the servers run with strict rp_filter (1) by default (``rp_filter=``
changes it) to show that peer mode does not depend on it: the relayed UDP arrives on the
interface the route back to its sender uses, and the injected PTB loops through ``lo`` with
its output route attached, so ``fib_validate_source`` never runs on it. The router runs with
rp_filter 0 (it forwards ECMP traffic whose return path it does not choose).

Everything else (lifecycle, processes, transfers, PMTU queries, teardown) is
:class:`~pmtud_relay.lab.topology.Lab`'s.
"""

from __future__ import annotations

import json
import time

from .addressing import SERVER_MTU, VIP4, VIP6, Server, family_of, server_mac
from .netns import LabError
from .topology import Lab

MAX_ROUTED_SERVERS = 15  # /28s of 198.51.100.0/24, the last one kept spare


def link_net4(i: int) -> int:
    """First address (network) of server ``i``'s /28 as the last octet."""
    return 16 * (i - 1)


def router_link4(i: int) -> str:
    return f"198.51.100.{link_net4(i) + 1}"


def router_link6(i: int) -> str:
    return f"2001:db8:5:{i:x}::1"


def routed_server4(i: int) -> str:
    return f"198.51.100.{link_net4(i) + 2}"


def routed_server6(i: int) -> str:
    return f"2001:db8:5:{i:x}::2"


def router_port_mac(i: int) -> str:
    return f"02:00:00:00:06:{0x10 + i:02x}"


class RoutedLab(Lab):
    """The ECMP black hole across L3: servers in different subnets. Use as a context manager::

        with RoutedLab(servers=3) as lab:
            flows = lab.run_transfers(4, flows=12, timeout=3)

    Nodes: ``"client"``, ``"router"``, ``"s1"``..``"sN"`` (no injector: there is no shared
    segment to inject on; send from the router namespace instead).
    """

    def __init__(self, servers: int = 3, *, rp_filter: int = 1, **kw) -> None:
        if not 1 <= servers <= MAX_ROUTED_SERVERS:
            raise ValueError(f"servers must be 1..{MAX_ROUTED_SERVERS}")
        if rp_filter not in (0, 1, 2):
            raise ValueError("rp_filter must be 0, 1 or 2")
        kw["injector"] = False
        super().__init__(servers, **kw)
        self.rp_filter = rp_filter
        self.servers = [
            Server(i, f"s{i}", f"{self.tag}-s{i}", "eth0", f"r{i}", server_mac(i),
                   routed_server4(i), routed_server6(i))
            for i in range(1, servers + 1)
        ]

    # -- addresses --------------------------------------------------------------------------
    def router_addr(self, family: object, server: str | int = 1) -> str:
        """The router's address on ``server``'s link (default s1's, where PTBs come from)."""
        i = self.server(server).index
        return router_link4(i) if family_of(family) == 4 else router_link6(i)

    def peer_args(self, server: str | int, family: object = 4, port: int | None = None) -> list[str]:
        """``--peer ADDR[:PORT]`` options naming every server except ``server``."""
        me = self.server(server)
        out = []
        for s in self.servers:
            if s.index == me.index:
                continue
            addr = s.addr(family)
            host = f"[{addr}]" if ":" in addr else addr
            out += ["--peer", f"{host}:{port}" if port else host]
        return out

    # -- link state --------------------------------------------------------------------------
    def set_server_link(self, server: str | int, up: bool, timeout: float = 5.0) -> None:
        """Take ``server``'s uplink down or bring it back. Down: the router's nexthop via it
        turns linkdown and ECMP skips it (``ignore_routes_with_linkdown``). Up: routes and
        neighbour entries the kernel flushed are restored."""
        s = self.server(server)
        if not up:
            self.ip(s.name, "link", "set", s.iface, "down")
            # Carrier loss reaches the router's end through the kernel's link watch, which may
            # lag; until the nexthop is marked linkdown a new flow can still hash to it.
            deadline = time.monotonic() + timeout
            while "linkdown" not in self.ip("router", "route", "show", f"{self.vip(4)}/32").stdout:
                if time.monotonic() > deadline:
                    raise LabError(f"router never marked the nexthop via {s.name} linkdown")
                time.sleep(0.02)
            return
        self.ip(s.name, "link", "set", s.iface, "up")
        self._server_routes(s)
        self._wait_links_up(timeout)

    def _server_routes(self, s: Server) -> None:
        self.ip(s.name, "addr", "replace", f"{s.ipv4}/28", "dev", s.iface)
        self.ip(s.name, "addr", "replace", f"{s.ipv6}/64", "dev", s.iface, "nodad")
        self._neigh(s.name, s.iface, router_link4(s.index), router_link6(s.index),
                    router_port_mac(s.index))
        self.ip(s.name, "route", "replace", "default", "via", router_link4(s.index))
        self.ip(s.name, "-6", "route", "replace", "default", "via", router_link6(s.index))

    # -- build ---------------------------------------------------------------------------------
    def _base_sysctls(self) -> dict[str, object]:
        # keep IPv6 addresses while a link is down, so set_server_link(up) finds them
        return {**super()._base_sysctls(),
                "net.ipv6.conf.all.keep_addr_on_down": 1, "net.ipv6.conf.default.keep_addr_on_down": 1}

    def _router_sysctls(self) -> dict[str, object]:
        # a server whose link is down drops out of the ECMP set
        return {**super()._router_sysctls(),
                "net.ipv4.conf.all.ignore_routes_with_linkdown": 1,
                "net.ipv4.conf.default.ignore_routes_with_linkdown": 1,
                "net.ipv6.conf.all.ignore_routes_with_linkdown": 1,
                "net.ipv6.conf.default.ignore_routes_with_linkdown": 1}

    def _build(self) -> None:
        self._prepare_nodes()
        self._build_client_link()

        # one point-to-point subnet per server
        for s in self.servers:
            i = s.index
            self.ip("router", "link", "add", s.bridge_port, "address", router_port_mac(i),
                    "type", "veth", "peer", "name", s.iface, "address", s.mac,
                    "mtu", str(SERVER_MTU), "netns", s.ns)
            self.ip("router", "addr", "add", f"{router_link4(i)}/28", "dev", s.bridge_port)
            self.ip("router", "addr", "add", f"{router_link6(i)}/64", "dev", s.bridge_port, "nodad")
            self.ip("router", "link", "set", s.bridge_port, "up")
            self.sysctl(s.name, {
                "net.ipv4.tcp_mtu_probing": 0,      # never hide the black hole
                "net.ipv4.ip_no_pmtu_disc": 0,
                "net.ipv4.conf.all.rp_filter": self.rp_filter,
                "net.ipv4.conf.default.rp_filter": self.rp_filter,
            })
            self.ip(s.name, "addr", "add", f"{VIP4}/32", "dev", "lo")
            self.ip(s.name, "addr", "add", f"{VIP6}/128", "dev", "lo", "nodad")
            self.ip(s.name, "link", "set", s.iface, "up")
            self.sysctl(s.name, {f"net.ipv4.conf.{s.iface}.rp_filter": self.rp_filter})
            self._server_routes(s)

        for s in self.servers:
            self._neigh("router", s.bridge_port, s.ipv4, s.ipv6, s.mac)
        self._route_vips(lambda s: s.bridge_port)
        self._wait_links_up()

    def rp_filter_values(self, server: str | int) -> dict[str, int]:
        """Effective IPv4 rp_filter settings inside ``server`` (all, default, eth0, lo)."""
        s = self.server(server)
        out = {}
        for name in ("all", "default", s.iface, "lo"):
            cp = self.run(s.name, ["cat", f"/proc/sys/net/ipv4/conf/{name}/rp_filter"])
            out[name] = int(cp.stdout.strip())
        return out

    def route_json(self, node: str, *args: str) -> list[dict]:
        return json.loads(self.ip(node, "-j", *args).stdout or "[]")

    def __repr__(self) -> str:
        return f"<RoutedLab {self.tag} servers={self.n_servers} up={self._up}>"

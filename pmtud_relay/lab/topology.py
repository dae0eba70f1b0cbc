"""ECMP black-hole topology in network namespaces.

Layout (one lab = one unique tag, e.g. ``pmr-4711-9f3a``; every namespace name starts with it)::

    client ns                router ns                                  server ns (s1..sN)
    eth0 1500  <--veth-->  cl0 (MTU 1400)                               lo: VIP 192.0.2.10/32
    203.0.113.2/24          203.0.113.1/24                                  2001:db8:ffff::10/128
    2001:db8:c::2/64        2001:db8:c::1/64
                           br0 198.51.100.1/24, 2001:db8:5::1/64
                             +-- p1 <--veth--> eth0  198.51.100.11/24  2001:db8:5::11/64  (s1)
                             +-- p2 <--veth--> eth0  198.51.100.12/24  2001:db8:5::12/64  (s2)
                             +-- ...
                             +-- pinj <--veth--> eth0 (injector ns, no addresses)

The router hashes the VIP over every server on L4 (addresses, protocol, ports: policy 3) but routes
its own ICMP errors for the VIP (``ip rule ipproto icmp|ipv6-icmp to VIP lookup 100``) to s1
only, so PTBs about flows owned by s2..sN are misdelivered to s1: the classic ECMP PMTUD black hole.

Only documentation prefixes are used, every interface lives in a namespace created here (nothing
is created in, or sent to, the caller's namespace), every subprocess has a timeout, and the lab
always tears down: context manager, ``atexit`` and a SIGTERM -> SystemExit handler (installed
only while a lab is up, only from the main thread, only if SIGTERM had the default action).

The lab is split by concern: :mod:`~pmtud_relay.lab.addressing` (addresses, names,
:class:`Server`), :mod:`~pmtud_relay.lab.netns` (namespaces, processes, commands),
:mod:`~pmtud_relay.lab.teardown` (the safety net), :mod:`~pmtud_relay.lab.build` (the build
steps) and this module (:class:`Lab`: names, commands, lifecycle, PMTU state, transfers,
raw frames). The names other modules import from here stay importable from here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence

from .addressing import (
    CLIENT4,
    CLIENT6,
    DEFAULT_PORT,
    DEFAULT_SIZE,
    MAX_SERVERS,
    ROUTER4,
    ROUTER6,
    VIP4,
    VIP6,
    Server,
    family_of,
    server_addr4,
    server_addr6,
    server_mac,
)
from .build import LabBuild
from .netns import (
    _PKG_ROOT,
    CMD_TIMEOUT,
    LabError,
    LabProcess,
    _kill_netns_pids,
    _run,
    cleanup_stale,
    have_prerequisites,
    list_netns,
)
from .teardown import _register, _unregister
from .transfer import FlowResult, parse_client_output


# --- the lab ---------------------------------------------------------------------------------
class Lab(LabBuild):
    """The ECMP PMTUD black-hole topology. Use as a context manager::

        with Lab(servers=3) as lab:
            lab.start_transfer_servers()
            flows = lab.run_transfers(4, flows=12, timeout=3)

    Nodes are addressed by name: ``"client"``, ``"router"``, ``"injector"``, ``"s1"``..``"sN"``.
    """

    def __init__(self, servers: int = 3, *, prefix: str = "pmr-", injector: bool = True,
                 port: int = DEFAULT_PORT, size: int = DEFAULT_SIZE,
                 python: str | None = None) -> None:
        if not 1 <= servers <= MAX_SERVERS:
            raise ValueError(f"servers must be 1..{MAX_SERVERS}")
        self.n_servers = servers
        self.port = port
        self.size = size
        self.python = python or sys.executable
        self.tag = f"{prefix}{os.getpid()}-{secrets.token_hex(2)}"
        self.ns_client = f"{self.tag}-client"
        self.ns_router = f"{self.tag}-router"
        self.ns_injector = f"{self.tag}-inj" if injector else None
        self.servers: list[Server] = [
            Server(i, f"s{i}", f"{self.tag}-s{i}", "eth0", f"p{i}", server_mac(i),
                   server_addr4(i), server_addr6(i))
            for i in range(1, servers + 1)
        ]
        self._nodes: dict[str, str] = {"client": self.ns_client, "router": self.ns_router}
        if self.ns_injector:
            self._nodes["injector"] = self.ns_injector
        for s in self.servers:
            self._nodes[s.name] = s.ns
        self._created: list[str] = []
        self._procs: list[LabProcess] = []
        self._transfer_servers: dict[str, LabProcess] = {}
        self._owner_pid = os.getpid()
        self._up = False
        self._lock = threading.Lock()

    # -- names & addresses ----------------------------------------------------------------
    vip4 = VIP4
    vip6 = VIP6
    client4 = CLIENT4
    client6 = CLIENT6

    @property
    def namespaces(self) -> list[str]:
        return list(self._nodes.values())

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    @property
    def server_names(self) -> list[str]:
        return [s.name for s in self.servers]

    def ns(self, node: str) -> str:
        """Namespace name of ``node`` (a node name, or already a namespace name of this lab)."""
        if node in self._nodes:
            return self._nodes[node]
        if node in self._nodes.values():
            return node
        raise KeyError(f"no node {node!r} in lab {self.tag} (nodes: {', '.join(self._nodes)})")

    def server(self, which: str | int) -> Server:
        if isinstance(which, int):
            return self.servers[which - 1]
        for s in self.servers:
            if s.name == which or s.ns == which:
                return s
        raise KeyError(which)

    def vip(self, family: object) -> str:
        return VIP4 if family_of(family) == 4 else VIP6

    def client_addr(self, family: object) -> str:
        return CLIENT4 if family_of(family) == 4 else CLIENT6

    def router_addr(self, family: object) -> str:
        return ROUTER4 if family_of(family) == 4 else ROUTER6

    def interfaces(self, node: str) -> list[str]:
        """Interface names inside ``node``'s namespace (from ``ip -o link``)."""
        out = self.ip(node, "-o", "link", "show").stdout
        names = []
        for line in out.splitlines():
            parts = line.split(":", 2)
            if len(parts) >= 2:
                names.append(parts[1].strip().split("@", 1)[0])
        return names

    def mac(self, node: str, iface: str = "eth0") -> str:
        """MAC address of ``iface`` in ``node`` (queried, lower case)."""
        data = json.loads(self.ip(node, "-j", "link", "show", "dev", iface).stdout)
        return data[0]["address"].lower()

    # -- command execution ----------------------------------------------------------------
    def run(self, node: str, argv: Sequence[str], *, timeout: float = CMD_TIMEOUT,
            check: bool = True, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` inside ``node``'s namespace (``ip netns exec``), text mode, captured."""
        full_env = None
        if env is not None:
            full_env = dict(os.environ)
            full_env.update(env)
        return _run(["ip", "netns", "exec", self.ns(node), *argv], timeout=timeout, check=check,
                    input=input, env=full_env)

    def ip(self, node: str, *args: str, timeout: float = CMD_TIMEOUT,
           check: bool = True) -> subprocess.CompletedProcess:
        """``ip -n NS ARGS...``"""
        return _run(["ip", "-n", self.ns(node), *args], timeout=timeout, check=check)

    def sysctl(self, node: str, settings: dict[str, object]) -> None:
        """Set sysctls inside ``node`` (``sysctl -w``; without procps, the module
        :mod:`pmtud_relay.lab.sysctl` writing /proc/sys with the same arguments)."""
        args = [f"{k}={v}" for k, v in settings.items()]
        if shutil.which("sysctl"):
            self.run(node, ["sysctl", "-q", "-w", *args])
        else:
            self.run(node, [self.python, "-m", "pmtud_relay.lab.sysctl", *args],
                     env={"PYTHONPATH": _PKG_ROOT})

    def spawn(self, node: str, argv: Sequence[str], *,
              env: dict[str, str] | None = None) -> LabProcess:
        """Start a long-running process in ``node``. The lab stops it on teardown;
        stop it earlier with ``proc.stop()``. PYTHONPATH includes this checkout."""
        if not self._up:
            raise LabError("lab is not up")
        p = LabProcess(node, self.ns(node), argv, env=env)
        self._procs.append(p)
        return p

    def spawn_python(self, node: str, module: str, *args: str,
                     env: dict[str, str] | None = None) -> LabProcess:
        """``spawn(node, [python, -m, module, *args])`` with this interpreter."""
        return self.spawn(node, [self.python, "-m", module, *args], env=env)

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> Lab:
        ok, why = have_prerequisites()
        if not ok:
            raise LabError(why)
        if self._up:
            return self
        _register(self)
        self._up = True
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Stop every process started through the lab, then delete every namespace. Idempotent,
        never raises for cleanup failures."""
        with self._lock:
            if os.getpid() != self._owner_pid:
                return  # a forked child must not tear down its parent's lab
            procs, self._procs = self._procs, []
            self._transfer_servers.clear()
            for p in procs:   # SIGTERM all first, then collect
                p.terminate()
            for p in procs:
                try:
                    p.stop(timeout=3.0)
                except Exception:  # noqa: BLE001
                    pass
            created, self._created = self._created, []
            for ns in reversed(created):
                _kill_netns_pids(ns)
            for ns in reversed(created):
                try:
                    subprocess.run(["ip", "netns", "del", ns], capture_output=True,
                                   timeout=CMD_TIMEOUT)
                except (subprocess.SubprocessError, OSError):
                    pass
            self._up = False
            _unregister(self)

    @property
    def is_up(self) -> bool:
        return self._up

    # -- PMTU state ------------------------------------------------------------------------
    def flush_pmtu(self) -> None:
        """Forget every learned PMTU on every server (``ip [-6] route flush cache``).

        IPv4 only marks its PMTU exceptions stale; the first lookup that finds a stale one
        resets it and releases the routes cached on it, and a SYN-ACK already holding such a
        route is then discarded (``dst_discard_out``) and resent only by its 1 s timer. With
        concurrent connects that happened to ~0.5 % of the next round's IPv4 handshakes, so
        one lookup per server here resets the exception while nothing is in flight."""
        for s in self.servers:
            self.ip(s.name, "route", "flush", "cache")
            self.ip(s.name, "-6", "route", "flush", "cache")
            # (best effort: a server whose link is down has no route to look up)
            self.ip(s.name, "-4", "route", "get", self.client_addr(4), "from", self.vip(4), check=False)

    def learned_pmtu(self, server: str | int, client_addr: str | None = None,
                     family: object | None = None) -> int | None:
        """PMTU ``server`` has learned towards ``client_addr`` (default: the client of
        ``family``, default IPv4), from ``ip route get CLIENT from VIP``; None if no exception."""
        if client_addr is None:
            client_addr = self.client_addr(family if family is not None else 4)
        fam = ipaddress.ip_address(client_addr).version
        out = self.ip(self.server(server).name, f"-{fam}", "route", "get", client_addr,
                      "from", self.vip(fam)).stdout
        return parse_route_get_mtu(out)

    # -- transfers ----------------------------------------------------------------------------
    def start_transfer_servers(self, size: int | None = None,
                               timeout: float = 10.0) -> dict[str, LabProcess]:
        """Start ``python -m pmtud_relay.lab.transfer server`` in every server (listening on both
        VIPs) and wait until each reports it is listening. Idempotent."""
        size = self.size if size is None else size
        started = []
        for s in self.servers:
            p = self._transfer_servers.get(s.name)
            if p is not None and p.poll() is None:
                continue
            p = self.spawn_python(s.name, "pmtud_relay.lab.transfer", "server", "--name", s.name,
                                  "--vip4", VIP4, "--vip6", VIP6, "--port", str(self.port),
                                  "--size", str(size))
            self._transfer_servers[s.name] = p
            started.append(p)
        for p in started:
            p.wait_for(r"^listening", stream="stdout", timeout=timeout)
        return dict(self._transfer_servers)

    def stop_transfer_servers(self, timeout: float = 5.0) -> None:
        procs = list(self._transfer_servers.values())
        self._transfer_servers.clear()
        for p in procs:
            p.stop(timeout)

    def run_transfers(self, family: object, flows: int = 12, size: int | None = None,
                      timeout: float = 3.0) -> list[FlowResult]:
        """Open ``flows`` concurrent TCP flows from the client to the VIP of ``family`` and
        download ``size`` bytes on each (per-flow ``timeout`` seconds). Starts the transfer
        servers if needed. Returns one FlowResult per flow."""
        fam = family_of(family)
        size = self.size if size is None else size
        self.start_transfer_servers()
        argv = [self.python, "-m", "pmtud_relay.lab.transfer", "client",
                "--family", str(fam), "--vip", self.vip(fam), "--port", str(self.port),
                "--flows", str(flows), "--size", str(size), "--timeout", str(timeout)]
        cp = self.run("client", argv, timeout=timeout + 15.0, check=False,
                      env={"PYTHONPATH": _PKG_ROOT, "PYTHONUNBUFFERED": "1"})
        if cp.returncode != 0:
            raise LabError(f"transfer client failed rc={cp.returncode}\n"
                           f"stdout:\n{cp.stdout}\nstderr:\n{cp.stderr}")
        return parse_client_output(cp.stdout)

    def run_transfers_spread(self, family: object, flows: int = 12, size: int | None = None,
                             timeout: float = 3.0, *, min_servers: int = 2,
                             require_first: bool = True, attempts: int = 3) -> list[FlowResult]:
        """``run_transfers`` until the flows landed on at least ``min_servers`` distinct servers
        (and on s1 if ``require_first``), doubling the flow count on each retry: the L4 hash is
        random per ephemeral port, so a lopsided draw is retried instead of failing a test.
        Returns the last attempt's flows (the caller asserts)."""
        first = self.servers[0].name
        result: list[FlowResult] = []
        for _ in range(max(1, attempts)):
            result = self.run_transfers(family, flows=flows, size=size, timeout=timeout)
            used = {f.server for f in result if f.server}
            if len(used) >= min(min_servers, self.n_servers) and (not require_first or first in used):
                break
            flows *= 2
        return result

    # -- raw frames (see pmtud_relay.lab.packet) ------------------------------------------------
    def sniff(self, node: str, iface: str = "eth0", timeout: float = 10.0) -> LabProcess:
        """Start an AF_PACKET sniffer recording ICMP(v6) PTB frames on ``iface`` in ``node``.
        Stop it with ``lab.sniff_result(proc)`` to get the list of frames (dicts)."""
        p = self.spawn_python(node, "pmtud_relay.lab.packet", "sniff", "-i", iface)
        p.wait_for(r"^listening", stream="stderr", timeout=timeout)
        return p

    @staticmethod
    def sniff_result(proc: LabProcess, timeout: float = 5.0) -> list[dict]:
        rc = proc.stop(timeout)
        if rc != 0:
            raise LabError(f"sniffer in {proc.node} exited {rc}\n{proc.stderr}")
        out = proc.stdout.strip()
        return json.loads(out) if out else []

    def inject(self, frame: bytes, node: str = "injector", iface: str = "eth0",
               count: int = 1) -> None:
        """Send a complete Ethernet frame ``count`` times from ``iface`` in ``node``."""
        self.run(node, [self.python, "-m", "pmtud_relay.lab.packet", "inject", "-i", iface,
                        "--count", str(count), "--hex", frame.hex()],
                 env={"PYTHONPATH": _PKG_ROOT})

    def __repr__(self) -> str:
        return f"<Lab {self.tag} servers={self.n_servers} up={self._up}>"


def parse_route_get_mtu(out: str) -> int | None:
    """Learned PMTU from ``ip route get`` output: the ``mtu N`` after ``cache`` (IPv4) or on an
    ``expires`` (exception) route (IPv6); None when the route carries no learned MTU."""
    m = re.search(r"\bcache\b.*?\bmtu (\d+)", out, re.S)
    if m:
        return int(m.group(1))
    m = re.search(r"\bexpires\b.*?\bmtu (\d+)", out, re.S)
    if m:
        return int(m.group(1))
    return None


__all__ = [
    "Lab", "LabProcess", "LabError", "Server", "FlowResult", "have_prerequisites", "list_netns",
    "cleanup_stale", "family_of", "parse_route_get_mtu", "VIP4", "VIP6", "CLIENT4", "CLIENT6",
    "ROUTER4", "ROUTER6",
]

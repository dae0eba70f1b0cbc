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
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .transfer import FlowResult, parse_client_output

# --- addressing (documentation prefixes only) ---------------------------------------------
VIP4 = "192.0.2.10"
VIP6 = "2001:db8:ffff::10"
CLIENT4 = "203.0.113.2"
CLIENT6 = "2001:db8:c::2"
ROUTER_CLIENT4 = "203.0.113.1"
ROUTER_CLIENT6 = "2001:db8:c::1"
ROUTER4 = "198.51.100.1"
ROUTER6 = "2001:db8:5::1"
CLIENT_MTU = 1500          # client end of the client<->router veth
ROUTER_CLIENT_MTU = 1400   # router end: the bottleneck that makes the router send PTBs
SERVER_MTU = 1500
ICMP_TABLE = 100
DEFAULT_PORT = 8080
DEFAULT_SIZE = 262144
MAX_SERVERS = 40

CMD_TIMEOUT = 10.0         # every ip/sysctl invocation
_PKG_ROOT = str(Path(__file__).resolve().parents[2])   # directory holding pmtud_relay/


def server_addr4(i: int) -> str:
    """Unicast IPv4 address of server ``i`` (1-based)."""
    return f"198.51.100.{10 + i}"


def server_addr6(i: int) -> str:
    return f"2001:db8:5::{10 + i}"


def server_mac(i: int) -> str:
    return f"02:00:00:00:05:{0x10 + i:02x}"


def family_of(family: object) -> int:
    """Normalise 4/6, "4"/"6", "ipv4"/"ipv6", "inet"/"inet6", AF_INET/AF_INET6 to 4 or 6."""
    if family in (4, "4", "ipv4", "IPv4", "v4", "inet", socket.AF_INET):
        return 4
    if family in (6, "6", "ipv6", "IPv6", "v6", "inet6", socket.AF_INET6):
        return 6
    raise ValueError(f"unknown address family {family!r}")


class LabError(RuntimeError):
    pass


def have_prerequisites() -> tuple[bool, str]:
    """(ok, reason): the lab needs root (CAP_NET_ADMIN/CAP_SYS_ADMIN) and iproute2's ``ip``."""
    if os.geteuid() != 0:
        return False, "network-namespace lab needs root"
    if shutil.which("ip") is None:
        return False, "network-namespace lab needs iproute2 (`ip` not in PATH)"
    return True, ""


def list_netns(timeout: float = CMD_TIMEOUT) -> list[str]:
    """Names from ``ip netns list`` (the first word of each line)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         timeout=timeout, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def cleanup_stale(prefix: str = "pmr-") -> list[str]:
    """Delete leftover lab namespaces ``<prefix><pid>-<hex>-*`` whose creating pid is gone.

    Never called implicitly. Namespaces of live processes (parallel runs) are left alone.
    """
    removed = []
    pat = re.compile(re.escape(prefix) + r"(\d+)-[0-9a-f]+-")
    for name in list_netns():
        m = pat.match(name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        _kill_netns_pids(name)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=CMD_TIMEOUT)
        removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_pids(ns: str) -> None:
    """SIGKILL whatever still runs inside one of *our* namespaces (all started by the lab)."""
    try:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                             timeout=CMD_TIMEOUT).stdout
    except (subprocess.SubprocessError, OSError):
        return
    for tok in out.split():
        if tok.isdigit() and int(tok) != os.getpid():
            try:
                os.kill(int(tok), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# --- long-running processes --------------------------------------------------------------------
class LabProcess:
    """A process running in a lab namespace, with its stdout/stderr captured line by line."""

    def __init__(self, node: str, ns: str, argv: Sequence[str], env: dict[str, str] | None = None):
        self.node = node
        self.ns = ns
        self.argv = list(argv)
        self._lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._cond = threading.Condition()
        self._eof = {"stdout": False, "stderr": False}
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = _PKG_ROOT + (os.pathsep + full_env["PYTHONPATH"]
                                              if full_env.get("PYTHONPATH") else "")
        full_env["PYTHONUNBUFFERED"] = "1"
        if env:
            full_env.update(env)
        # `ip netns exec` execs the command (no fork), so popen.pid is the process itself.
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", ns, *self.argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=full_env, start_new_session=True,
        )
        self.returncode: int | None = None
        self._terminated = False
        self._readers = [
            threading.Thread(target=self._pump, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.popen.stdout), ("stderr", self.popen.stderr))
        ]
        for t in self._readers:
            t.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _pump(self, name: str, stream) -> None:
        try:
            for raw in iter(stream.readline, b""):
                with self._cond:
                    self._lines[name].append(raw.decode("utf-8", "replace"))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._eof[name] = True
                self._cond.notify_all()

    def lines(self, stream: str = "stdout") -> list[str]:
        with self._cond:
            return [l.rstrip("\n") for l in self._lines[stream]]

    def text(self, stream: str = "stdout") -> str:
        with self._cond:
            return "".join(self._lines[stream])

    @property
    def stdout(self) -> str:
        return self.text("stdout")

    @property
    def stderr(self) -> str:
        return self.text("stderr")

    def json_lines(self, stream: str = "stdout") -> list[dict]:
        """Every line of ``stream`` that parses as a JSON object."""
        out = []
        for line in self.lines(stream):
            line = line.strip()
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def wait_for(self, pattern: str | re.Pattern, stream: str = "stderr",
                 timeout: float = 10.0) -> str:
        """Wait for a line matching ``pattern`` (regex search); return it.

        Raises ``TimeoutError`` (or ``LabError`` if the process exits first) carrying the
        captured stdout/stderr.
        """
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                buf = self._lines[stream]
                for line in buf[seen:]:
                    if rx.search(line):
                        return line.rstrip("\n")
                seen = len(buf)
                if self._eof[stream] and self.popen.poll() is not None:
                    raise LabError(f"{self.node}: {self.argv!r} exited with "
                                   f"{self.popen.returncode} before /{rx.pattern}/ on {stream}\n"
                                   + self._dump())
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.node}: no /{rx.pattern}/ on {stream} within "
                                       f"{timeout:.1f}s from {self.argv!r}\n" + self._dump())
                self._cond.wait(min(left, 0.2))

    def _dump(self) -> str:
        return f"--- stdout ---\n{self.text('stdout')}--- stderr ---\n{self.text('stderr')}"

    def poll(self) -> int | None:
        return self.popen.poll()

    def send_signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` once (later calls and ``stop()`` do not repeat it: a second SIGTERM
        would hit a daemon that already restored the default disposition while shutting down)."""
        if not self._terminated:
            self._terminated = True
            self.send_signal(sig)

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> int:
        """SIGTERM (once, by pid), wait ``timeout``, then SIGKILL. Returns the exit code
        (negative signal number if it was killed)."""
        if self.popen.poll() is None:
            self.terminate(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
                try:
                    self.popen.wait(5.0)
                except subprocess.TimeoutExpired:
                    pass
        for t in self._readers:
            t.join(2.0)
        self.returncode = self.popen.returncode
        return self.returncode  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"<LabProcess {self.node} pid={self.pid} rc={self.popen.returncode} {self.argv!r}>"


@dataclass(frozen=True)
class Server:
    index: int        # 1-based
    name: str         # "s1"
    ns: str           # namespace name
    iface: str        # "eth0" (inside ns)
    bridge_port: str  # "p1" (inside router ns)
    mac: str
    ipv4: str
    ipv6: str

    def addr(self, family: object) -> str:
        return self.ipv4 if family_of(family) == 4 else self.ipv6


# --- teardown safety net -----------------------------------------------------------------
_LIVE: set["Lab"] = set()
_LIVE_LOCK = threading.Lock()
_PREV_SIGTERM: object = None
_ATEXIT_DONE = False


def _atexit_cleanup() -> None:
    for lab in list(_LIVE):
        try:
            lab.down()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _sigterm_to_exit(signum, frame):  # pragma: no cover - exercised by hand
    raise SystemExit(128 + signum)


def _register(lab: "Lab") -> None:
    global _PREV_SIGTERM, _ATEXIT_DONE
    with _LIVE_LOCK:
        if not _ATEXIT_DONE:
            atexit.register(_atexit_cleanup)
            _ATEXIT_DONE = True
        if not _LIVE and threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                    _PREV_SIGTERM = signal.signal(signal.SIGTERM, _sigterm_to_exit)
            except ValueError:
                pass
        _LIVE.add(lab)


def _unregister(lab: "Lab") -> None:
    global _PREV_SIGTERM
    with _LIVE_LOCK:
        _LIVE.discard(lab)
        if not _LIVE and _PREV_SIGTERM is not None \
                and threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) is _sigterm_to_exit:
                    signal.signal(signal.SIGTERM, _PREV_SIGTERM)  # type: ignore[arg-type]
            except ValueError:
                pass
            _PREV_SIGTERM = None


# --- the lab ---------------------------------------------------------------------------------
class Lab:
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
        """Set sysctls inside ``node`` (``sysctl -w``; without procps, a python one-liner
        writing /proc/sys with the same fixed arguments)."""
        args = [f"{k}={v}" for k, v in settings.items()]
        if shutil.which("sysctl"):
            self.run(node, ["sysctl", "-q", "-w", *args])
        else:
            self.run(node, [self.python, "-c", _SYSCTL_PY, *args])

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
    def __enter__(self) -> "Lab":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> "Lab":
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


_SYSCTL_PY = (
    "import sys\n"
    "for a in sys.argv[1:]:\n"
    "    k, v = a.split('=', 1)\n"
    "    open('/proc/sys/' + k.replace('.', '/'), 'w').write(v)\n"
)


def _run(argv: Sequence[str], *, timeout: float = CMD_TIMEOUT, check: bool = True,
         input: str | None = None, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    try:
        cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                            input=input, env=env, stdin=None if input is not None
                            else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from e
    if check and cp.returncode != 0:
        raise LabError(f"command failed rc={cp.returncode}: {' '.join(argv)}\n"
                       f"{cp.stderr.strip()}")
    return cp


__all__: Iterable[str] = [
    "Lab", "LabProcess", "LabError", "Server", "FlowResult", "have_prerequisites", "list_netns",
    "cleanup_stale", "family_of", "parse_route_get_mtu", "VIP4", "VIP6", "CLIENT4", "CLIENT6",
    "ROUTER4", "ROUTER6",
]

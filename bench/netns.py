"""Network namespaces for the benchmarks: generator → bridge (observer) → relay.

::

    gen ns                 obs ns (observer)                     rly ns (relay under test)
    eth0  <--veth-->  g0 ─┐
                          br0
                      r0 ─┘  <--veth-->  eth0 (the relay's interface)

The generator sends PTB frames L2-unicast to the relay's MAC (a static FDB entry, so the
bridge forwards them to r0 only); the relay's broadcast copies come back on r0 and are
flooded to the generator. The observer taps r0, the relay's veth peer: with SO_TIMESTAMPNS
the same socket sees each PTB leave towards the relay and its copy come back, both stamped
by the kernel with CLOCK_REALTIME, so the difference is the relay's wire-to-wire latency.
Interface counters on r0 count offered (tx) and relayed (rx) frames at no userspace cost.

Names are unique (``pmr-bench-<pid>-<hex>-gen|obs|rly``); only documentation addresses are
used (none are even configured: the relay gets its VIPs from --vip); everything is torn down
by :meth:`Topology.down`, called from ``finally`` and from atexit and on SIGTERM.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import secrets
import signal
import subprocess
import threading
from contextlib import contextmanager

PREFIX = "pmr-bench-"
CLONE_NEWNET = 0x40000000
CMD_TIMEOUT = 15.0
GEN_MAC = "00:00:5e:00:53:a1"
RELAY_MAC = "00:00:5e:00:53:a2"

_libc = ctypes.CDLL(None, use_errno=True)
_live: set[Topology] = set()
_lock = threading.Lock()


def sh(*args: str, check: bool = True, timeout: float = CMD_TIMEOUT) -> str:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {res.stderr.strip() or res.returncode}")
    return res.stdout


def setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@contextmanager
def in_netns(name: str):
    """Run the body (this thread) inside network namespace ``name``: sockets created
    there stay in it after the thread switches back."""
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        setns(f"/var/run/netns/{name}")
        yield
    finally:
        try:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the home namespace failed")
        finally:
            os.close(home)


def _teardown_all() -> None:
    for topo in list(_live):
        topo.down()


atexit.register(_teardown_all)


def _on_sigterm(signum, frame):  # noqa: ARG001
    _teardown_all()
    raise SystemExit(143)


class Topology:
    def __init__(self):
        tag = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.gen, self.obs, self.rly = f"{tag}-gen", f"{tag}-obs", f"{tag}-rly"
        self.relay_mac = bytes.fromhex(RELAY_MAC.replace(":", ""))
        self.gen_mac = bytes.fromhex(GEN_MAC.replace(":", ""))
        self._up = False

    def up(self) -> Topology:
        with _lock:
            _live.add(self)
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            for ns in (self.gen, self.obs, self.rly):
                sh("ip", "netns", "add", ns)
            self._up = True
            o = ("ip", "-n", self.obs)
            sh(*o, "link", "add", "br0", "type", "bridge")
            sh("ip", "link", "add", "g0", "netns", self.obs, "type", "veth", "peer", "name", "eth0", "netns", self.gen)
            sh("ip", "link", "add", "r0", "netns", self.obs, "type", "veth", "peer", "name", "eth0", "netns", self.rly)
            # No IPv6 link-local address anywhere: no DAD, ND or MLD frames to disturb the counts.
            for ns, dev in ((self.obs, "br0"), (self.obs, "g0"), (self.obs, "r0"), (self.gen, "eth0"),
                            (self.rly, "eth0")):
                sh("ip", "-n", ns, "link", "set", "dev", dev, "addrgenmode", "none")
            sh("ip", "-n", self.gen, "link", "set", "eth0", "address", GEN_MAC)
            sh("ip", "-n", self.rly, "link", "set", "eth0", "address", RELAY_MAC)
            sh(*o, "link", "set", "g0", "master", "br0")
            sh(*o, "link", "set", "r0", "master", "br0")
            for ns, dev in ((self.obs, "br0"), (self.obs, "g0"), (self.obs, "r0"), (self.gen, "eth0"),
                            (self.rly, "eth0"), (self.rly, "lo"), (self.gen, "lo"), (self.obs, "lo")):
                sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("bridge", "-n", self.obs, "fdb", "replace", RELAY_MAC, "dev", "r0", "master", "static")
            sh("bridge", "-n", self.obs, "fdb", "replace", GEN_MAC, "dev", "g0", "master", "static")
            # Keep the copies' delivery lean, as on a real segment where receivers are other
            # machines: veth delivers synchronously, so whatever the kernel does with a copy is
            # charged to the relay that sent it. The generator does not need the copies, the
            # bridge's own stack does not either, and bridged frames skip iptables.
            sh("bridge", "-n", self.obs, "link", "set", "dev", "g0", "flood", "off", "mcast_flood", "off",
               "bcast_flood", "off")
            sh(*o, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
            subprocess.run(["ip", "netns", "exec", self.obs, "nft", "-f", "-"], check=True, text=True,
                           timeout=CMD_TIMEOUT, capture_output=True,
                           input='table bridge pmr_bench {\n chain local_in {\n  type filter hook input '
                           'priority 0; policy drop;\n }\n}\n')
            for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"):
                sh("ip", "netns", "exec", self.obs, "sh", "-c",
                   f"[ -e /proc/sys/net/bridge/{key} ] && echo 0 > /proc/sys/net/bridge/{key} || true")
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        for ns in (self.gen, self.obs, self.rly):
            try:
                pids = sh("ip", "netns", "pids", ns, check=False).split()
            except (subprocess.SubprocessError, OSError):
                pids = []
            for pid in pids:
                if pid.isdigit() and int(pid) != os.getpid():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            try:
                sh("ip", "netns", "del", ns, check=False)
            except (subprocess.SubprocessError, OSError):
                pass
        self._up = False
        with _lock:
            _live.discard(self)

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()

    # -- counters ------------------------------------------------------------------------
    def link_stats(self, ns: str, dev: str) -> dict:
        out = json.loads(sh("ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev))
        s = out[0]["stats64"]
        return {"rx": s["rx"]["packets"], "tx": s["tx"]["packets"], "rx_dropped": s["rx"]["dropped"],
                "tx_dropped": s["tx"]["dropped"]}

    def relay_port_stats(self) -> dict:
        """r0 on the observer side: tx = frames offered to the relay, rx = frames it sent."""
        return self.link_stats(self.obs, "r0")

    def spawn(self, ns: str, argv: list[str], cpu: int | None = None, **kw) -> subprocess.Popen:
        """Start ``argv`` in ``ns`` (``ip netns exec`` execs, so the pid is the program's)."""
        prefix = ["ip", "netns", "exec", ns]
        if cpu is not None:
            prefix += ["taskset", "-c", str(cpu)]
        return subprocess.Popen(prefix + argv, stdin=subprocess.DEVNULL, **kw)

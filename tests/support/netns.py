"""Network namespaces for the end-to-end tests, and the one way to run code inside one.

- :class:`NetNS`: a namespace with a veth pair, ``v0`` (the wire: inject and sniff here) and ``v1``
  (the relay's interface, 198.51.100.2/24 and 2001:db8:5::2/64, MAC 02:00:00:00:05:02), VIPs on
  ``lo``; deleted on exit, with every process it spawned killed. :class:`FaultNS` is the same
  under another name prefix, with ways to break the link.
- :func:`in_ns`: run a function in a thread that entered a namespace (sockets it makes stay there).
- :func:`program`: the argv of a module of ``tests/support/ns_programs`` run with this interpreter
  (``python -m tests.support.ns_programs.NAME``), for ``NetNS.run``/``spawn`` and the labs'
  ``run``/``spawn``; :data:`PROGRAM_ENV` makes this checkout importable there. Programs are plain
  modules (no code in strings), each bounded in time by :func:`tests.support.ns_programs.bounded`.

Names are unique per test run (pid and a random token), so parallel runs never collide.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = str(Path(__file__).resolve().parents[2])
CMD_TIMEOUT = 20.0
READY_TIMEOUT = 15.0
VIP4 = "192.0.2.10"
VIP6 = "2001:db8:ffff::10"
WIRE_MAC = "02:00:00:00:05:01"  # v0
RELAY_MAC = "02:00:00:00:05:02"  # v1

#: The environment of a program run in a namespace: this checkout importable, output unbuffered.
PROGRAM_ENV = {"PYTHONPATH": REPO, "PYTHONUNBUFFERED": "1"}


def program(name: str, *args: object) -> list[str]:
    """``python -m tests.support.ns_programs.NAME ARGS`` with this interpreter."""
    return [sys.executable, "-m", f"tests.support.ns_programs.{name}", *(str(a) for a in args)]


def run_json(netns: str, name: str, *args: object, payload: object = None, timeout: float = 20.0):
    """Run ``ns_programs.NAME ARGS`` in ``netns`` (``ip netns exec``) with ``payload`` as JSON on
    stdin; the JSON it prints comes back. Fails the test on a non-zero exit; killed after
    ``timeout`` seconds."""
    done = subprocess.run(["ip", "netns", "exec", netns, *program(name, *args)], input=json.dumps(payload),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env())
    assert done.returncode == 0, f"{name} {' '.join(map(str, args))} exited {done.returncode}:\n{done.stderr}"
    return json.loads(done.stdout)


# --- what the machine must have ----------------------------------------------------------------
def need_root_and(*binaries: str) -> None:
    """Skip unless root and every binary is installed (names the missing one)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, nft, iptables)")
    for name in ("ip", *binaries):
        if shutil.which(name) is None and not any(os.access(f"{d}/{name}", os.X_OK) for d in ("/usr/sbin", "/sbin")):
            pytest.skip(f"needs {name}")


def need_backend(backend: str) -> None:
    """Skip only for what the machine lacks (root, a binary); a broken backend fails the test.

    python-iptables is the optional extra ``iptables`` and part of the ``test`` extra: if it cannot
    be imported (not installed, libiptc/libxtables missing, ...) the test set-up or the iptables
    backend is broken, and the test must say so."""
    from pmtud_relay.rules import iptables as ipt

    if backend == "nft":
        need_root_and("nft")
    else:
        need_root_and("iptables-legacy-save", "ip6tables-legacy-save")
        try:
            importlib.import_module("iptc")  # python-iptables
        except Exception as exc:  # noqa: BLE001 - ImportError, or OSError from a missing libxtables
            broken = f"{type(exc).__name__}: {exc}"
        else:
            try:
                ipt.IptablesBackend()._lib()
            except ipt.IptcIncompatible as exc:  # the host's libxtables is newer than any python-iptables
                pytest.skip(str(exc))
            return
        pytest.fail(f"python-iptables (in the test extra) cannot be loaded by {sys.executable}: {broken}",
                    pytrace=False)


# --- entering a namespace ------------------------------------------------------------------------
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def in_ns(ns: str, fn):
    """Run ``fn`` in a thread that entered network namespace ``ns``; sockets it makes stay there."""
    out: dict = {}

    def body() -> None:
        try:
            fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            out["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def terminate(proc: subprocess.Popen, timeout: float) -> int | None:
    """SIGTERM (if still running), then wait up to ``timeout`` seconds; a process that does not
    stop is killed. Its exit status, or None when it had to be killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return None


# --- a namespace with a veth pair ------------------------------------------------------------------
def env() -> dict[str, str]:
    """The environment of commands run in a NetNS: this checkout importable, sbin on PATH."""
    out = dict(os.environ)
    out["PYTHONPATH"] = REPO + (os.pathsep + out["PYTHONPATH"] if out.get("PYTHONPATH") else "")
    out["PYTHONUNBUFFERED"] = "1"
    out["PATH"] = out.get("PATH", "") + ":/usr/sbin:/sbin"
    return out


class NetNS:
    """A namespace with a veth pair: ``v0`` (the wire: inject and sniff here) and ``v1`` (the
    relay's interface, 198.51.100.2/24 and 2001:db8:5::2/64); VIPs on ``lo``."""

    prefix = "pmr-nf-"

    def __init__(self) -> None:
        self.name = f"{self.prefix}{os.getpid()}-{secrets.token_hex(3)}"
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> NetNS:
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=CMD_TIMEOUT)
        try:
            for args in (
                ["link", "set", "lo", "up"],
                ["link", "add", "v0", "address", WIRE_MAC, "type", "veth", "peer", "name", "v1",
                 "address", RELAY_MAC],
                ["addr", "add", f"{VIP4}/32", "dev", "lo"],
                ["addr", "add", f"{VIP6}/128", "dev", "lo", "nodad"],
                ["addr", "add", "198.51.100.2/24", "dev", "v1"],
                ["addr", "add", "2001:db8:5::2/64", "dev", "v1", "nodad"],
                ["link", "set", "v0", "up"],
                ["link", "set", "v1", "up"],
            ):
                subprocess.run(["ip", "-n", self.name, *args], check=True, timeout=CMD_TIMEOUT,
                               capture_output=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        subprocess.run(["ip", "netns", "del", self.name], timeout=CMD_TIMEOUT, capture_output=True)

    def run(self, argv: list[str], *, input: str | None = None, check: bool = True,
            timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess:
        cp = subprocess.run(["ip", "netns", "exec", self.name, *argv], input=input, capture_output=True,
                            text=True, timeout=timeout, env=env(),
                            stdin=None if input is not None else subprocess.DEVNULL)
        if check and cp.returncode != 0:
            raise AssertionError(f"{argv} failed rc={cp.returncode}\nstdout:\n{cp.stdout}\nstderr:\n{cp.stderr}")
        return cp

    def relay(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``python -m pmtud_relay ARGS`` in the namespace, waited for."""
        return self.run([sys.executable, "-m", "pmtud_relay", *args], check=check)

    def program(self, name: str, *args: object, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run ``ns_programs.NAME ARGS`` in the namespace and wait for it (at most ``timeout``)."""
        return self.run(program(name, *args), timeout=timeout)

    def spawn(self, argv: list[str], node: str = "proc"):
        """Start ``argv`` in the namespace as a lab LabProcess (output captured line by line);
        killed when the namespace goes."""
        from pmtud_relay.lab import LabProcess

        p = LabProcess(node, self.name, argv, env={"PATH": env()["PATH"]})
        self.procs.append(p.popen)
        return p

    def spawn_relay(self, *args: str):
        """Start ``python -m pmtud_relay ARGS`` in the namespace."""
        return self.spawn([sys.executable, "-m", "pmtud_relay", *args], node="relay")


class FaultNS(NetNS):
    """A NetNS (``pmr-flt-``) whose link the test breaks and re-creates."""

    prefix = "pmr-flt-"

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, timeout=10, capture_output=True)

    def recreate_pair(self, relay_name: str = "v1", wire_name: str = "v0", relay_mac: str = RELAY_MAC) -> None:
        self.ip("link", "add", wire_name, "address", WIRE_MAC, "type", "veth", "peer", "name", relay_name,
                "address", relay_mac)
        self.ip("link", "set", wire_name, "up")
        self.ip("link", "set", relay_name, "up")


def wait_ready(proc) -> None:
    proc.wait_for(r"event=ready", stream="stderr", timeout=READY_TIMEOUT)

"""Network namespaces and the processes that run in them, for the lab.

Listing and reaping stale namespaces (:func:`cleanup_stale`), the lab's long-running
processes (:class:`LabProcess`) and the one way every ip/sysctl command runs (:func:`_run`:
time-bounded, a :class:`LabError` naming the command on failure).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

CMD_TIMEOUT = 10.0         # every ip/sysctl invocation
_PKG_ROOT = str(Path(__file__).resolve().parents[2])   # directory holding pmtud_relay/


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
            return [line.rstrip("\n") for line in self._lines[stream]]

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
        return self.returncode

    def __repr__(self) -> str:
        return f"<LabProcess {self.node} pid={self.pid} rc={self.popen.returncode} {self.argv!r}>"


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

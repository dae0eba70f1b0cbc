"""The daemon as systemd runs it: an unprivileged user holding only CAP_NET_RAW and
CAP_NET_ADMIN as ambient capabilities, no_new_privs set. It must open its sockets and relay.

Runs on ``lo`` of a network namespace the test creates (``pmr-caps-<pid>-<hex>``, always
deleted): ``ip netns exec`` enters it as root and execs ``setpriv``, which drops to uid 65534
with the two ambient capabilities and execs the interpreter, so the daemon is the Popen's pid.
A helper, root, in the same namespace injects a PTB frame with an AF_PACKET socket and watches
for the relayed copy coming back as an L2 broadcast.

uid 65534 must be able to run the interpreter and read the code. When this checkout or its
virtualenv is not readable by that uid (e.g. under /root, mode 0700), the test runs a copy
instead: the base interpreter (``sys._base_executable``) with ``pmtud_relay`` and the runtime
dependencies of the installed distribution copied to a temporary directory readable by
everyone (source code only; deleted afterwards).
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.netns import env, program, terminate

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch user and hand out capabilities with setpriv"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (ip) not installed"),
]

REPO = Path(__file__).resolve().parents[1]
UNPRIVILEGED = 65534  # nobody
CAPS = 0x3000  # CAP_NET_ADMIN (12) | CAP_NET_RAW (13)
NET_RAW = 0x2000  # what the daemon keeps after set-up with AF_PACKET capture
SETPRIV = [
    "setpriv", f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--clear-groups",
    "--bounding-set=-all,+net_raw,+net_admin",
    "--inh-caps=-all,+net_raw,+net_admin", "--ambient-caps=-all,+net_raw,+net_admin",
    "--no-new-privs",
]
IMPORT_CHECK = "import pmtud_relay.cli, pmtud_relay.daemon, pmtud_relay.capture"

def status_field(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    raise KeyError(name)


def _clean_env(pythonpath: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMTUD_RELAY_")}
    env["PYTHONPATH"] = pythonpath
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _as_nobody(python: str, pythonpath: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(SETPRIV + [python, "-c", IMPORT_CHECK], capture_output=True, text=True, timeout=30,
                          env=_clean_env(pythonpath), cwd=cwd)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def _copy_readable(src: Path, dst: Path) -> None:
    """Copy a file or a tree (no __pycache__), every directory 0755 and every file 0644/0755."""
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"), symlinks=False)
        for root, dirs, files in os.walk(dst):
            os.chmod(root, 0o755)
            for f in files:
                p = os.path.join(root, f)
                os.chmod(p, 0o755 if os.stat(p).st_mode & 0o100 else 0o644)
    else:
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o755 if os.stat(src).st_mode & 0o100 else 0o644)


def _runtime_modules() -> list[Path]:
    """The installed files of the runtime dependencies (project.dependencies of pmtud-relay):
    each distribution's top-level packages and modules (e.g. ``iptc`` and ``libxtwrapper*.so``)."""
    paths: list[Path] = []
    for req in importlib.metadata.requires("pmtud-relay") or []:
        if "extra ==" in req:
            continue
        name = re.match(r"[A-Za-z0-9._-]+", req).group(0)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # e.g. uvloop on another implementation: the daemon falls back to asyncio
        site = Path(dist.locate_file(""))
        tops = (dist.read_text("top_level.txt") or "").split()
        if not tops:
            tops = sorted({str(f).split("/")[0].split(".")[0] for f in dist.files or []
                           if not str(f).startswith("..") and ".dist-info" not in str(f)})
        for top in tops:
            for hit in [site / top, *map(Path, glob.glob(glob.escape(str(site / top)) + ".*"))]:
                if hit.exists() and hit not in paths:
                    paths.append(hit)
    return paths


@pytest.fixture
def nobody_python():
    """(interpreter, PYTHONPATH, cwd) with which uid 65534 can run ``python -m pmtud_relay``."""
    copy = Path(tempfile.mkdtemp(prefix="pmr-caps-code-"))
    try:
        os.chmod(copy, 0o755)  # only code goes in here; nobody has to read it
        direct = _as_nobody(sys.executable, str(REPO), str(copy))
        if direct.returncode == 0:
            yield sys.executable, str(REPO), str(copy)
            return
        base = getattr(sys, "_base_executable", None) or os.path.realpath(sys.executable)
        _copy_readable(REPO / "pmtud_relay", copy / "pmtud_relay")
        for path in _runtime_modules():
            _copy_readable(path, copy / path.name)
        copied = _as_nobody(base, str(copy), str(copy))
        if copied.returncode != 0:
            pytest.skip(f"uid {UNPRIVILEGED} cannot run {sys.executable} with {REPO} ({_last_line(direct)}), "
                        f"nor {base} with a readable copy of the code in {copy} ({_last_line(copied)})")
        yield base, str(copy), str(copy)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


@pytest.fixture
def caps_netns():
    name = f"pmr-caps-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.mark.timeout(90)
def test_unprivileged_user_with_two_ambient_capabilities_relays(nobody_python, caps_netns, tmp_path):
    from tests.support import frames as F

    python, pythonpath, cwd = nobody_python
    log_path = tmp_path / "stderr"
    log = open(log_path, "w+")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", caps_netns, *SETPRIV, python, "-m", "pmtud_relay", "run", "-i", "lo",
         "--vip", F.VIP4, "--log-level", "debug", "--config", "", "--metrics-address", ""],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=_clean_env(pythonpath), cwd=cwd,
    )
    try:
        deadline = time.monotonic() + 15
        while "event=ready" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "no event=ready:\n" + log_path.read_text()
            time.sleep(0.05)

        # The process is who systemd would make it, and once its sockets are open it keeps only
        # CAP_NET_RAW (no --capture nflog/--manage-rules: CAP_NET_ADMIN is dropped). Without
        # CAP_SETPCAP it cannot shrink its bounding set, which systemd already limited to CAPS.
        # (`ip netns exec` and setpriv exec, they do not fork: proc.pid is the daemon.)
        assert status_field(proc.pid, "Uid").split()[1] == str(UNPRIVILEGED)
        assert os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net"), \
            "the daemon is not in the test's namespace"
        deadline = time.monotonic() + 10
        while "event=privileges_dropped" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        for field in ("CapEff", "CapPrm", "CapAmb"):
            assert int(status_field(proc.pid, field), 16) == NET_RAW, field
        assert int(status_field(proc.pid, "CapBnd"), 16) == CAPS
        assert status_field(proc.pid, "NoNewPrivs") == "1"

        frame = F.ptb_v4(dst_mac="00:00:00:00:00:00", dport=50123)
        helper = subprocess.run(
            ["ip", "netns", "exec", caps_netns, *program("inject_watch", frame.hex(), 10)],
            capture_output=True, text=True, timeout=30, env=env(),
        )
        assert helper.returncode == 0, helper.stderr
        copy = json.loads(helper.stdout)["copy"]
        assert copy is not None, "no broadcast copy seen on lo:\n" + log_path.read_text()
        assert bytes.fromhex(copy)[12:] == frame[12:]
        assert "event=relayed" in log_path.read_text()

        # Delivery confirmation needs no privilege either: the daemon (uid 65534, CAP_NET_RAW
        # only) finds a socket root owns with sock_diag and reads its route's PMTU (rtnetlink).
        # No socket quotes the TCP flow above: orphan. A root UDP socket on VIP:443: applied.
        assert re.search(r"event=owner_verdict .*dport=50123 origin=captured owner=orphan", log_path.read_text()), \
            log_path.read_text()
        for argv in (["addr", "add", F.VIP4 + "/32", "dev", "lo"], ["route", "add", F.CLIENT4 + "/32", "dev", "lo"]):
            subprocess.run(["ip", "-n", caps_netns, *argv], check=True, capture_output=True, timeout=10)
        frame = F.ptb_v4(dst_mac="00:00:00:00:00:00", dport=50124, proto="udp")
        helper = subprocess.run(
            ["ip", "netns", "exec", caps_netns, *program("inject_watch", frame.hex(), 10, F.VIP4, F.SERVICE_PORT)],
            capture_output=True, text=True, timeout=30, env=env(),
        )
        assert helper.returncode == 0, helper.stderr
        deadline = time.monotonic() + 5
        while not re.search(r"event=owner_verdict .*dport=50124 origin=captured owner=\w+", log_path.read_text()):
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        assert re.search(r"event=owner_verdict .*dport=50124 origin=captured owner=applied", log_path.read_text()), \
            log_path.read_text()
    finally:
        rc = terminate(proc, 10)  # None: hung on SIGTERM, killed; fails below (unless the body already failed)
        log.close()
    assert rc == 0, f"exit {rc} (None: did not stop within 10 s of SIGTERM, killed)\n" + log_path.read_text()

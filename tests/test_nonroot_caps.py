"""The daemon as systemd runs it: an unprivileged user holding only CAP_NET_RAW and
CAP_NET_ADMIN as ambient capabilities, no_new_privs set. It must open its sockets and relay.

Runs on ``lo`` of the test's network namespace: the test injects PTB frames with an AF_PACKET
socket (as root) and watches the relayed copy come back as an L2 broadcast.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch user and hand out capabilities with setpriv"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed"),
]

UNPRIVILEGED = 65534  # nobody
CAPS = 0x3000  # CAP_NET_ADMIN (12) | CAP_NET_RAW (13)
NET_RAW = 0x2000  # what the daemon keeps after set-up with AF_PACKET capture
SETPRIV = [
    "setpriv", f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--clear-groups",
    "--bounding-set=-all,+net_raw,+net_admin",
    "--inh-caps=-all,+net_raw,+net_admin", "--ambient-caps=-all,+net_raw,+net_admin",
    "--no-new-privs",
]


def status_field(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    raise KeyError(name)


@pytest.fixture
def runnable_as_nobody():
    proc = subprocess.run(SETPRIV + [sys.executable, "-c", "import pmtud_relay.daemon"],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip(f"this interpreter or checkout is not readable by uid {UNPRIVILEGED}: "
                    f"{proc.stderr.strip().splitlines()[-1:] or proc.returncode}")


@pytest.mark.timeout(60)
def test_unprivileged_user_with_two_ambient_capabilities_relays(runnable_as_nobody, tmp_path):
    import frames as F

    env = dict(os.environ, PMTUD_RELAY_METRICS_ADDRESS="")  # no listener needed (and no port clash)
    log = open(tmp_path / "stderr", "w+")
    proc = subprocess.Popen(
        SETPRIV + [sys.executable, "-m", "pmtud_relay", "run", "-i", "lo", "--vip", F.VIP4,
                   "--log-level", "debug"],
        stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=tmp_path,
    )
    watch = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    try:
        deadline = time.monotonic() + 15
        while "event=ready" not in (tmp_path / "stderr").read_text():
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "no event=ready:\n" + (tmp_path / "stderr").read_text()
            time.sleep(0.05)

        # The process is who systemd would make it, and once its sockets are open it keeps only
        # CAP_NET_RAW (no --capture nflog/--manage-rules: CAP_NET_ADMIN is dropped). Without
        # CAP_SETPCAP it cannot shrink its bounding set, which systemd already limited to CAPS.
        assert status_field(proc.pid, "Uid").split()[1] == str(UNPRIVILEGED)
        deadline = time.monotonic() + 10
        while "event=privileges_dropped" not in (tmp_path / "stderr").read_text():
            assert time.monotonic() < deadline, (tmp_path / "stderr").read_text()
            time.sleep(0.05)
        for field in ("CapEff", "CapPrm", "CapAmb"):
            assert int(status_field(proc.pid, field), 16) == NET_RAW, field
        assert int(status_field(proc.pid, "CapBnd"), 16) == CAPS
        assert status_field(proc.pid, "NoNewPrivs") == "1"

        watch.bind(("lo", 0))
        inject = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        inject.bind(("lo", 0))
        frame = F.ptb_v4(dst_mac="00:00:00:00:00:00", dport=50123)
        inject.send(frame)
        inject.close()

        copy = None
        deadline = time.monotonic() + 10
        while copy is None and time.monotonic() < deadline:
            if select.select([watch], [], [], 0.2)[0]:
                data, addr = watch.recvfrom(65536)
                if data[:6] == b"\xff" * 6 and data[12:] == frame[12:] and addr[2] != socket.PACKET_OUTGOING:
                    copy = data
        assert copy is not None, "no broadcast copy seen on lo:\n" + (tmp_path / "stderr").read_text()
        assert "event=relayed" in (tmp_path / "stderr").read_text()
    finally:
        watch.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
        log.close()
    assert rc == 0, (tmp_path / "stderr").read_text()

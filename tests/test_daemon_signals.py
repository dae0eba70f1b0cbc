"""Stopping: SIGTERM (even repeated) ends the daemon cleanly with exit 0."""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a network namespace"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (ip) not installed"),
]


@pytest.fixture
def netns():
    name = f"pmr-sig-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10)


@pytest.mark.parametrize("signals", [1, 2, 5])
@pytest.mark.timeout(40)
def test_sigterm_stops_cleanly_even_when_repeated(netns, signals):
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "pmtud_relay", "run", "-i", "lo",
         "--vip", "192.0.2.10", "--metrics-address", "", "--config", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line or "event=ready" in line:
                break
        assert proc.poll() is None, "daemon died before it was ready"
        for _ in range(signals):
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.002)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

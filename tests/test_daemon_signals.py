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
    from pmtud_relay.lab import LabProcess

    # LabProcess reads stdout/stderr on threads: every wait below is bounded by its timeout,
    # whatever the daemon writes (or does not write).
    proc = LabProcess("relay", netns, [sys.executable, "-m", "pmtud_relay", "run", "-i", "lo",
                                       "--vip", "192.0.2.10", "--metrics-address", "", "--config", ""])
    try:
        # Raises (with the output) if the daemon exits first or is not ready within 15 s.
        ready = proc.wait_for(r"event=ready", stream="stderr", timeout=15)
        assert "interfaces=lo" in ready, ready
        assert proc.poll() is None, "daemon died right after it was ready:\n" + proc.stderr
        for _ in range(signals):
            proc.popen.send_signal(signal.SIGTERM)
            time.sleep(0.002)
        try:
            rc = proc.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 15 s after {signals} SIGTERM(s):\n{proc.stderr}")
        assert rc == 0, f"exit {rc}:\n{proc.stderr}"
    finally:
        proc.stop(timeout=5)  # no-op once it exited; else SIGTERM, then SIGKILL after 5 s

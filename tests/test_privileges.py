"""Without CAP_NET_RAW the daemon says so in one sentence, not a traceback."""

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop capabilities with setpriv"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed"),
]


@pytest.mark.parametrize("command", ["run", "dry-run"])
@pytest.mark.timeout(30)
def test_missing_cap_net_raw_is_one_clear_sentence(command):
    # Keep uid 0 (so the interpreter stays readable) but empty every capability set.
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all",
         sys.executable, "-m", "pmtud_relay", command, "-i", "lo", "--vip", "192.0.2.10"],
        capture_output=True, text=True, timeout=20,
    )
    assert proc.returncode == 77, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "CAP_NET_RAW" in lines[0]
    assert "Traceback" not in proc.stderr

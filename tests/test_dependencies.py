"""Dependency boundaries recorded in docs/decisions.md."""

from __future__ import annotations

import subprocess
import sys


def test_the_daemon_path_never_imports_scapy():
    code = (
        "import sys\n"
        "import pmtud_relay.cli, pmtud_relay.daemon, pmtud_relay.config, pmtud_relay.metrics, pmtud_relay.logs\n"
        "bad = sorted(m for m in sys.modules if m == 'scapy' or m.startswith('scapy.'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"scapy imported on the daemon's path: {out.stdout}"


def test_metrics_use_a_private_registry_only():
    code = (
        "import prometheus_client\n"
        "from pmtud_relay import metrics\n"
        "metrics.build_registry(metrics.Stats(['lo']))\n"
        "print(b'pmtud_relay' in prometheus_client.generate_latest(prometheus_client.REGISTRY))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stdout + out.stderr

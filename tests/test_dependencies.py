"""Dependency boundaries recorded in docs/decisions.md."""

from __future__ import annotations

import os
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


def test_dnspython_is_imported_only_when_a_name_is_resolved():
    code = (
        "import sys\n"
        "import pmtud_relay.cli, pmtud_relay.daemon, pmtud_relay.config, pmtud_relay.peers.service\n"
        "print(sorted(m for m in sys.modules if m == 'dns' or m.startswith('dns.')))\n"
        "from pmtud_relay.peers.dns import DnsClient\n"
        "DnsClient('/nonexistent/resolv.conf', '/nonexistent/hosts').resolve('peers.example')\n"
        "print('dns.resolver' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True"], out.stdout


def test_metrics_use_a_private_registry_only():
    code = (
        "import prometheus_client\n"
        "from pmtud_relay import metrics\n"
        "metrics.build_registry(metrics.Stats(['lo']))\n"
        "print(b'pmtud_relay' in prometheus_client.generate_latest(prometheus_client.REGISTRY))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


# -- python-iptables is the optional extra pmtud-relay[iptables] -------------------------------------
# The module is blocked the way a Python without it behaves: ``import iptc`` raises ImportError
# (a None entry in sys.modules), in a fresh interpreter; nothing of the backend is mocked.
WITHOUT_IPTC = "import sys\nsys.modules['iptc'] = None\n"
RUN_CLI = "from pmtud_relay.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _cli(*argv: str, block_iptc: bool = True) -> subprocess.CompletedProcess:
    code = (WITHOUT_IPTC if block_iptc else "import sys\n") + RUN_CLI
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def _says_how_to_install(text: str) -> bool:
    return "pip install 'pmtud-relay[iptables]'" in text and "apt install python3-iptables" in text


def test_run_with_managed_iptables_rules_needs_python_iptables():
    # refused before anything is opened (no capture, no rules): exit 2 like any bad configuration
    out = _cli("run", "--capture", "nflog", "--manage-rules", "--rules-backend", "iptables", "--interface", "lo")
    assert out.returncode == 2, out
    assert "--rules-backend: rules_backend:" in out.stderr and _says_how_to_install(out.stderr), out.stderr
    env_out = subprocess.run(
        [sys.executable, "-c", WITHOUT_IPTC + RUN_CLI, "dry-run", "--capture", "nflog", "--manage-rules",
         "--interface", "lo"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "PMTUD_RELAY_RULES_BACKEND": "iptables"})
    assert env_out.returncode == 2 and "PMTUD_RELAY_RULES_BACKEND" in env_out.stderr, env_out


def test_rules_command_with_iptables_backend_needs_python_iptables():
    for action in ("show", "install", "remove"):
        out = _cli("rules", action, "--backend", "iptables", "-i", "lo")
        assert out.returncode == 2 and _says_how_to_install(out.stderr), (action, out)
        assert out.stdout == "", out.stdout


def test_without_python_iptables_nft_and_rendering_still_work():
    out = _cli("rules", "show", "--backend", "nft", "-i", "lo")
    assert out.returncode == 0 and "table inet pmtud_relay" in out.stdout, out
    # the same command the test above refuses works when the module is importable
    out = _cli("rules", "show", "--backend", "iptables", "-i", "lo", block_iptc=False)
    assert out.returncode == 0 and "PMTUD_RELAY" in out.stdout, out


def test_iptables_backend_reports_the_missing_module_with_the_install_hint():
    code = WITHOUT_IPTC + (
        "from pmtud_relay.rules.iptables import IptablesBackend\n"
        "ok, why = IptablesBackend().available()\n"
        "print(ok)\nprint(why)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ok, why = out.stdout.split("\n", 1)
    assert ok == "False" and "not installed" in why and _says_how_to_install(why), out.stdout

"""`pmtud-relay lab` shows the black hole and its fix, and leaves nothing behind."""

import json
import subprocess
import sys

import pytest

from pmtud_relay.lab import list_netns

pytestmark = pytest.mark.netns


@pytest.mark.timeout(120)
@pytest.mark.parametrize("topology", ["l2", "l3"])
def test_lab_command_before_and_after(netns_ok, topology):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pmtud_relay", "lab", "--family", "both", "--flows", "12", "--json",
         "--topology", topology],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        out, err = proc.communicate(timeout=110)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["topology"] == topology
    assert [r["family"] for r in doc["results"]] == [4, 6]
    for r in doc["results"]:
        without, with_relay = r["without_relay"], r["with_relay"]
        # Without the relay only s1 (which receives the router's ICMP) learns the PMTU.
        assert {s for s, m in without["learned_pmtu"].items() if m} <= {"s1"}
        if set(without["servers"]) - {"s1"}:
            assert without["stalled"] > 0
        assert with_relay["stalled"] == 0 and with_relay["completed"] == with_relay["flows"]
        assert all(m == 1400 for s, m in with_relay["learned_pmtu"].items() if s in with_relay["servers"])
    # The lab names its namespaces pmr-<pid>-…; other labs may run at the same time.
    assert not [ns for ns in list_netns() if ns.startswith(f"pmr-{proc.pid}-")], "lab left namespaces behind"


@pytest.mark.timeout(60)
def test_lab_command_text_table(netns_ok):
    proc = subprocess.run(
        [sys.executable, "-m", "pmtud_relay", "lab", "--family", "ipv4", "--flows", "6", "--servers", "2"],
        capture_output=True, text=True, timeout=55,
    )
    assert proc.returncode == 0, proc.stderr
    assert "without relay" in proc.stdout and "with relay" in proc.stdout
    assert "IPv4" in proc.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize("topology,servers", [("l3", 16), ("l3", 1), ("l2", 17)])
def test_lab_command_refuses_a_server_count_its_topology_cannot_build(netns_ok, topology, servers):
    """The routed topology has room for 15 servers (/28s of 198.51.100.0/24): asking for more is
    a usage error (exit 2, one line), not a traceback after namespaces were made."""
    proc = subprocess.run(
        [sys.executable, "-m", "pmtud_relay", "lab", "--topology", topology, "--servers", str(servers)],
        capture_output=True, text=True, timeout=55,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("pmtud-relay lab: --servers: must be within 2..") and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1

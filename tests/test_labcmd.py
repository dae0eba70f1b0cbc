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
    # The router spreads the 12 flows over s1..s3 by an L4 hash of random ephemeral ports: all 12 on
    # s1 has probability 3**-12 (~2e-6), all 12 on any one server 3 * 3**-12 (~6e-6) per phase.
    # So flows reach servers other than s1 in both phases, and the assertions below are strict.
    for r in doc["results"]:
        without, with_relay = r["without_relay"], r["with_relay"]
        assert without["flows"] == with_relay["flows"] == 12
        assert set(without["servers"]) | set(with_relay["servers"]) <= {"s1", "s2", "s3"}
        # Without the relay only s1 (which receives the router's ICMP) learns the PMTU, so the flows
        # that landed on the other servers stall.
        assert {s for s, m in without["learned_pmtu"].items() if m} <= {"s1"}
        assert set(without["servers"]) - {"s1"}, f"IPv{r['family']}: no flow left s1 without the relay: {without}"
        assert without["stalled"] > 0 and without["completed"] + without["stalled"] == 12, without
        # With the relay every flow completes, on at least two servers: those other than s1 learned
        # the PMTU from the relayed copies (1400, the lab's bottleneck), not from the router.
        assert len(with_relay["servers"]) >= 2, f"IPv{r['family']}: flows reached one server only: {with_relay}"
        assert with_relay["stalled"] == 0 and with_relay["completed"] == with_relay["flows"], with_relay
        learned = with_relay["learned_pmtu"]
        assert all(learned[s] == 1400 for s in with_relay["servers"]), with_relay
        assert any(learned[s] == 1400 for s in set(with_relay["servers"]) - {"s1"}), with_relay
        # Delivery confirmation, per flow: s1 relayed each PTB; the one server the router sent the
        # flow to owns it and applied 1400; every other server found no owner. (L3: the receivers'
        # verdicts come with the peer acknowledgement, not checked here.)
        if topology == "l2":
            judged = [f for f in with_relay["per_flow"] if f["relayed_by"]]
            assert {f["server"] for f in judged} - {"s1"}, with_relay["per_flow"]
            for f in judged:
                assert f["relayed_by"] == ["s1"], f
                assert f["owner"] == {f["server"]: {"verdict": "applied", "pmtu": 1400}}, f
                assert f["orphan_on"] == sorted({"s1", "s2", "s3"} - {f["server"]}), f
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

"""One daemon, two interfaces: each copy leaves by the interface its PTB came in on,
unchanged but for the MAC addresses. Real kernel, inside namespaces this test creates."""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from tests.support.netns import run_json

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (ip) not installed"),
]

VIP4, VIP6 = "192.0.2.10", "2001:db8:ffff::10"


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_links():
    tag = uuid.uuid4().hex[:6]
    relay_ns, peer_ns = f"pmr-mi-r{tag}", f"pmr-mi-p{tag}"
    try:
        ip("netns", "add", relay_ns)
        ip("netns", "add", peer_ns)
        for side in ("a", "b"):
            ip("-n", relay_ns, "link", "add", f"{side}0", "type", "veth", "peer", "name", f"{side}1", "netns", peer_ns)
            ip("-n", relay_ns, "link", "set", f"{side}0", "up")
            ip("-n", peer_ns, "link", "set", f"{side}1", "up")
        ip("-n", relay_ns, "link", "set", "lo", "up")
        ip("-n", relay_ns, "addr", "add", f"{VIP4}/32", "dev", "lo")
        ip("-n", relay_ns, "addr", "add", f"{VIP6}/128", "dev", "lo")
        yield relay_ns, peer_ns
    finally:
        for ns in (relay_ns, peer_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@pytest.mark.timeout(60)
def test_copies_leave_by_the_interface_the_ptb_came_in_on(two_links):
    relay_ns, peer_ns = two_links
    macs = {}
    for dev in ("a0", "b0"):
        out = subprocess.run(["ip", "-n", relay_ns, "-j", "link", "show", dev], capture_output=True, text=True,
                             check=True)
        macs[dev] = json.loads(out.stdout)[0]["address"]
    from pmtud_relay.lab import LabProcess

    # LabProcess reads the daemon's stdout/stderr on threads: the wait for readiness is bounded by
    # its timeout (it raises, with the output, if the daemon exits first or stays silent).
    relay = LabProcess("relay", relay_ns, [sys.executable, "-m", "pmtud_relay", "run", "-i", "a0", "-i", "b0",
                                           "--config", "", "--metrics-address", ""])
    try:
        ready = relay.wait_for(r"event=ready", stream="stderr", timeout=15)
        assert "interfaces=a0,b0" in ready, ready
        # Sends a v4 and a v6 PTB out of a1 and b1, reports what came back on each (exits 0 or fails).
        result = run_json(peer_ns, "two_links_peer", VIP4, VIP6, payload=macs, timeout=30)
    finally:
        rc = relay.stop(timeout=10)  # SIGTERM; SIGKILL (and a negative rc) if it hangs
    assert rc == 0, f"exit {rc}:\n{relay.stderr}"
    all_sent = {bytes.fromhex(h)[12:]: name for name in ("a1", "b1") for h in result["sent"][name]}
    for name in ("a1", "b1"):
        # Other group-addressed frames (MLD, router solicitations) also show up: keep the copies.
        copies = [g for g in (bytes.fromhex(h) for h in result["got"][name]) if g[12:] in all_sent]
        assert len(copies) == 2, f"{name}: expected exactly the v4 and v6 copy, got {len(copies)}"
        relay_mac = bytes.fromhex(macs[name[0] + "0"].replace(":", ""))
        for copy in copies:
            assert all_sent[copy[12:]] == name, "a copy left by another interface than its PTB came in on"
            assert copy[6:12] == relay_mac
            expected_dst = b"\xff" * 6 if copy[12:14] == b"\x08\x00" else b"\x33\x33\x00\x00\x00\x01"
            assert copy[:6] == expected_dst


# -- an interface that does not exist yet ---------------------------------------------------------
LATE_METRICS = "127.0.0.1:9478"
LATE_MAC = "02:00:00:00:05:09"


def _http(ns_name: str, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    from tests.support.netns import in_ns

    def get():
        try:
            with urllib.request.urlopen(f"http://{LATE_METRICS}{path}", timeout=3) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return in_ns(ns_name, get)


def _gauge(ns_name: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    status, text = _http(ns_name, "/metrics")
    assert status == 200
    (value,) = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    return value


@pytest.mark.timeout(60)
@pytest.mark.parametrize("capture", ["afpacket", "nflog"])
def test_a_missing_interface_is_waited_for_and_bound_when_it_appears(tmp_path, capture):
    """Started with -i of an interface that does not exist: the daemon stays up, says once which
    interface it waits for (log, sd_notify STATUS, /readyz 503 with the reason, a gauge), then
    binds and relays as soon as the interface appears, without a restart."""
    import socket as _socket

    from pmtud_relay.lab import LabProcess
    from tests.support.faults import count, relays, stop, wait_count
    from tests.support.netns import FaultNS, need_backend, need_root_and
    from tests.support.relays import log_events

    need_root_and()
    extra = []
    if capture == "nflog":  # the rules match the name, so they are installed before the interface exists
        need_backend("nft")
        extra = ["--capture", "nflog", "--manage-rules", "--rules-backend", "nft"]
    notify_path = str(tmp_path / "notify")
    notify = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(5)
    with FaultNS() as ns:
        proc = LabProcess("relay", ns.name, [sys.executable, "-m", "pmtud_relay", "run", "-i", "v9", "--vip", VIP4,
                                             "--config", "", "--metrics-address", LATE_METRICS,
                                             "--log-level", "info", *extra],
                          env={"NOTIFY_SOCKET": notify_path})
        ns.procs.append(proc.popen)
        try:
            proc.wait_for(r"event=ready", stream="stderr", timeout=15)
            waiting = log_events(proc, "interfaces_waiting")
            assert len(waiting) == 1 and waiting[0]["interfaces"] == "v9", proc.stderr
            assert waiting[0]["reason"] == "no such interface"
            first = notify.recv(4096).decode()
            assert "READY=1" in first and "waiting for interface v9" in first, first
            status, body = _http(ns.name, "/readyz")
            assert status == 503 and "waiting for interface v9" in body, body
            assert _gauge(ns.name, "pmtud_relay_interfaces_waiting") == 1
            assert _gauge(ns.name, "pmtud_relay_ready") == 0
            time.sleep(0.5)
            assert proc.poll() is None, proc.stderr

            ns.recreate_pair(relay_name="v9", wire_name="w9", relay_mac=LATE_MAC)
            wait_count(proc, r"event=interface_bound interface=v9", 1)
            assert relays(ns, wire="w9", dst_mac=LATE_MAC), proc.stderr
            status, body = _http(ns.name, "/readyz")
            assert status == 200, body
            assert _gauge(ns.name, "pmtud_relay_interfaces_waiting") == 0
            assert _gauge(ns.name, "pmtud_relay_ready") == 1
            later = notify.recv(4096).decode()
            assert later == "STATUS=relaying on v9", later
            assert count(proc, r"event=interfaces_waiting") == 1  # once at start, not per event
        finally:
            notify.close()
            stop(proc)

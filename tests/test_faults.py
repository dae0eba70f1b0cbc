"""Faults, against the real daemon in a network namespace of its own (``pmr-flt-<pid>-<hex>``,
always deleted): the capture interface going down and up, deleted and re-created, renamed away
and back (or its name taken by a new interface), down at start; copies the kernel refuses to
send; and the capabilities left after set-up.

The configured interface *name* is what counts: the daemon lets go of the interface when it
goes down, is deleted or renamed away, and binds to whichever interface carries the name once
it is up (``pmtud_relay/netlink/linkwatch.py``, docs/operations.md). NFLOG capture follows interfaces too:
its socket and rules stay, the demux gets a port for the new ifindex (docs/nflog-and-rules.md).

Topology (tests/support/netns.py's FaultNS, a NetNS): ``v1`` is the relay's interface (MAC 02:00:00:00:05:02), ``v0``
its veth peer where the test injects PTBs and watches for the broadcast copies.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request

import pytest

from tests.support import frames as F
from tests.support.faults import count, relays, start, stop, wait_count
from tests.support.netns import RELAY_MAC, FaultNS, in_ns, need_backend, need_root_and, wait_ready
from tests.support.rules import installed_state

pytestmark = [pytest.mark.netns]

METRICS = "127.0.0.1:9477"
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


# --- link faults ---------------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_down_then_up_keeps_relaying(ns, loop):
    proc = start(ns, "--metrics-address", "", loop=loop)
    assert relays(ns)
    for i in (1, 2):
        ns.ip("link", "set", "v1", "down")
        wait_count(proc, r"event=interface_lost interface=v1 reason=down", i)
        assert not relays(ns, timeout=0.5)  # down: nothing goes through, nothing breaks
        ns.ip("link", "set", "v1", "up")
        wait_count(proc, r"event=interface_bound interface=v1", i)
        assert relays(ns), proc.stderr
    # a flap faster than the daemon reads its events still ends bound
    ns.ip("link", "set", "v1", "down")
    ns.ip("link", "set", "v1", "up")
    wait_count(proc, r"event=interface_bound interface=v1", 3)
    assert relays(ns), proc.stderr
    stop(proc)


@pytest.mark.timeout(60)
def test_deleted_and_recreated_rebinds_without_restart(ns):
    proc = start(ns, "--metrics-address", "")
    pid = proc.pid
    assert relays(ns)
    for i in (1, 2):
        ns.ip("link", "del", "v1")  # takes v0 with it
        wait_count(proc, r"event=interface_lost interface=v1", i)
        time.sleep(0.2)
        assert proc.poll() is None
        ns.recreate_pair()
        wait_count(proc, r"event=interface_bound interface=v1", i)
        assert relays(ns), proc.stderr
    assert proc.pid == pid and proc.poll() is None  # the same process: no restart
    # ... with only CAP_NET_RAW left (see test_capabilities_after_setup)
    assert int(status(pid)["CapEff"], 16) == 1 << CAP_NET_RAW
    stop(proc)


@pytest.mark.timeout(60)
def test_renamed_away_and_back_and_a_new_owner_of_the_name(ns):
    proc = start(ns, "--metrics-address", "")
    assert relays(ns)
    # Renamed away: the name is gone, so is the binding; the renamed interface is not followed.
    ns.ip("link", "set", "v1", "down")
    ns.ip("link", "set", "v1", "name", "v9")
    ns.ip("link", "set", "v9", "up")
    wait_count(proc, r"event=interface_lost interface=v1", 1)
    time.sleep(0.3)
    assert count(proc, r"event=interface_bound") == 0
    assert not relays(ns, timeout=0.5)
    # Renamed back: bound again.
    ns.ip("link", "set", "v9", "down")
    ns.ip("link", "set", "v9", "name", "v1")
    ns.ip("link", "set", "v1", "up")
    wait_count(proc, r"event=interface_bound interface=v1", 1)
    assert relays(ns), proc.stderr
    # Renamed away again, and a new interface takes the name: the daemon binds to the new one.
    ns.ip("link", "set", "v1", "down")
    ns.ip("link", "set", "v1", "name", "old1")
    ns.ip("link", "set", "v0", "name", "old0")
    wait_count(proc, r"event=interface_lost interface=v1", 2)
    ns.recreate_pair()
    wait_count(proc, r"event=interface_bound interface=v1", 2)
    assert relays(ns), proc.stderr
    stop(proc)


@pytest.mark.timeout(60)
def test_interface_down_at_start_is_bound_when_it_comes_up(ns):
    ns.ip("link", "set", "v1", "down")
    proc = start(ns, "--metrics-address", "")
    wait_count(proc, r"event=interface_lost interface=v1 reason=down", 1)
    ns.ip("link", "set", "v1", "up")
    wait_count(proc, r"event=interface_bound interface=v1", 1)
    assert relays(ns), proc.stderr
    stop(proc)


@pytest.mark.timeout(90)
def test_nflog_follows_interfaces_down_up_and_recreated(ns):
    """NFLOG capture: one netlink socket and name-matching rules stay; the daemon drops the port
    (and its emitter) of an interface that goes away and registers the one that next carries the
    name (new ifindex, new MAC) with a fresh emitter."""
    need_backend("nft")
    proc = start(ns, "--capture", "nflog", "--manage-rules", "--rules-backend", "nft", "--metrics-address", "")
    def rules_now() -> list[str]:  # without the rate limiter's set elements, which come and go
        return [line for line in installed_state(ns, "nft") if "elements = " not in line]

    rules = rules_now()
    assert rules != [] and any('"v1"' in line for line in rules), rules
    assert relays(ns), proc.stderr
    # down and up: same ifindex
    ns.ip("link", "set", "v1", "down")
    wait_count(proc, r"event=interface_lost interface=v1 reason=down", 1)
    assert not relays(ns, timeout=0.5)
    ns.ip("link", "set", "v1", "up")
    wait_count(proc, r"event=interface_bound interface=v1", 1)
    assert relays(ns), proc.stderr
    # deleted and re-created: a new ifindex (the second time a new MAC as well)
    for i, mac in ((2, RELAY_MAC), (3, "02:00:00:00:05:03")):
        ns.ip("link", "del", "v1")  # takes v0 with it
        wait_count(proc, r"event=interface_lost interface=v1", i)
        time.sleep(0.2)
        assert proc.poll() is None
        ns.recreate_pair(relay_mac=mac)
        wait_count(proc, r"event=interface_bound interface=v1", i)
        assert relays(ns, dst_mac=mac), proc.stderr
    assert count(proc, r"event=rules_installed") == 1  # the rules were never touched...
    assert rules_now() == rules  # ... and still match the name
    stop(proc)
    assert installed_state(ns, "nft") == []


# --- send errors -----------------------------------------------------------------------------------
def scrape(ns: FaultNS) -> str:
    def get():
        with urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=3) as r:
            return r.read().decode()

    return in_ns(ns.name, get)


def send_errors(text: str, errno_name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "pmtud_relay_send_errors_total" and s.labels == {"interface": "v1", "errno": errno_name}:
                return s.value
    return 0.0


@pytest.mark.timeout(60)
def test_send_errors_are_counted_never_fatal(ns):
    need_root_and("tc")
    proc = start(ns, "--metrics-address", METRICS)
    assert relays(ns)
    assert send_errors(scrape(ns), "ENOBUFS") == 0
    # A queue discipline that drops everything: the kernel refuses each copy with ENOBUFS.
    subprocess.run(["tc", "-n", ns.name, "qdisc", "replace", "dev", "v1", "root", "pfifo", "limit", "0"],
                   check=True, timeout=10, capture_output=True)
    for _ in range(3):
        assert not relays(ns, timeout=0.5)
    deadline = time.monotonic() + 5
    while send_errors(scrape(ns), "ENOBUFS") < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert send_errors(scrape(ns), "ENOBUFS") >= 3, scrape(ns)
    assert proc.poll() is None
    subprocess.run(["tc", "-n", ns.name, "qdisc", "del", "dev", "v1", "root"], check=True, timeout=10,
                   capture_output=True)
    assert relays(ns), proc.stderr  # the next copy goes out
    assert count(proc, r"event=send_failed interface=v1 errno=ENOBUFS") >= 1
    stop(proc)


# --- privileges ------------------------------------------------------------------------------------
def _caps(pid: int) -> dict[str, int]:
    st = status(pid)
    return {k: int(st[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}


@pytest.mark.timeout(60)
def test_capabilities_after_setup(ns):
    """As root, with every capability: once its sockets are open only CAP_NET_RAW is left, in the
    bounding set too; and it still relays."""
    proc = start(ns, "--metrics-address", "")
    wait_count(proc, r"event=privileges_dropped kept=CAP_NET_RAW bounding=CAP_NET_RAW", 1)
    assert _caps(proc.pid) == {"CapInh": 0, "CapPrm": 1 << CAP_NET_RAW, "CapEff": 1 << CAP_NET_RAW,
                               "CapBnd": 1 << CAP_NET_RAW, "CapAmb": 0}
    assert relays(ns), proc.stderr
    stop(proc)


@pytest.mark.timeout(90)
def test_capabilities_with_managed_nflog_rules_keep_net_admin_to_remove_them(ns):
    need_backend("nft")
    proc = ns.spawn_relay("run", "-i", "v1", "--capture", "nflog", "--manage-rules", "--rules-backend", "nft",
                          "--vip", F.VIP4, "--config", "", "--metrics-address", "")
    wait_ready(proc)
    both = 1 << CAP_NET_RAW | 1 << CAP_NET_ADMIN
    assert _caps(proc.pid) == {"CapInh": 0, "CapPrm": both, "CapEff": both, "CapBnd": both, "CapAmb": 0}
    assert installed_state(ns, "nft") != []
    stop(proc)
    assert "event=rules_removed" in proc.stderr
    assert installed_state(ns, "nft") == []  # removed at SIGTERM with what was left

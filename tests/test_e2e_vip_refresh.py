"""Service addresses discovered from ``lo`` follow the host while the daemon runs: an address
added to ``lo`` after start becomes a VIP at once (the daemon follows address events; with
``vip_refresh`` an hour, no periodic re-read can be what found it), and one removed stops being
one; each change is logged (``vips_changed``). Real kernel, in a namespace the test
creates (tests/support/netns.py's ``FaultNS``: VIPs 192.0.2.10 and 2001:db8:ffff::10 on ``lo``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.faults import relays, stop, wait_count
from tests.support.netns import VIP4, VIP6, wait_ready

pytestmark = pytest.mark.netns

NEW_VIP = "192.0.2.20"


@pytest.mark.timeout(60)
def test_an_address_added_to_lo_becomes_a_vip_and_a_removed_one_stops_being_one(ns):
    proc = ns.spawn([sys.executable, "-m", "pmtud_relay", "run", "-i", "v1", "--config", "", "--metrics-address", "",
                     "--vip-refresh", "3600", "--log-level", "info"], node="relay")
    try:
        wait_ready(proc)
        assert f"event=ready interfaces=v1 mode=l2 capture=afpacket vips={VIP4}/32,{VIP6}/128" in proc.stderr, \
            proc.stderr  # discovered at start (logged as the first vips_changed)
        about_new = {"outer_dst": NEW_VIP, "src": NEW_VIP}
        assert relays(ns)
        assert not relays(ns, timeout=0.5, **about_new)  # not a VIP (yet): dropped as not_vip
        subprocess.run(["ip", "-n", ns.name, "addr", "add", f"{NEW_VIP}/32", "dev", "lo"], check=True, timeout=10)
        wait_count(proc, r"event=vips_changed", 2, timeout=5)
        assert relays(ns, **about_new), proc.stderr
        subprocess.run(["ip", "-n", ns.name, "addr", "del", f"{VIP4}/32", "dev", "lo"], check=True, timeout=10)
        wait_count(proc, r"event=vips_changed", 3, timeout=5)
        assert not relays(ns, timeout=0.5)  # 192.0.2.10 is no longer on lo
        assert relays(ns, **about_new)
    finally:
        stop(proc)


@pytest.mark.timeout(60)
def test_no_vip_found_is_a_warning_and_vip_interfaces_says_where_to_look(ns):
    """vip_interfaces names where VIPs live: with nothing there the daemon warns at start that
    every PTB will be dropped; an interface matching it that appears with an address (as
    kube-proxy's kube-ipvs0 does) makes that address a VIP at once."""
    proc = ns.spawn([sys.executable, "-m", "pmtud_relay", "run", "-i", "v1", "--config", "", "--metrics-address", "",
                     "--vip-interface", "kube-ipvs*", "--vip-refresh", "3600", "--log-level", "info"], node="relay")
    try:
        wait_ready(proc)
        assert "event=vips_changed vips=none count=0 interfaces=kube-ipvs*" in proc.stderr, proc.stderr
        assert "level=warning event=no_vips looked_on=kube-ipvs*" in proc.stderr
        assert "every PTB will be dropped" in proc.stderr
        assert not relays(ns, timeout=0.5)  # 192.0.2.10 is on lo, but lo is not where it looks
        # an ifb: this kernel has no dummy driver (kube-proxy's kube-ipvs0 is a dummy)
        subprocess.run(["ip", "-n", ns.name, "link", "add", "kube-ipvs0", "type", "ifb"], check=True, timeout=10)
        subprocess.run(["ip", "-n", ns.name, "addr", "add", f"{VIP4}/32", "dev", "kube-ipvs0"], check=True, timeout=10)
        wait_count(proc, rf"event=vips_changed vips={VIP4}/32 count=1", 1, timeout=5)
        assert relays(ns), proc.stderr
    finally:
        stop(proc)

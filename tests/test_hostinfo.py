"""Host facts from the daemon's own rtnetlink dumps (pmtud_relay/netlink/rtnl.py, hostinfo.py), on a
real kernel in a namespace this test creates: service addresses on lo (whole prefix), on dummy
interfaces such as kube-ipvs0 (address only; an ifb stands in for the dummy kind here), on
interfaces vip_interfaces names; the interface of the default route. pyroute2, which the daemon
no longer loads, is the independent reference."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

import pytest

from pmtud_relay import hostinfo
from pmtud_relay.netlink import rtnl

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (ip) not installed"),
]


def ip(ns: str, *args: str) -> None:
    done = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"


@pytest.fixture
def host():
    ns = f"pmr-hi-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        for args in (
            ("link", "set", "lo", "up"),
            ("addr", "add", "192.0.2.10/32", "dev", "lo"),
            ("addr", "add", "198.51.100.0/28", "dev", "lo"),  # AnyIP: the whole prefix is local
            ("addr", "add", "2001:db8:ffff::10/128", "dev", "lo", "nodad"),
            # kube-proxy (IPVS) makes kube-ipvs0 a dummy, down; this machine's kernel has no dummy
            # driver, so an ifb (another link kind with no peer) stands in and "@ifb" for "@dummy".
            ("link", "add", "kube-ipvs0", "type", "ifb"),
            ("addr", "add", "203.0.113.5/32", "dev", "kube-ipvs0"),
            ("addr", "add", "203.0.113.6/24", "dev", "kube-ipvs0"),  # dummy: the address only
            ("link", "add", "vip0", "type", "veth", "peer", "name", "vip1"),
            ("addr", "add", "192.0.2.77/24", "dev", "vip0"),
            ("link", "set", "vip0", "up"),
            ("link", "set", "vip1", "up"),
            ("addr", "add", "2001:db8:5::2/64", "dev", "vip0", "nodad"),
            ("link", "add", "eth7", "type", "veth", "peer", "name", "eth8"),
            ("link", "set", "eth7", "up"),
            ("link", "set", "eth8", "up"),
            ("addr", "add", "198.51.100.200/24", "dev", "eth7"),
            ("route", "add", "default", "via", "192.0.2.1", "dev", "vip0", "metric", "200"),
            ("route", "add", "default", "via", "198.51.100.1", "dev", "eth7", "metric", "100"),
        ):
            ip(ns, *args)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@pytest.mark.timeout(60)
def test_vips_and_default_interface_from_rtnetlink(host, netns_program):
    patterns = [["lo", "@ifb"], ["lo"], ["vip*"], ["kube-ipvs0", "nothing-here"]]
    out = netns_program(host, "host_facts", "facts", payload=patterns)
    # the dumps read what pyroute2 reads
    assert out["links"] == out["ref_links"]
    assert out["addrs"] == out["ref_addrs"]
    assert ["kube-ipvs0", "ifb"] in out["links"]
    # the default route with the lowest metric
    assert out["default"] == "eth7"
    vips = out["vips"]
    assert vips["lo,@ifb"] == ["192.0.2.10/32", "198.51.100.0/28", "203.0.113.5/32", "203.0.113.6/32",
                                 "2001:db8:ffff::10/128"]
    assert vips["lo"] == ["192.0.2.10/32", "198.51.100.0/28", "2001:db8:ffff::10/128"]
    vip0 = vips["vip*"]  # a plain interface named by pattern: its addresses only (no link-local)
    assert vip0 == ["192.0.2.77/32", "2001:db8:5::2/128"], vip0
    assert vips["kube-ipvs0,nothing-here"] == ["203.0.113.5/32", "203.0.113.6/32"]


@pytest.mark.timeout(60)
def test_no_default_route_is_a_clear_error(host, netns_program):
    ip(host, "route", "del", "default", "dev", "eth7")
    ip(host, "route", "del", "default", "dev", "vip0")
    out = netns_program(host, "host_facts", "default")
    assert out == "error: no default route: name the capture interface(s) with --interface"


def test_parsers_are_total():
    """Truncated or garbled netlink data gives fewer messages, never an exception."""
    import random

    rng = random.Random(7)
    link = bytes.fromhex("2c000000100000000000000000000000") + bytes(16) + bytes.fromhex("0800030065746830")
    for _ in range(3000):
        data = bytearray(link + bytes(rng.randrange(256) for _ in range(rng.randrange(40))))
        for _ in range(rng.randrange(4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        for _kind, buf, s, e in rtnl.parse_messages(bytes(data[: rng.randrange(len(data) + 1)])):
            rtnl.parse_link(buf, s, e)
            rtnl.parse_address(buf, s, e)
            rtnl.parse_route(buf, s, e)


def test_vip_interface_patterns():
    links = [rtnl.Link(1, "lo", None), rtnl.Link(2, "kube-ipvs0", "dummy"), rtnl.Link(3, "vip3", "veth"),
             rtnl.Link(4, "eth0", None)]
    pick = lambda pats: [link.name for link in links if hostinfo.vip_interface_matches(link, pats)]  # noqa: E731
    assert pick(hostinfo.DEFAULT_VIP_INTERFACES) == ["lo", "kube-ipvs0"]
    assert pick(["vip?"]) == ["vip3"]
    assert pick(["@veth", "eth0"]) == ["vip3", "eth0"]
    assert pick([]) == []

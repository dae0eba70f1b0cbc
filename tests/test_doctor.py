"""``pmtud-relay doctor``: parsers and checks against fixture /proc trees and records,
and the whole command against a real kernel in network namespaces where the sysctls,
learned PMTUs, tunnels and ICMP traffic are set up on purpose.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pmtud_relay.doctor import counters, links, pmtu_cache, relayproc, sysctls
from pmtud_relay.doctor.command import add_parser, cli, main, run_checks
from pmtud_relay.doctor.findings import Finding, Severity, exit_code, render_text, to_json
from pmtud_relay.doctor.hints import mtu_hint, tunnel_overhead
from pmtud_relay.doctor.links import LinkRecord
from pmtud_relay.doctor.pmtu_cache import CacheEntry
from tests.support.netns import PROGRAM_ENV, program

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]

DEFAULT_SYSCTLS = {
    "net/ipv4/conf/all/drop_unicast_in_l2_multicast": 0,
    "net/ipv4/conf/default/drop_unicast_in_l2_multicast": 0,
    "net/ipv4/conf/lo/drop_unicast_in_l2_multicast": 0,
    "net/ipv4/conf/eth0/drop_unicast_in_l2_multicast": 0,
    "net/ipv4/conf/eth1/drop_unicast_in_l2_multicast": 0,
    "net/ipv6/conf/all/drop_unicast_in_l2_multicast": 0,
    "net/ipv6/conf/eth0/drop_unicast_in_l2_multicast": 0,
    "net/ipv6/conf/eth1/drop_unicast_in_l2_multicast": 0,
    "net/ipv4/conf/all/rp_filter": 0,
    "net/ipv4/conf/default/rp_filter": 0,
    "net/ipv4/conf/lo/rp_filter": 0,
    "net/ipv4/conf/eth0/rp_filter": 0,
    "net/ipv4/conf/eth1/rp_filter": 0,
    "net/ipv4/ip_no_pmtu_disc": 0,
    "net/ipv4/tcp_mtu_probing": 1,
    "net/ipv4/tcp_base_mss": 1024,
    "net/ipv4/route/min_pmtu": 552,
    "net/ipv4/route/mtu_expires": 600,
    "net/ipv6/route/mtu_expires": 600,
    "net/ipv6/flowlabel_reflect": 1,
}

SNMP = """Ip: Forwarding DefaultTTL InReceives FragOKs FragFails FragCreates
Ip: 1 64 1000 0 {fragfails} 0
Icmp: InMsgs InErrors InCsumErrors InDestUnreachs OutMsgs OutRateLimitHost OutDestUnreachs
Icmp: 10 0 0 {in4} 5 0 {out4}
IcmpMsg: InType3 OutType3
IcmpMsg: {in4} {out4}
"""
SNMP6 = """Ip6InReceives                   \t11
Ip6FragFails                    \t{fragfails6}
Icmp6InPktTooBigs               \t{in6}
Icmp6OutPktTooBigs              \t{out6}
"""
NETSTAT = """TcpExt: SyncookiesSent TCPMTUPFail TCPMTUPSuccess
TcpExt: 0 {mtupfail} 3
"""


def make_proc(root: Path, overrides: dict | None = None, **counts) -> Path:
    """A fixture /proc tree: sysctls (DEFAULT_SYSCTLS updated by overrides; None removes) and counters."""
    values = dict(DEFAULT_SYSCTLS)
    values.update(overrides or {})
    for rel, value in values.items():
        path = root / "sys" / rel
        if value is None:
            if path.exists():
                path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")
    c = {"fragfails": 0, "in4": 0, "out4": 0, "fragfails6": 0, "in6": 0, "out6": 0, "mtupfail": 0}
    c.update(counts)
    (root / "net").mkdir(parents=True, exist_ok=True)
    (root / "net" / "snmp").write_text(SNMP.format(**c))
    (root / "net" / "snmp6").write_text(SNMP6.format(**c))
    (root / "net" / "netstat").write_text(NETSTAT.format(**c))
    return root


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


# --- sysctls ---------------------------------------------------------------------------------


def test_default_tree_is_clean(tmp_path):
    found = by_check(sysctls.check_all(make_proc(tmp_path)))
    assert set(found) == {
        "sysctl.drop_unicast_in_l2_multicast", "sysctl.rp_filter", "sysctl.ip_no_pmtu_disc",
        "sysctl.tcp_mtu_probing", "sysctl.min_pmtu", "sysctl.ipv4.mtu_expires", "sysctl.ipv6.mtu_expires",
        "sysctl.flowlabel_reflect",
    }
    assert all(f.severity is Severity.OK for f in found.values()), [f for f in found.values() if f.severity]


def test_drop_unicast_on_one_interface_is_critical(tmp_path):
    root = make_proc(tmp_path, {"net/ipv4/conf/eth1/drop_unicast_in_l2_multicast": 1})
    f = sysctls.check_drop_unicast_in_l2_multicast(root)
    assert f.severity is Severity.CRITICAL
    assert f.data["dropping_ipv4"] == ["eth1"]
    assert "net.ipv4.conf.eth1.drop_unicast_in_l2_multicast=0" in f.fix
    assert "all.drop_unicast" not in f.fix  # 'all' is already 0
    # Limited to the interfaces that matter (e.g. the up ones): eth1 not among them.
    assert sysctls.check_drop_unicast_in_l2_multicast(root, ["eth0"]).severity is Severity.OK


def test_drop_unicast_all_is_ored_for_ipv4(tmp_path):
    root = make_proc(tmp_path, {"net/ipv4/conf/all/drop_unicast_in_l2_multicast": 1})
    f = sysctls.check_drop_unicast_in_l2_multicast(root)
    assert f.severity is Severity.CRITICAL
    assert f.data["dropping_ipv4"] == ["eth0", "eth1"]
    assert "net.ipv4.conf.all.drop_unicast_in_l2_multicast=0" in f.fix


def test_drop_unicast_ipv6_uses_interface_value_only(tmp_path):
    root = make_proc(tmp_path, {"net/ipv6/conf/all/drop_unicast_in_l2_multicast": 1})
    assert sysctls.check_drop_unicast_in_l2_multicast(root).severity is Severity.OK
    root = make_proc(tmp_path, {"net/ipv6/conf/eth0/drop_unicast_in_l2_multicast": 1})
    f = sysctls.check_drop_unicast_in_l2_multicast(root)
    assert f.severity is Severity.CRITICAL and f.data["dropping_ipv6"] == ["eth0"]


def test_drop_unicast_default_only_warns(tmp_path):
    root = make_proc(tmp_path, {"net/ipv4/conf/default/drop_unicast_in_l2_multicast": 1})
    assert sysctls.check_drop_unicast_in_l2_multicast(root).severity is Severity.WARNING


def test_interface_names_with_dots_use_slashes(tmp_path):
    root = make_proc(tmp_path, {"net/ipv4/conf/eth0.100/drop_unicast_in_l2_multicast": 1,
                                "net/ipv4/conf/eth0.100/rp_filter": 1})
    f = sysctls.check_drop_unicast_in_l2_multicast(root)
    assert "net.ipv4.conf.eth0/100.drop_unicast_in_l2_multicast=0" in f.fix
    assert "net.ipv4.conf.eth0/100.rp_filter=2" in sysctls.check_rp_filter(root).fix


@pytest.mark.parametrize(
    "all_v,eth0,severity,strict",
    [(0, 0, Severity.OK, []), (0, 1, Severity.INFO, ["eth0"]), (1, 0, Severity.INFO, ["eth0", "eth1"]),
     (2, 1, Severity.OK, []), (0, 2, Severity.OK, [])],
)
def test_rp_filter_effective_value_is_max(tmp_path, all_v, eth0, severity, strict):
    root = make_proc(tmp_path, {"net/ipv4/conf/all/rp_filter": all_v, "net/ipv4/conf/eth0/rp_filter": eth0})
    f = sysctls.check_rp_filter(root)
    assert f.severity is severity
    assert f.data["strict"] == strict


@pytest.mark.parametrize("value,severity", [(0, Severity.OK), (1, Severity.WARNING), (2, Severity.CRITICAL),
                                            (3, Severity.INFO)])
def test_ip_no_pmtu_disc(tmp_path, value, severity):
    f = sysctls.check_ip_no_pmtu_disc(make_proc(tmp_path, {"net/ipv4/ip_no_pmtu_disc": value}))
    assert f.severity is severity
    if severity >= Severity.WARNING:
        assert "net.ipv4.ip_no_pmtu_disc=0" in f.fix


def test_tcp_mtu_probing_advice(tmp_path):
    f = sysctls.check_tcp_mtu_probing(make_proc(tmp_path, {"net/ipv4/tcp_mtu_probing": 0}))
    assert (f.check, f.severity) == ("sysctl.tcp_mtu_probing", Severity.INFO)
    assert "net.ipv4.tcp_mtu_probing=1" in f.fix and "tcp_base_mss=1024" in f.fix
    f = sysctls.check_tcp_mtu_probing(
        make_proc(tmp_path, {"net/ipv4/tcp_mtu_probing": 1, "net/ipv4/tcp_base_mss": 512}))
    assert (f.check, f.severity) == ("sysctl.tcp_base_mss", Severity.INFO)
    f = sysctls.check_tcp_mtu_probing(
        make_proc(tmp_path, {"net/ipv4/tcp_mtu_probing": 2, "net/ipv4/tcp_base_mss": 1024}))
    assert f.severity is Severity.INFO and "every connection" in f.summary


@pytest.mark.parametrize("value,severity", [(552, Severity.OK), (300, Severity.WARNING), (1280, Severity.INFO)])
def test_min_pmtu(tmp_path, value, severity):
    assert sysctls.check_min_pmtu(make_proc(tmp_path, {"net/ipv4/route/min_pmtu": value})).severity is severity


@pytest.mark.parametrize("value,severity", [(600, Severity.OK), (30, Severity.WARNING), (86400, Severity.INFO)])
def test_mtu_expires(tmp_path, value, severity):
    root = make_proc(tmp_path, {"net/ipv4/route/mtu_expires": value, "net/ipv6/route/mtu_expires": value})
    assert sysctls.check_mtu_expires_v4(root).severity is severity
    assert sysctls.check_mtu_expires_v6(root).severity is severity


def test_ipv6_disabled_skips_ipv6_checks(tmp_path):
    root = make_proc(tmp_path, {"net/ipv6/route/mtu_expires": None, "net/ipv6/flowlabel_reflect": None})
    checks = {f.check for f in sysctls.check_all(root)}
    assert "sysctl.ipv6.mtu_expires" not in checks and "sysctl.flowlabel_reflect" not in checks


def test_flowlabel_reflect(tmp_path):
    f = sysctls.check_flowlabel_reflect(make_proc(tmp_path, {"net/ipv6/flowlabel_reflect": 4}))
    assert f.severity is Severity.INFO and "net.ipv6.flowlabel_reflect=5" in f.fix
    assert "flow label" in f.detail
    proc = make_proc(tmp_path, {"net/ipv6/flowlabel_reflect": 3})
    assert sysctls.check_flowlabel_reflect(proc).severity is Severity.OK


# --- counters --------------------------------------------------------------------------------


def test_parse_snmp_and_snmp6(tmp_path):
    root = make_proc(tmp_path, in4=7, out4=3, fragfails=2, in6=5, out6=1, mtupfail=4)
    c = counters.read_counters(root)
    assert c["Icmp.InDestUnreachs"] == 7 and c["Icmp.OutDestUnreachs"] == 3
    assert c["Ip.FragFails"] == 2 and c["Icmp6InPktTooBigs"] == 5 and c["Icmp6OutPktTooBigs"] == 1
    assert c["TcpExt.TCPMTUPFail"] == 4 and c["TcpExt.TCPMTUPSuccess"] == 3
    parsed = counters.parse_snmp(Path("/proc/net/snmp").read_text())
    assert "InDestUnreachs" in parsed["Icmp"] and "FragFails" in parsed["Ip"]


def test_totals_without_interval(tmp_path):
    (f,) = counters.check(counters.read_counters(make_proc(tmp_path, in4=7, in6=5)))
    assert f.check == "counters" and f.severity is Severity.INFO
    assert "--interval" in f.detail and f.data["totals"]["Icmp6InPktTooBigs"] == 5


def test_rates_generated_not_received_is_warning():
    before = {"Icmp.InDestUnreachs": 100, "Icmp.OutDestUnreachs": 0, "Ip.FragFails": 0,
              "Icmp6InPktTooBigs": 0, "Icmp6OutPktTooBigs": 0}
    after = dict(before, **{"Icmp.OutDestUnreachs": 50, "Ip.FragFails": 50})
    found = by_check(counters.check(before, after, 10.0))
    g = found["counters.generated"]
    assert g.severity is Severity.WARNING
    assert "5.00/s" in g.summary
    assert "stay flat" in g.detail  # telling other hosts to shrink
    assert found["counters"].data["rates"]["Icmp.OutDestUnreachs"] == 5.0


def test_rates_looped_back_story():
    before = {"Icmp.InDestUnreachs": 0, "Icmp.OutDestUnreachs": 0, "Ip.FragFails": 0}
    after = {"Icmp.InDestUnreachs": 40, "Icmp.OutDestUnreachs": 40, "Ip.FragFails": 40}
    g = by_check(counters.check(before, after, 10.0))["counters.generated"]
    assert "Wikimedia" in g.detail


def test_rates_received_only_and_slow_generation():
    before = {"Icmp.InDestUnreachs": 0, "Icmp.OutDestUnreachs": 0, "Ip.FragFails": 0, "Icmp6InPktTooBigs": 0}
    after = {"Icmp.InDestUnreachs": 30, "Icmp.OutDestUnreachs": 0, "Ip.FragFails": 0, "Icmp6InPktTooBigs": 12}
    found = by_check(counters.check(before, after, 3.0))
    assert set(found) == {"counters"} and "v6 PTB 4.00/s" in found["counters"].summary
    after = dict(after, **{"Icmp.OutDestUnreachs": 1, "Ip.FragFails": 1})
    assert by_check(counters.check(before, after, 3.0))["counters.generated"].severity is Severity.INFO


def test_sample_reads_twice(tmp_path):
    root = make_proc(tmp_path, out4=0)

    def fake_sleep(seconds):
        make_proc(tmp_path, out4=20, fragfails=20)

    before, after, seconds = counters.sample(root, 2.0, sleep=fake_sleep)
    assert before["Icmp.OutDestUnreachs"] == 0 and after["Icmp.OutDestUnreachs"] == 20
    assert seconds > 0


# --- PMTU cache ------------------------------------------------------------------------------


def entry(dst, mtu, family=4, dev="eth0", locked=False, gateway="198.51.100.1"):
    return CacheEntry(family, dst, gateway, dev, 254, mtu, locked, 300.0)


def test_cache_empty_is_ok():
    (f,) = pmtu_cache.check([])
    assert f.severity is Severity.OK


def test_cache_classification():
    entries = [
        entry("203.0.113.1", 1400),
        entry("203.0.113.2", 552, locked=True),
        entry("203.0.113.3", 1480),
        entry("203.0.113.4", 1480),
        entry("203.0.113.5", 1500),
        entry("203.0.113.6", 1438),
        entry("2001:db8::1", 1280, family=6, gateway=None),
        entry("2001:db8::2", 1450, family=6, gateway=None),
    ]
    found = pmtu_cache.check(entries, 552, {"eth0": 1500})
    checks = [f.check for f in found]
    summary = found[0]
    assert summary.check == "pmtu_cache" and summary.data["count"] == 8
    assert summary.data["ipv4"] == 6 and summary.data["ipv6"] == 2
    assert "203.0.113.2 via 198.51.100.1 dev eth0 expires 300s mtu lock 552" in summary.detail
    floor = by_check(found)["pmtu_cache.floor"]
    assert floor.severity is Severity.WARNING and "203.0.113.2" in floor.summary
    assert "tunnel" in floor.detail and "ip route flush cache" in floor.fix
    assert by_check(found)["pmtu_cache.floor_v6"].severity is Severity.INFO
    link = by_check(found)["pmtu_cache.link_mtu"]
    assert link.severity is Severity.WARNING and "203.0.113.5" in link.summary and "IPsec" in link.detail
    encaps = {f.data["mtu"]: f for f in found if f.check == "pmtu_cache.encapsulation"}
    assert set(encaps) == {1400, 1480, 1438, 1450}
    assert "2 IPv4 destination(s) learned MTU 1480" in encaps[1480].summary and "IPIP" in encaps[1480].summary
    assert "ESP" in encaps[1438].summary
    assert checks.index("pmtu_cache.encapsulation") > checks.index("pmtu_cache")


def test_parse_exception_reads_an_rtm_newroute():
    """The attributes ``ip route show cache`` shows, from the bytes the kernel sends (a real
    dump: test_doctor_in_namespace_reports_what_was_set_up); the first of a repeated one counts,
    a route without RTM_F_CLONED or too short is none, a missing RTA_DST is the default route."""
    from pmtud_relay.netlink import messages as nl

    def route(attrs: bytes, flags: int = pmtu_cache.RTM_F_CLONED, family: int = 2, table: int = 254) -> bytes:
        return nl.RTMSG.pack(family, 32, 0, 0, table, 0, 0, 1, flags) + attrs

    u32 = struct.Struct("=I").pack
    metrics = nl.attr(pmtu_cache.RTAX_LOCK, u32(1 << pmtu_cache.RTAX_MTU)) + nl.attr(pmtu_cache.RTAX_MTU, u32(552))
    cacheinfo = struct.pack("=IIiIIIII", 0, 0, -100, 0, 0, 0, 0, 0)  # rta_expires: -100 jiffies
    body = route(nl.attr(pmtu_cache.RTA_DST, bytes([203, 0, 113, 6])) + nl.attr(pmtu_cache.RTA_DST, bytes(4))
                 + nl.attr(pmtu_cache.RTA_GATEWAY, bytes([198, 51, 100, 2])) + nl.attr(pmtu_cache.RTA_TABLE, u32(100))
                 + nl.attr(pmtu_cache.RTA_METRICS | nl.NLA_F_NESTED, metrics)
                 + nl.attr(pmtu_cache.RTA_CACHEINFO, cacheinfo) + nl.attr(pmtu_cache.RTA_OIF, u32(0)))
    assert pmtu_cache.parse_exception(body, 0, len(body), 4, 100.0) == CacheEntry(
        4, "203.0.113.6", "198.51.100.2", None, 100, 552, True, -1.0)
    v6 = route(nl.attr(pmtu_cache.RTA_METRICS, nl.attr(pmtu_cache.RTAX_MTU, u32(1280))), family=10)
    assert pmtu_cache.parse_exception(v6, 0, len(v6), 6, 100.0) == CacheEntry(6, "::", None, None, 254, 1280,
                                                                              False, None)
    assert pmtu_cache.parse_exception(body, 0, 11, 4, 100.0) is None
    plain = route(b"", flags=0)
    assert pmtu_cache.parse_exception(plain, 0, len(plain), 4, 100.0) is None


def test_cache_floor_follows_min_pmtu():
    found = by_check(pmtu_cache.check([entry("203.0.113.9", 1280)], min_pmtu=1280))
    assert found["pmtu_cache.floor"].severity is Severity.WARNING


def test_mtu_hints():
    assert "IPIP" in mtu_hint(1480, 4)
    assert "GRE" in mtu_hint(1476, 4)
    assert "ESP" in mtu_hint(1438, 4)
    assert "VXLAN" in mtu_hint(1450, 4)
    assert "WireGuard" in mtu_hint(1420, 4)
    assert "PPPoE" in mtu_hint(1492, 4)
    assert "floor" in mtu_hint(552, 4)
    assert "1280" in mtu_hint(1280, 6)
    assert "6in4" in mtu_hint(1480, 6)
    assert mtu_hint(1500, 4) is None and mtu_hint(1337, 4) is None
    assert tunnel_overhead("vxlan", 6)[0] == 70 and tunnel_overhead("wireguard", 4)[:2] == (60, 60)
    assert tunnel_overhead("wireguard", None)[:2] == (60, 80) and tunnel_overhead("veth", 4) is None


# --- interfaces ------------------------------------------------------------------------------


def rec(index, name, kind, mtu, up=True, **kw):
    return LinkRecord(index=index, name=name, kind=kind, mtu=mtu, up=up, **kw)


def test_links_tunnels_and_mismatches():
    records = [
        rec(1, "lo", None, 65536),
        rec(2, "eth0", None, 1500),
        rec(3, "vx0", "vxlan", 1450, lower=2, lower_source="attribute"),
        rec(4, "vx1", "vxlan", 1500, lower=2, lower_source="route to 198.51.100.2", remote="198.51.100.2",
            outer_family=4),
        rec(5, "va", "veth", 1500, peer=6),
        rec(6, "vb", "veth", 1400, peer=5),
        rec(7, "mv0", "macvlan", 1400, lower=2, lower_source="attribute"),
        rec(8, "wg0", "wireguard", 1420),
        rec(9, "gre1", "gre", 1500, up=False, lower=2, lower_source="attribute"),
        rec(10, "vc", "veth", 1500, peer=11),
        rec(11, "vd", "veth", 1500, peer=10),
    ]
    found = by_check(links.check(records))
    assert found["interfaces.vx0"].severity is Severity.INFO and "- 50" in found["interfaces.vx0"].summary
    vx1 = found["interfaces.vx1"]
    assert vx1.severity is Severity.WARNING and vx1.fix == "ip link set dev vx1 mtu 1450"
    assert "route to 198.51.100.2" in vx1.detail and "1451 and 1500" in vx1.detail
    veth = found["interfaces.va"]
    assert veth.severity is Severity.WARNING and "vb" in veth.summary and "ip link set dev va mtu 1400" in veth.fix
    assert "interfaces.vb" not in found and "interfaces.vc" not in found  # one finding per pair; matched pair ok
    assert found["interfaces.mv0"].severity is Severity.INFO and "below" in found["interfaces.mv0"].summary
    assert "lower device unknown" in found["interfaces.wg0"].summary
    assert found["interfaces.gre1"].severity is Severity.INFO and "(down)" in found["interfaces.gre1"].summary


def test_links_clean_host():
    (f,) = links.check([rec(1, "lo", None, 65536), rec(2, "eth0", None, 1500)])
    assert f.severity is Severity.OK and f.check == "interfaces"


# --- relay process, rules, VIPs --------------------------------------------------------------


def fake_proc_tree(root: Path, cmdlines: dict[int, list[str]]) -> Path:
    for pid, argv in cmdlines.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (root / "self").mkdir(exist_ok=True)
    return root


def test_find_relays(tmp_path):
    root = fake_proc_tree(tmp_path, {
        100: ["/usr/bin/python3", "/usr/local/bin/pmtud-relay", "run", "--vip", "192.0.2.10/32", "-i", "eth0"],
        101: ["/opt/venv/bin/python", "-m", "pmtud_relay", "dry-run"],
        102: ["/usr/local/bin/pmtud-relay", "doctor", "--json"],
        103: ["/usr/sbin/sshd", "-D"],
        104: ["pmtud-relay", "--log-level", "debug"],
        105: ["vim", "pmtud-relay-notes.txt", "run"],
    })
    relays = relayproc.find_relays(root, own_pid=1)
    assert [(p.pid, p.command) for p in relays] == [(100, "run"), (101, "dry-run")]
    # A wrapper around a relay (here strace, pid 300, parent of 301) counts once: the inner process.
    wrapped = fake_proc_tree(tmp_path / "w", {
        300: ["strace", "-f", "/usr/local/bin/pmtud-relay", "run"],
        301: ["/usr/local/bin/pmtud-relay", "run"],
    })
    (wrapped / "300" / "stat").write_text("300 (strace) S 1 300 300 0 -1\n")
    (wrapped / "301" / "stat").write_text("301 (pmtud-relay) S 300 300 300 0 -1\n")
    assert [p.pid for p in relayproc.find_relays(wrapped, own_pid=1)] == [301]
    assert relays[0].vips == ["192.0.2.10/32"] and relays[1].vips == []
    assert relays[0].same_netns is None  # no ns links in a fixture tree
    f = relayproc.check_process(relays)
    assert f.severity is Severity.OK and "pid 100 run" in f.summary
    assert relayproc.check_process([relays[1]]).summary.startswith("pmtud-relay running in dry-run mode only")
    assert relayproc.check_process([]).severity is Severity.INFO


def test_check_vips():
    running = [relayproc.RelayProcess(1, ("pmtud-relay", "run"), "run", True)]
    assert relayproc.check_vips([], running).severity is Severity.WARNING
    assert relayproc.check_vips([], []).severity is Severity.INFO
    f = relayproc.check_vips(["192.0.2.10/32"], running)
    assert f.severity is Severity.INFO and "192.0.2.10/32" in f.summary
    assert "not discovered" in relayproc.check_vips(None, [], "boom").summary


NFT_LISTING = """table inet pmtud_relay {
\tset src4 {
\t\ttype ipv4_addr
\t\tsize 65536
\t\tflags dynamic,timeout
\t\ttimeout 10s
\t}
\tchain prerouting {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\ticmp type destination-unreachable icmp code frag-needed counter jump ptb4
\t}
\tchain to_nflog {
\t\tcounter log group 2105 comment "to pmtud-relay"
\t}
}
"""


def fake_runner(nft_out=None, ipt=None):
    """A stand-in for subprocess: nft prints ``nft_out`` (None: no table); ``ipt`` maps (tool,
    table, chain) to output."""
    ipt = ipt or {}

    def run(argv):
        tool = os.path.basename(argv[0])
        if tool == "nft":
            return (0, nft_out) if nft_out is not None else (1, "Error: No such file or directory")
        key = (tool, argv[argv.index("-t") + 1], argv[-1])
        return (0, ipt[key]) if key in ipt else (1, "iptables: No chain/target/match by that name.")

    return run


def nflog_relay(group=None, pid=42):
    argv = ("pmtud-relay", "run", "--capture", "nflog") + (("--nflog-group", str(group)) if group else ())
    return relayproc.RelayProcess(pid, argv, "run", True)


def test_check_rules_nft_and_legacy_iptables():
    which = lambda t: f"/usr/sbin/{t}"  # noqa: E731
    f = relayproc.check_rules(which=which, run=fake_runner(NFT_LISTING))
    assert f.severity is Severity.OK
    assert f.data["found"] == ["nft table inet pmtud_relay (2 rules)"] and f.data["nflog_groups"] == [2105]
    ipt = {("iptables-legacy", "raw", "PMTUD_RELAY"): "-N PMTUD_RELAY\n-A PMTUD_RELAY -j PMTUD_RELAY_LOG\n",
           ("iptables-legacy", "raw", "PMTUD_RELAY_LOG"): "-A PMTUD_RELAY_LOG -j NFLOG --nflog-group 9\n"}
    f = relayproc.check_rules(which=which, run=fake_runner(None, ipt), relays=[nflog_relay(9)])
    assert f.severity is Severity.OK
    assert f.data["found"] == ["iptables-legacy -t raw chain PMTUD_RELAY (1 rules)"] and f.data["nflog_groups"] == [9]


def test_check_rules_without_tools():
    f = relayproc.check_rules(which=lambda t: None, run=fake_runner())
    assert f.severity is Severity.INFO and "nft not installed" in f.summary and "iptables not installed" in f.summary
    # An NFLOG relay with nothing able to show rules: cannot tell, so not a warning.
    found = relayproc.check_rules(which=lambda t: None, run=fake_runner(), relays=[nflog_relay()])
    assert found.severity is Severity.INFO


def test_nflog_relay_without_rules_warns():
    which = lambda t: f"/usr/sbin/{t}"  # noqa: E731
    f = relayproc.check_rules(which=which, run=fake_runner(), relays=[nflog_relay()])
    assert f.severity is Severity.WARNING and "pmtud-relay rules install" in f.fix
    afpacket = relayproc.RelayProcess(43, ("pmtud-relay", "run"), "run", True)
    assert relayproc.check_rules(which=which, run=fake_runner(), relays=[afpacket]).severity is Severity.INFO


def test_nflog_group_mismatch_warns():
    which = lambda t: f"/usr/sbin/{t}"  # noqa: E731
    f = relayproc.check_rules(which=which, run=fake_runner(NFT_LISTING), relays=[nflog_relay(7)])
    assert f.severity is Severity.WARNING and "group 2105" in f.summary and "--nflog-group 7" in f.fix
    # The relay's default group matches the rules' default group.
    found = relayproc.check_rules(which=which, run=fake_runner(NFT_LISTING), relays=[nflog_relay()])
    assert found.severity is Severity.OK


def test_relay_settings_from_environment(tmp_path):
    root = fake_proc_tree(tmp_path, {200: ["/usr/local/bin/pmtud-relay", "run"]})
    (root / "200" / "environ").write_bytes(b"PATH=/usr/bin\0PMTUD_RELAY_CAPTURE=nflog\0"
                                           b"PMTUD_RELAY_VIPS=192.0.2.10,2001:db8::/64\0"
                                          b"PMTUD_RELAY_NFLOG_GROUP=12\0")
    (p,) = relayproc.find_relays(root, own_pid=1)
    assert p.capture == "nflog" and p.nflog_group == 12
    assert p.vips == ["192.0.2.10", "2001:db8::/64"]
    assert p.env == {"PMTUD_RELAY_CAPTURE": "nflog", "PMTUD_RELAY_VIPS": "192.0.2.10,2001:db8::/64",
                     "PMTUD_RELAY_NFLOG_GROUP": "12"}
    with_config = relayproc.RelayProcess(1, ("pmtud-relay", "run", "--config", "/srv/relay.toml"), "run", True)
    assert with_config.config_file == "/srv/relay.toml"
    assert relayproc.check_vips([], [with_config]).severity is Severity.INFO  # VIPs may be in the file


# --- rendering, exit codes, command ----------------------------------------------------------


def test_exit_codes_and_rendering():
    ok = Finding("a", Severity.OK, "fine")
    info = Finding("b", Severity.INFO, "note", "detail text", "do this")
    warn = Finding("c", Severity.WARNING, "hmm")
    crit = Finding("d", Severity.CRITICAL, "bad", fix="fix it")
    assert exit_code([]) == 0 and exit_code([ok, info]) == 0
    assert exit_code([ok, warn]) == 1 and exit_code([warn, crit, info]) == 2
    text = render_text([ok, info, warn, crit], colour=False)
    lines = text.splitlines()
    assert lines[0].startswith("CRITICAL d: bad") and "fix: fix it" in lines[1]
    assert lines[-1] == "4 findings: 1 critical, 1 warning, 1 info, 1 ok"
    assert "\033[" not in text and "\033[" in render_text([crit], colour=True)
    doc = json.loads(to_json([info]))
    assert doc == [{"check": "b", "severity": "info", "summary": "note", "detail": "detail text", "fix": "do this",
                    "data": {}}]


def test_command_on_fixture_tree(tmp_path, capsys):
    root = make_proc(tmp_path, {"net/ipv4/conf/eth0/drop_unicast_in_l2_multicast": 1,
                                "net/ipv4/route/mtu_expires": 30}, in4=3)
    code = cli(["--proc-root", str(root), "--check", "sysctls", "--check", "counters", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 2
    found = {f["check"]: f for f in doc}
    assert found["sysctl.drop_unicast_in_l2_multicast"]["severity"] == "critical"
    assert found["sysctl.ipv4.mtu_expires"]["severity"] == "warning"
    assert found["counters"]["data"]["totals"]["Icmp.InDestUnreachs"] == 3
    assert not any(f["check"].startswith(("pmtu_cache", "interfaces", "relay")) for f in doc)
    assert all(set(f) == {"check", "severity", "summary", "detail", "fix", "data"} for f in doc)
    code = cli(["--proc-root", str(make_proc(tmp_path / "w", {"net/ipv4/ip_no_pmtu_disc": 1})),
                "--check", "sysctls", "--brief", "--no-color"])
    out = capsys.readouterr().out
    assert code == 1 and out.startswith("WARNING  sysctl.ip_no_pmtu_disc")
    assert "fix: " in out and "(RFC 1122" not in out


def test_failing_check_is_reported_not_fatal(monkeypatch, tmp_path):
    def boom(*a, **kw):
        raise PermissionError("netlink says no")

    monkeypatch.setattr(pmtu_cache, "dump_exceptions", boom)
    found = run_checks(("pmtu-cache",), make_proc(tmp_path))
    assert [(f.check, f.severity) for f in found] == [("pmtu_cache", Severity.INFO)]
    assert "could not run" in found[0].summary and "netlink says no" in found[0].summary


def test_add_parser_wiring(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="pmtud-relay")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["doctor", "--json", "--check", "sysctls", "--proc-root", str(make_proc(tmp_path))])
    assert args.command == "doctor" and args.handler is main
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)
    with pytest.raises(SystemExit):
        parser.parse_args(["doctor", "--interval", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["doctor", "--check", "nonsense"])


# --- real kernel, network namespaces ---------------------------------------------------------

NS_PREFIX = "pmr-doc-"
PY = sys.executable


def _need_root_and_ip():
    if os.geteuid() != 0:
        pytest.skip("real-kernel doctor tests need root (network namespaces)")
    if not shutil.which("ip"):
        pytest.skip("iproute2 (ip) not installed")


def sh(*argv: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def nsx(ns: str, *argv: str, **kw) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *argv, **kw)


def sysctl(ns: str, **values) -> None:
    nsx(ns, "sysctl", "-qw", *(f"{k.replace('__', '.')}={v}" for k, v in values.items()))


@pytest.fixture
def doc_netns():
    """Two namespaces joined by a veth: H (the host the doctor inspects) and R (a router)."""
    _need_root_and_ip()
    tag = f"{NS_PREFIX}{os.getpid() % 100000}-{secrets.token_hex(2)}"
    host, router = f"{tag}-h", f"{tag}-r"
    made = []
    try:
        for ns in (host, router):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        sh("ip", "-n", host, "link", "add", "h0", "type", "veth", "peer", "name", "r0", "netns", router)
        for ns, dev, a4, a6 in ((host, "h0", "198.51.100.1/24", "2001:db8:1::1/64"),
                                (router, "r0", "198.51.100.2/24", "2001:db8:1::2/64")):
            sh("ip", "-n", ns, "addr", "add", a4, "dev", dev)
            sh("ip", "-n", ns, "-6", "addr", "add", a6, "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield host, router
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def run_doctor(ns: str, *args: str, timeout: float = 60.0) -> tuple[int, dict[str, list[dict]]]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(["ip", "netns", "exec", ns, PY, "-m", "pmtud_relay.doctor", "--json", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO))
    assert proc.stdout, proc.stderr
    grouped: dict[str, list[dict]] = {}
    for f in json.loads(proc.stdout):
        grouped.setdefault(f["check"], []).append(f)
    return proc.returncode, grouped


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_doctor_in_namespace_reports_what_was_set_up(doc_netns):
    host, router = doc_netns
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def ptb(family, mtu, quoted_dst):
        if family == 4:
            args = ("4", "198.51.100.1", "198.51.100.2", str(mtu), "198.51.100.1", quoted_dst)
        else:
            args = ("6", "2001:db8:1::1", "2001:db8:1::2", str(mtu), "2001:db8:1::1", quoted_dst)
        subprocess.run(["ip", "netns", "exec", router, *program("sockets", "send-ptb", *args)], check=True,
                       timeout=30, env=env, capture_output=True)

    # Learned PMTUs: routes in H towards documentation prefixes, then PTBs from R about them.
    sh("ip", "-n", host, "route", "add", "203.0.113.0/25", "via", "198.51.100.2")
    sh("ip", "-n", host, "-6", "route", "add", "2001:db8:2::/64", "dev", "h0")  # on-link: not gc'd
    ptb(4, 1400, "203.0.113.5")
    ptb(4, 300, "203.0.113.6")  # below min_pmtu: clamped to 552 and locked (the floor)
    ptb(4, 1480, "203.0.113.7")  # IPIP hint
    ptb(4, 1500, "203.0.113.9")  # equal to h0's MTU: the Wikimedia pattern
    ptb(6, 1280, "2001:db8:2::5")  # IPv6 minimum
    ptb(6, 1480, "2001:db8:2::7")  # 6in4 hint
    # The kernel dumps an IPv4 exception only once a route lookup has used it (traffic would):
    # look each destination up, which also shows the learned value.
    for dst in ("203.0.113.5", "203.0.113.6", "203.0.113.7", "203.0.113.9"):
        assert " mtu " in sh("ip", "-n", host, "route", "get", dst).stdout
    assert "mtu lock 552" in sh("ip", "-n", host, "route", "get", "203.0.113.6").stdout

    # Interfaces: a veth pair with mismatched MTUs (macvlan and VXLAN: see the next test).
    sh("ip", "-n", host, "link", "add", "m0", "type", "veth", "peer", "name", "m1")
    sh("ip", "-n", host, "link", "set", "m0", "mtu", "1400")
    for dev in ("m0", "m1"):
        sh("ip", "-n", host, "link", "set", dev, "up")
    sh("ip", "-n", host, "addr", "add", "192.0.2.10/32", "dev", "lo")  # a VIP

    # Forwarding onto a smaller MTU, so H generates Frag-Needed while doctor samples counters.
    sysctl(host, net__ipv4__ip_forward=1)
    sh("ip", "-n", host, "route", "add", "203.0.113.200/32", "dev", "m0")
    sh("ip", "-n", router, "route", "add", "203.0.113.0/24", "via", "198.51.100.1")

    # Sysctls set on purpose (after the PTBs: ip_no_pmtu_disc=2 would ignore them).
    sysctl(host, net__ipv4__conf__h0__drop_unicast_in_l2_multicast=1,
           net__ipv6__conf__h0__drop_unicast_in_l2_multicast=1,
           net__ipv4__conf__all__rp_filter=1, net__ipv4__ip_no_pmtu_disc=2,
           net__ipv4__tcp_mtu_probing=0, net__ipv4__route__mtu_expires=30,
           net__ipv6__flowlabel_reflect=0)

    sender = subprocess.Popen(["ip", "netns", "exec", router, *program("sockets", "send-big", "203.0.113.200", 6)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, **PROGRAM_ENV))
    try:
        time.sleep(0.3)
        code, found = run_doctor(host, "--interval", "2")
    finally:
        sender.kill()
        sender.wait(timeout=10)

    def one(check):
        assert check in found, sorted(found)
        return found[check][0]

    assert code == 2  # critical findings present
    drop = one("sysctl.drop_unicast_in_l2_multicast")
    assert drop["severity"] == "critical"
    assert drop["data"]["dropping_ipv4"] == ["h0"] and drop["data"]["dropping_ipv6"] == ["h0"]
    assert "net.ipv4.conf.h0.drop_unicast_in_l2_multicast=0" in drop["fix"]
    assert one("sysctl.rp_filter")["severity"] == "info" and "h0" in one("sysctl.rp_filter")["data"]["strict"]
    assert one("sysctl.ip_no_pmtu_disc")["severity"] == "critical"
    assert one("sysctl.tcp_mtu_probing")["severity"] == "info"
    assert one("sysctl.ipv4.mtu_expires")["severity"] == "warning"
    assert one("sysctl.flowlabel_reflect")["severity"] == "info"
    assert one("sysctl.min_pmtu")["severity"] == "ok"

    summary = one("pmtu_cache")
    learned = {(e["dst"], e["mtu"], e["locked"]) for e in summary["data"]["entries"]}
    assert {("203.0.113.5", 1400, False), ("203.0.113.6", 552, True), ("203.0.113.7", 1480, False),
            ("203.0.113.9", 1500, False), ("2001:db8:2::5", 1280, False), ("2001:db8:2::7", 1480, False)} <= learned
    floor = one("pmtu_cache.floor")
    assert floor["severity"] == "warning" and "203.0.113.6" in floor["summary"]
    assert "2001:db8:2::5" in one("pmtu_cache.floor_v6")["summary"]
    assert "203.0.113.9 (1500 on h0)" in one("pmtu_cache.link_mtu")["summary"]
    hints = {(f["data"]["mtu"], f["data"]["family"]): f["summary"] for f in found["pmtu_cache.encapsulation"]}
    assert "IPIP" in hints[(1480, 4)] and "6in4" in hints[(1480, 6)]
    assert "1 IPv4 destination(s) learned MTU 1400" in hints[(1400, 4)]

    veth = found.get("interfaces.m1") or found.get("interfaces.m0")
    assert veth and veth[0]["severity"] == "warning" and "mismatched" in veth[0]["summary"]

    assert "192.0.2.10/32" in one("relay.vips")["summary"]
    assert one("relay.process")["severity"] in ("info", "ok")
    # A fresh namespace holds no firewall rules of ours (and no NFLOG relay runs in it).
    rules = one("relay.rules")
    assert rules["severity"] == "info", rules
    assert rules["summary"].startswith("no pmtud-relay firewall rules (nft table inet pmtud_relay / chain "
                                       "PMTUD_RELAY)"), rules
    assert rules["data"]["found"] == [] and rules["data"]["nflog_groups"] == [], rules

    generated = one("counters.generated")
    assert generated["data"]["rates"]["Icmp.OutDestUnreachs"] > 0
    assert generated["data"]["rates"]["Ip.FragFails"] > 0
    assert "stay flat" in generated["detail"]


# What iproute2 prints when the kernel has no such link type (no driver, no module to load).
_NO_DRIVER = ("Unknown device type", "Operation not supported")


def add_link_or_skip(ns: str, kind: str, *argv: str) -> None:
    """``ip -n NS link add ARGV`` (a ``kind`` device): skip, quoting iproute2, if this kernel lacks
    the driver; fail on any other error."""
    proc = sh("ip", "-n", ns, "link", "add", *argv, check=False)
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if any(s in err for s in _NO_DRIVER):
            pytest.skip(f"this kernel cannot create a {kind} device: ip link add {' '.join(argv)}: {err}")
        raise AssertionError(f"ip -n {ns} link add {' '.join(argv)} failed ({proc.returncode}): {err}")


@pytest.mark.netns
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["macvlan", "vxlan"])
def test_doctor_on_stacked_devices_in_namespace(doc_netns, kind):
    """Live macvlan and VXLAN devices: below the lower device's MTU is info; VXLAN at 1500 with no
    lower device (the route to the remote goes over h0, MTU 1500) is a warning with a fix."""
    host, _ = doc_netns
    if kind == "macvlan":
        add_link_or_skip(host, kind, "link", "h0", "name", "mv0", "mtu", "1400", "type", "macvlan")
        devs = ("mv0",)
    else:
        add_link_or_skip(host, kind, "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "dev", "h0",
                         "remote", "198.51.100.2")
        sh("ip", "-n", host, "link", "add", "vx1", "type", "vxlan", "id", "43", "dstport", "4790",
           "remote", "198.51.100.2")
        sh("ip", "-n", host, "link", "set", "vx1", "mtu", "1500")  # no lower device: 1500 is accepted
        devs = ("vx0", "vx1")
    for dev in devs:
        sh("ip", "-n", host, "link", "set", dev, "up")
    _, found = run_doctor(host, "--check", "interfaces")

    def one(check):
        assert check in found, sorted(found)
        return found[check][0]

    if kind == "macvlan":
        mv0 = one("interfaces.mv0")
        assert mv0["severity"] == "info" and "below its lower device h0 mtu 1500" in mv0["summary"], mv0
    else:
        vx0 = one("interfaces.vx0")
        assert vx0["severity"] == "info" and "h0 mtu 1500 - 50" in vx0["summary"], vx0
        vx1 = one("interfaces.vx1")
        assert vx1["severity"] == "warning" and vx1["fix"] == "ip link set dev vx1 mtu 1450", vx1
        assert "route to 198.51.100.2" in vx1["detail"], vx1


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_doctor_in_clean_namespace_exits_0_or_1(doc_netns):
    host, _ = doc_netns
    sysctl(host, net__ipv4__tcp_mtu_probing=1, net__ipv6__flowlabel_reflect=1)
    code, found = run_doctor(host, "--check", "sysctls", "--check", "pmtu-cache", "--check", "interfaces")
    severities = {f["severity"] for fs in found.values() for f in fs}
    assert severities <= {"ok", "info"}, found
    assert code == 0
    assert found["pmtu_cache"][0]["severity"] == "ok"


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_doctor_sees_rules_and_a_relay_in_namespace(doc_netns):
    """An nft table like the relay's, and a process that looks like an NFLOG relay reading another group."""
    host, _ = doc_netns
    if not shutil.which("nft"):
        pytest.skip("nft not installed")
    ruleset = (
        "table inet pmtud_relay {\n"
        " chain prerouting { type filter hook prerouting priority raw; policy accept;\n"
        "  meta pkttype host icmp type destination-unreachable icmp code frag-needed log group 2105\n }\n"
        "}\n"
    )
    subprocess.run(["ip", "netns", "exec", host, "nft", "-f", "-"], input=ruleset, text=True, check=True,
                   capture_output=True, timeout=10)
    # argv[0] of "python -c CODE ARGS..." is "-c"; the rest makes it look like a relay to /proc/*/cmdline.
    fake = subprocess.Popen(["ip", "netns", "exec", host, PY, "-c", "import time; time.sleep(30)",
                             "pmtud-relay", "run", "--capture", "nflog", "--nflog-group", "7", "--vip", "192.0.2.10"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            code, found = run_doctor(host, "--check", "relay")
            if "pid" in found["relay.process"][0]["summary"]:
                break
            time.sleep(0.2)
    finally:
        fake.kill()
        fake.wait(timeout=10)
    process = found["relay.process"][0]
    assert process["severity"] == "ok" and "(capture nflog)" in process["summary"]
    rules = found["relay.rules"][0]
    assert rules["severity"] == "warning" and rules["data"]["nflog_groups"] == [2105]
    assert "nft table inet pmtud_relay (1 rules)" in rules["data"]["found"]
    assert "relay reads group 7" in rules["summary"]
    assert code == 1

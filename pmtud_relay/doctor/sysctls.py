"""Sysctls that break or weaken the relay or Path MTU Discovery.

Read straight from ``<proc_root>/sys`` so tests can point the checks at a fixture tree.
Per-interface values are combined the way the kernel combines them:

* ``net.ipv4.conf.*.drop_unicast_in_l2_multicast``: ``all`` OR the interface
  (``IN_DEV_ORCONF``); IPv6 uses the interface's own value only.
* ``net.ipv4.conf.*.rp_filter``: the larger of ``all`` and the interface.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pmtud_relay.doctor.findings import Finding, Severity
from pmtud_relay.doctor.hints import FLOOR_V4

_SKIP_CONF = {"all", "default", "lo"}


def sysctl_name(*parts: str) -> str:
    """Dotted name as sysctl(8) spells it: dots inside a component become slashes."""
    return ".".join(p.replace(".", "/") for p in parts)


def read_sysctl(proc_root: str | Path, *parts: str) -> str | None:
    """The value of /proc/sys/<parts...>, stripped; None if absent or unreadable."""
    path = Path(proc_root, "sys", *parts)
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read_int(proc_root: str | Path, *parts: str) -> int | None:
    text = read_sysctl(proc_root, *parts)
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def conf_interfaces(proc_root: str | Path, family: str = "ipv4") -> list[str]:
    """Interfaces that have a conf directory (all but all/default/lo)."""
    try:
        names = [p.name for p in Path(proc_root, "sys", "net", family, "conf").iterdir()]
    except OSError:
        return []
    return sorted(n for n in names if n not in _SKIP_CONF)


def _interfaces(proc_root, family: str, only: Iterable[str] | None) -> list[str]:
    present = conf_interfaces(proc_root, family)
    if only is None:
        return present
    wanted = set(only)
    return [n for n in present if n in wanted]


def _persist(assignments: list[str]) -> str:
    lines = " ".join(f"{a}" for a in assignments)
    return (
        f"sysctl -w {lines}; persist it in /etc/sysctl.d/90-pmtud-relay.conf "
        "(and check nothing else, e.g. a hardening profile, sets it back)"
    )


# --- drop_unicast_in_l2_multicast ---------------------------------------------------------


def check_drop_unicast_in_l2_multicast(proc_root, interfaces: Iterable[str] | None = None) -> Finding:
    """Critical: the relay's copies are unicast IP in L2 broadcast/multicast frames."""
    interfaces = list(interfaces) if interfaces is not None else None
    all4 = read_int(proc_root, "net", "ipv4", "conf", "all", "drop_unicast_in_l2_multicast")
    default4 = read_int(proc_root, "net", "ipv4", "conf", "default", "drop_unicast_in_l2_multicast")
    values: dict[str, int | None] = {
        "net.ipv4.conf.all.drop_unicast_in_l2_multicast": all4,
        "net.ipv4.conf.default.drop_unicast_in_l2_multicast": default4,
    }
    dropping4: list[str] = []
    for name in _interfaces(proc_root, "ipv4", interfaces):
        val = read_int(proc_root, "net", "ipv4", "conf", name, "drop_unicast_in_l2_multicast")
        values[sysctl_name("net", "ipv4", "conf", name, "drop_unicast_in_l2_multicast")] = val
        if (all4 or 0) or (val or 0):
            dropping4.append(name)
    dropping6: list[str] = []
    for name in _interfaces(proc_root, "ipv6", interfaces):
        val = read_int(proc_root, "net", "ipv6", "conf", name, "drop_unicast_in_l2_multicast")
        values[sysctl_name("net", "ipv6", "conf", name, "drop_unicast_in_l2_multicast")] = val
        if val:
            dropping6.append(name)
    if all4 is None and not dropping6:
        return Finding("sysctl.drop_unicast_in_l2_multicast", Severity.INFO, "not available on this kernel",
                       data={"values": values})
    explain = (
        "The relay hands each PTB to every server as an L2 broadcast (IPv4: ff:ff:ff:ff:ff:ff; IPv6: "
        "33:33:00:00:00:01) whose IP destination is the VIP. With drop_unicast_in_l2_multicast=1 the kernel "
        "discards exactly these frames (RFC 1122 3.3.6 hardening), so the server owning the flow never "
        "sees the PTB and its large packets keep vanishing: the black hole the relay exists to fix. "
        "For IPv4 the kernel ORs 'all' with the interface value; IPv6 uses the interface value only."
    )
    fixes: list[str] = []
    if dropping4:
        if all4:
            fixes.append("net.ipv4.conf.all.drop_unicast_in_l2_multicast=0")
        fixes += [
            f"{sysctl_name('net', 'ipv4', 'conf', n, 'drop_unicast_in_l2_multicast')}=0"
            for n in dropping4
            if values.get(sysctl_name("net", "ipv4", "conf", n, "drop_unicast_in_l2_multicast"))
        ]
    fixes += [f"{sysctl_name('net', 'ipv6', 'conf', n, 'drop_unicast_in_l2_multicast')}=0" for n in dropping6]
    data = {"values": values, "dropping_ipv4": dropping4, "dropping_ipv6": dropping6}
    if dropping4 or dropping6:
        parts = []
        if dropping4:
            parts.append("IPv4 on " + ", ".join(dropping4))
        if dropping6:
            parts.append("IPv6 on " + ", ".join(dropping6))
        return Finding(
            "sysctl.drop_unicast_in_l2_multicast",
            Severity.CRITICAL,
            "relayed PTB copies are dropped on arrival (" + "; ".join(parts) + ")",
            explain,
            _persist(fixes),
            data,
        )
    if default4:
        return Finding(
            "sysctl.drop_unicast_in_l2_multicast",
            Severity.WARNING,
            "net.ipv4.conf.default.drop_unicast_in_l2_multicast=1: "
            "interfaces created from now on will drop relayed copies",
            explain,
            _persist(["net.ipv4.conf.default.drop_unicast_in_l2_multicast=0"]),
            data,
        )
    return Finding("sysctl.drop_unicast_in_l2_multicast", Severity.OK,
                   "relayed copies (L2 broadcast/multicast to a unicast VIP) are accepted", data=data)


# --- rp_filter ----------------------------------------------------------------------------


def check_rp_filter(proc_root, interfaces: Iterable[str] | None = None) -> Finding:
    interfaces = list(interfaces) if interfaces is not None else None
    all_v = read_int(proc_root, "net", "ipv4", "conf", "all", "rp_filter")
    if all_v is None:
        return Finding("sysctl.rp_filter", Severity.INFO, "net.ipv4.conf.all.rp_filter not readable")
    values: dict[str, int | None] = {"net.ipv4.conf.all.rp_filter": all_v}
    strict: list[str] = []
    loose: list[str] = []
    for name in _interfaces(proc_root, "ipv4", interfaces):
        val = read_int(proc_root, "net", "ipv4", "conf", name, "rp_filter")
        values[sysctl_name("net", "ipv4", "conf", name, "rp_filter")] = val
        eff = max(all_v, val or 0)
        if eff == 1:
            strict.append(name)
        elif eff == 2:
            loose.append(name)
    data = {"values": values, "strict": strict, "loose": loose}
    if strict:
        return Finding(
            "sysctl.rp_filter",
            Severity.INFO,
            "strict reverse-path filtering on " + ", ".join(strict) + " (fine for the relay in a symmetric network)",
            "A relayed copy keeps the original PTB's source, the router that sent it; strict rp_filter (1) drops "
            "a packet unless the route back to its source leaves by the interface it arrived on (the kernel uses "
            "max(all, interface)). Copies broadcast on the segment the router is on pass. Peer mode does not "
            "depend on it: the injected PTB enters through lo and skips reverse-path validation (the routed "
            "lab runs with rp_filter=1), and peer datagrams are plain unicast UDP. It matters only with "
            "asymmetric routing: copies or peer datagrams arriving on an interface other than the one their "
            "route back uses are dropped silently (TcpExtIPReversePathFilter rises).",
            "only if TcpExtIPReversePathFilter rises while the relay runs, use loose mode (2) on the interfaces "
            "that receive copies or peer datagrams: "
            + _persist([f"{sysctl_name('net', 'ipv4', 'conf', n, 'rp_filter')}=2" for n in strict]
                       + (["net.ipv4.conf.all.rp_filter=2"] if all_v == 1 else [])),
            data,
        )
    return Finding(
        "sysctl.rp_filter",
        Severity.OK,
        "no strict reverse-path filtering" + (" (loose on " + ", ".join(loose) + ")" if loose else ""),
        data=data,
    )


# --- PMTUD itself -------------------------------------------------------------------------


def check_ip_no_pmtu_disc(proc_root) -> Finding:
    val = read_int(proc_root, "net", "ipv4", "ip_no_pmtu_disc")
    data = {"net.ipv4.ip_no_pmtu_disc": val}
    if val is None:
        return Finding("sysctl.ip_no_pmtu_disc", Severity.INFO, "not readable", data=data)
    fix = _persist(["net.ipv4.ip_no_pmtu_disc=0"])
    if val == 0:
        return Finding("sysctl.ip_no_pmtu_disc", Severity.OK, "IPv4 PMTUD on: DF set and Frag-Needed honoured",
                       data=data)
    if val == 2:
        return Finding(
            "sysctl.ip_no_pmtu_disc", Severity.CRITICAL,
            "net.ipv4.ip_no_pmtu_disc=2: every received Frag-Needed is ignored",
            "Mode 2 discards incoming ICMP Fragmentation Needed messages, relayed copies included, while "
            "the host still sends DF packets: any path with a smaller MTU is a black hole.", fix, data)
    if val == 3:
        return Finding(
            "sysctl.ip_no_pmtu_disc", Severity.INFO,
            "net.ipv4.ip_no_pmtu_disc=3: Frag-Needed honoured only for TCP",
            "Mode 3 accepts Frag-Needed only for protocols that validate the quoted packet (TCP checks the "
            "sequence number); PTBs about UDP and others are ignored, so relaying them has no effect. "
            "Consider `--protocol tcp` for the relay on such hosts.", "", data)
    return Finding(
        "sysctl.ip_no_pmtu_disc", Severity.WARNING,
        f"net.ipv4.ip_no_pmtu_disc={val}: IPv4 PMTUD disabled",
        "The host does not set DF by default, so routers fragment its packets instead of sending PTBs "
        "(fragments are often dropped, and reassembly costs); relayed PTBs have nothing to correct.", fix, data)


def check_tcp_mtu_probing(proc_root) -> Finding:
    probing = read_int(proc_root, "net", "ipv4", "tcp_mtu_probing")
    base = read_int(proc_root, "net", "ipv4", "tcp_base_mss")
    data = {"net.ipv4.tcp_mtu_probing": probing, "net.ipv4.tcp_base_mss": base}
    if probing is None:
        return Finding("sysctl.tcp_mtu_probing", Severity.INFO, "not readable", data=data)
    rfc = (
        "RFC 4821 packetization-layer PMTUD lets TCP recover from black holes no relay can fix "
        "(PTBs filtered upstream, or never sent): after repeated timeouts the connection probes with "
        "smaller segments, starting from tcp_base_mss (RFC 4821 suggests 1024)."
    )
    if probing == 0:
        return Finding(
            "sysctl.tcp_mtu_probing", Severity.INFO,
            "RFC 4821 MTU probing is off (tcp_mtu_probing=0)",
            rfc + " Mode 1 only probes once a black hole is suspected, so it costs nothing on healthy paths; "
            "keep it as a fallback behind the relay.",
            _persist(["net.ipv4.tcp_mtu_probing=1", "net.ipv4.tcp_base_mss=1024"]), data)
    if base is not None and base < 1024:
        return Finding(
            "sysctl.tcp_base_mss", Severity.INFO,
            f"tcp_mtu_probing={probing} but tcp_base_mss={base} (< 1024)",
            rfc + f" A base MSS of {base} makes a connection that fell back crawl with tiny segments.",
            _persist(["net.ipv4.tcp_base_mss=1024"]), data)
    if probing == 2:
        return Finding(
            "sysctl.tcp_mtu_probing", Severity.INFO,
            "tcp_mtu_probing=2: every connection starts at tcp_base_mss and probes upwards",
            rfc + " Mode 2 probes on every connection, which lowers early throughput on good paths; mode 1 "
            "probes only after a black hole is detected.", "", data)
    return Finding("sysctl.tcp_mtu_probing", Severity.OK,
                   f"RFC 4821 fallback on (tcp_mtu_probing={probing}, tcp_base_mss={base})", data=data)


def check_min_pmtu(proc_root) -> Finding:
    val = read_int(proc_root, "net", "ipv4", "route", "min_pmtu")
    data = {"net.ipv4.route.min_pmtu": val}
    if val is None:
        return Finding("sysctl.min_pmtu", Severity.INFO, "net.ipv4.route.min_pmtu not readable", data=data)
    if val < FLOOR_V4:
        return Finding(
            "sysctl.min_pmtu", Severity.WARNING,
            f"net.ipv4.route.min_pmtu={val} is below the default {FLOOR_V4}",
            "The floor bounds how far one PTB (forged, or the recursive-tunnel PMTU collapse) can shrink a "
            "path: below 552 every packet to that destination carries very little payload for "
            "net.ipv4.route.mtu_expires seconds.", _persist([f"net.ipv4.route.min_pmtu={FLOOR_V4}"]), data)
    if val > FLOOR_V4:
        return Finding(
            "sysctl.min_pmtu", Severity.INFO,
            f"net.ipv4.route.min_pmtu={val} (default {FLOOR_V4})",
            f"A PTB announcing less than {val} sets the PMTU to {val} with the 'lock' flag: the kernel then "
            "stops setting DF towards that destination and lets routers fragment. Fine if intended; the "
            f"relay's --floor-v4 (default {FLOOR_V4}) can be raised to match so such PTBs are not relayed.",
            "", data)
    return Finding("sysctl.min_pmtu", Severity.OK, f"net.ipv4.route.min_pmtu={val} (default)", data=data)


def _check_expires(proc_root, family: str) -> Finding:
    val = read_int(proc_root, "net", family, "route", "mtu_expires")
    name = f"net.{family}.route.mtu_expires"
    check = f"sysctl.{family}.mtu_expires"
    data = {name: val}
    if val is None:
        return Finding(check, Severity.INFO, f"{name} not readable", data=data)
    if val < 60:
        return Finding(
            check, Severity.WARNING, f"{name}={val}s: learned PMTUs are forgotten almost at once",
            "When a learned PMTU expires the host goes back to the link MTU, its next large packet is "
            "dropped again and the flow waits for a new PTB: a black-hole episode (and a PTB for the relay "
            "to carry) every few seconds on long flows, and new-connection delays like the IPVS 200 ms story.",
            _persist([f"{name}=600"]), data)
    if val > 3600:
        return Finding(
            check, Severity.INFO, f"{name}={val}s: learned PMTUs persist for a long time",
            "A long lifetime keeps a PMTU that was wrong (forged, a PMTU collapse to the floor, a path that "
            "has since recovered) in force for that long; `ip route flush cache` clears them.",
            "", data)
    return Finding(check, Severity.OK, f"{name}={val}s", data=data)


def check_mtu_expires_v4(proc_root) -> Finding:
    return _check_expires(proc_root, "ipv4")


def check_mtu_expires_v6(proc_root) -> Finding | None:
    if read_sysctl(proc_root, "net", "ipv6", "route", "mtu_expires") is None:
        return None  # IPv6 disabled
    return _check_expires(proc_root, "ipv6")


def check_flowlabel_reflect(proc_root) -> Finding | None:
    val = read_int(proc_root, "net", "ipv6", "flowlabel_reflect")
    if val is None:
        return None
    data = {"net.ipv6.flowlabel_reflect": val}
    if val & 1:
        return Finding("sysctl.flowlabel_reflect", Severity.OK,
                       f"net.ipv6.flowlabel_reflect={val}: established TCP reflects the client's flow label",
                       data=data)
    return Finding(
        "sysctl.flowlabel_reflect", Severity.INFO,
        f"net.ipv6.flowlabel_reflect={val}: replies do not reflect the client's flow label",
        "ECMP routers may hash IPv6 on (source, destination, flow label) (RFC 6438). With reflection "
        "(bit 1) the server's packets carry the same flow label as the client's, so a router that copies "
        "the offending packet's flow label into its PTB (as RFC 7690 suggests) gets the PTB hashed to the "
        "server that owns the flow, without any relay. It helps only where routers do both; the relay "
        "covers the rest. Bits: 1 established TCP, 2 TCP RST, 4 ICMPv6 echo replies.",
        _persist([f"net.ipv6.flowlabel_reflect={val | 1}"]), data)


def check_all(proc_root: str | Path = "/proc", interfaces: Iterable[str] | None = None) -> list[Finding]:
    """Every sysctl check. ``interfaces`` limits per-interface checks (None: all present)."""
    interfaces = list(interfaces) if interfaces is not None else None
    findings = [
        check_drop_unicast_in_l2_multicast(proc_root, interfaces),
        check_rp_filter(proc_root, interfaces),
        check_ip_no_pmtu_disc(proc_root),
        check_tcp_mtu_probing(proc_root),
        check_min_pmtu(proc_root),
        check_mtu_expires_v4(proc_root),
        check_mtu_expires_v6(proc_root),
        check_flowlabel_reflect(proc_root),
    ]
    return [f for f in findings if f is not None]

"""Learned PMTU exceptions: the kernel's route cache (``ip route show cache``).

The dump is an RTM_GETROUTE request with ``RTM_F_CLONED`` per family, the request iproute2
sends, through the daemon's own rtnetlink dump (:func:`pmtud_relay.netlink.rtnl.dump`); the
answers' attributes are read with the shared walker (:mod:`pmtud_relay.netlink.messages`).
Only messages flagged RTM_F_CLONED are exceptions (a non-strict IPv4 dump also returns
ordinary routes).

Like ``ip route show cache``, the kernel lists an IPv4 exception only once a route
lookup has used it since it was learned (traffic to the destination, or ``ip route get``);
a PTB about a destination nobody has sent to since stays invisible to the dump.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from pmtud_relay.doctor.findings import Finding, Severity
from pmtud_relay.doctor.hints import FLOOR_V4, FLOOR_V6, mtu_hint
from pmtud_relay.netlink import rtnl
from pmtud_relay.netlink.messages import RTM_GETROUTE, RTM_NEWROUTE, RTMSG, attributes

RTM_F_CLONED = 0x200
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_METRICS = 8
RTA_CACHEINFO = 12
RTA_TABLE = 15
RTAX_LOCK = 1
RTAX_MTU = 2

_U32 = struct.Struct("=I")
_EXPIRES = struct.Struct("=8xi")  # struct rta_cacheinfo: clntref, lastuse, expires (s32, jiffies), ...

#: How many entries the text listing shows (JSON data carries up to MAX_LISTED).
SHOW = 12
MAX_LISTED = 200


@dataclass(frozen=True)
class CacheEntry:
    family: int  # 4 or 6
    dst: str
    gateway: str | None
    dev: str | None
    table: int
    mtu: int | None
    locked: bool  # MTU locked: a PTB below min_pmtu clamped it
    expires: float | None  # seconds left

    def describe(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        dev = f" dev {self.dev}" if self.dev else ""
        table = f" table {self.table}" if self.table not in (0, 254) else ""
        exp = f" expires {self.expires:.0f}s" if self.expires is not None else ""
        lock = "lock " if self.locked else ""
        return f"{self.dst}{via}{dev}{table}{exp} mtu {lock}{self.mtu}"


def _ifname(index: int | None) -> str | None:
    if not index:
        return None
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"if{index}"


def _u32(data: bytes, start: int, end: int) -> int | None:
    return _U32.unpack_from(data, start)[0] if end - start >= 4 else None


def _address(data: bytes, start: int, end: int, af: int) -> str | None:
    try:
        return socket.inet_ntop(af, bytes(data[start:end]))
    except ValueError:  # not 4 (16) bytes long
        return None


def parse_exception(data: bytes, body: int, end: int, family: int, hz: float) -> CacheEntry | None:
    """The exception in the RTM_NEWROUTE whose body (``rtmsg``) spans data[body:end], or None
    when the route is not one (no RTM_F_CLONED) or too short. Of an attribute given twice the
    first counts."""
    if end - body < RTMSG.size:
        return None
    _af, _dst_len, _src_len, _tos, rtm_table, _proto, _scope, _type, flags = RTMSG.unpack_from(data, body)
    if not flags & RTM_F_CLONED:
        return None
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    found: dict[int, tuple[int, int]] = {}
    for kind, s, e in attributes(data, body + RTMSG.size, end):
        found.setdefault(kind, (s, e))
    mtu = None
    locked = False
    if RTA_METRICS in found:
        metrics: dict[int, tuple[int, int]] = {}
        for kind, s, e in attributes(data, *found[RTA_METRICS]):
            metrics.setdefault(kind, (s, e))
        if RTAX_MTU in metrics:
            mtu = _u32(data, *metrics[RTAX_MTU])
        lock = (_u32(data, *metrics[RTAX_LOCK]) if RTAX_LOCK in metrics else None) or 0
        locked = bool(lock & (1 << RTAX_MTU))
    expires = None
    if RTA_CACHEINFO in found:
        s, e = found[RTA_CACHEINFO]
        raw = _EXPIRES.unpack_from(data, s)[0] if e - s >= _EXPIRES.size else 0
        if raw:
            expires = raw / hz
    dst = (_address(data, *found[RTA_DST], af) if RTA_DST in found else None) or ("0.0.0.0" if family == 4 else "::")
    gateway = _address(data, *found[RTA_GATEWAY], af) if RTA_GATEWAY in found else None
    table = (_u32(data, *found[RTA_TABLE]) if RTA_TABLE in found else None) or rtm_table
    oif = _u32(data, *found[RTA_OIF]) if RTA_OIF in found else None
    return CacheEntry(family, dst, gateway, _ifname(oif), table, mtu, locked, expires)


def dump_exceptions(families: Iterable[int] = (4, 6), timeout: float = 5.0) -> list[CacheEntry]:
    """Every learned exception of the current network namespace, IPv4 then IPv6. A family
    the kernel does not support (IPv6 disabled) has none; any other netlink error is raised
    as an OSError."""
    hz = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
    out: list[CacheEntry] = []
    for fam in families:
        af = socket.AF_INET if fam == 4 else socket.AF_INET6
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, rtnl.NETLINK_ROUTE)
        try:
            sock.settimeout(timeout)
            sock.bind((0, 0))
            try:
                answers = rtnl.dump(RTM_GETROUTE, RTMSG.pack(af, 0, 0, 0, 0, 0, 0, 0, RTM_F_CLONED), sock)
            except rtnl.NetlinkError as exc:
                if exc.errno == errno.EAFNOSUPPORT:  # IPv6 disabled
                    continue
                raise OSError(exc.errno, exc.strerror) from None  # reported as before: "OSError: [Errno N] ..."
        finally:
            sock.close()
        for kind, data, body, end in answers:
            if kind == RTM_NEWROUTE:
                entry = parse_exception(data, body, end, fam, hz)
                if entry is not None:
                    out.append(entry)
    return out


def _mtu_counts(entries: list[CacheEntry]) -> dict[str, int]:
    c = Counter(f"{'v4' if e.family == 4 else 'v6'} {e.mtu}" for e in entries)
    return dict(sorted(c.items(), key=lambda kv: -kv[1]))


def _mtu(e: CacheEntry) -> int:
    """The entry's learned MTU; check() only looks at entries that have one (0 stands for none)."""
    return e.mtu if e.mtu is not None else 0


def check(entries: list[CacheEntry], min_pmtu: int = FLOOR_V4,
          device_mtus: dict[str, int] | None = None) -> list[Finding]:
    """Findings about learned exceptions. ``device_mtus`` maps interface name to MTU."""
    if not entries:
        return [Finding("pmtu_cache", Severity.OK, "no learned PMTU exceptions (route cache is empty)",
                        "IPv4 exceptions are listed once traffic (or `ip route get DST`) has used them; "
                        "`ip route get DST` shows one destination's learned MTU in any case.")]
    device_mtus = device_mtus or {}
    with_mtu = [e for e in entries if e.mtu]
    listed = sorted(with_mtu, key=lambda e: (_mtu(e), e.family, e.dst))
    v4 = sum(1 for e in with_mtu if e.family == 4)
    v6 = len(with_mtu) - v4
    findings = [
        Finding(
            "pmtu_cache",
            Severity.INFO,
            f"{len(with_mtu)} learned PMTU exceptions (IPv4 {v4}, IPv6 {v6}); MTUs: "
            + ", ".join(f"{k} x{n}" for k, n in list(_mtu_counts(with_mtu).items())[:6]),
            "Each entry is a destination this host received a PTB for (ip route show cache; IPv4 entries "
            "appear once traffic has used them); the lowest:\n"
            + "\n".join("  " + e.describe() for e in listed[:SHOW])
            + (f"\n  ... and {len(listed) - SHOW} more" if len(listed) > SHOW else ""),
            "",
            {"count": len(with_mtu), "ipv4": v4, "ipv6": v6, "mtus": _mtu_counts(with_mtu),
             "entries": [asdict(e) for e in listed[:MAX_LISTED]]},
        )
    ]
    floor4 = [e for e in with_mtu if e.family == 4 and (e.locked or _mtu(e) <= min_pmtu)]
    floor6 = [e for e in with_mtu if e.family == 6 and _mtu(e) <= FLOOR_V6]
    collapse_text = (
        "A PMTU at the kernel floor comes from a PTB announcing that little (or less: the kernel clamps to "
        f"net.ipv4.route.min_pmtu={min_pmtu} and locks the MTU). Legitimately tiny paths are rare; the usual "
        "causes are forged PTBs, or a tunnel whose endpoint is routed through the tunnel itself: each "
        "encapsulation lowers the PMTU to the endpoint, which lowers the tunnel's effective MTU, which "
        "lowers it again, until the floor (the GRE recursive-routing story). Look at `ip route get DST` "
        "for each entry."
    )
    if floor4:
        findings.append(Finding(
            "pmtu_cache.floor",
            Severity.WARNING,
            f"{len(floor4)} IPv4 destination(s) at the PMTU floor ({min_pmtu}): "
            + ", ".join(e.dst for e in floor4[:5]) + (" ..." if len(floor4) > 5 else ""),
            collapse_text,
            "route tunnel endpoints over the underlying link (a host route to the endpoint via the physical "
            "interface, or policy routing by the tunnel's source), then clear the learned values with "
            "`ip route flush cache`",
            {"entries": [asdict(e) for e in floor4[:MAX_LISTED]]},
        ))
    if floor6:
        findings.append(Finding(
            "pmtu_cache.floor_v6",
            Severity.INFO,
            f"{len(floor6)} IPv6 destination(s) at the IPv6 minimum MTU 1280: "
            + ", ".join(e.dst for e in floor6[:5]) + (" ..." if len(floor6) > 5 else ""),
            "1280 is the smallest MTU IPv6 allows and what conservative tunnels and some clients announce, "
            "so it is often legitimate; a cluster of them towards one of your own tunnel endpoints is the "
            "recursive-tunnel collapse instead.",
            "",
            {"entries": [asdict(e) for e in floor6[:MAX_LISTED]]},
        ))
    at_link = [e for e in with_mtu if e.dev in device_mtus and _mtu(e) >= device_mtus[e.dev] and not e.locked]
    if at_link:
        findings.append(Finding(
            "pmtu_cache.link_mtu",
            Severity.WARNING,
            f"{len(at_link)} exception(s) with an MTU equal to the device MTU: "
            + ", ".join(f"{e.dst} ({e.mtu} on {e.dev})" for e in at_link[:5]),
            "A PTB that announces the full link MTU means the packet was larger than the link after "
            "something on this host grew it: typically IPsec ESP or a tunnel encapsulating locally, which "
            "then reports the pre-encapsulation MTU (the Wikimedia IPsec Frag-Needed spikes: cache entries "
            "'mtu 1500' overriding the IPsec-aware MTU). It is often accompanied by OutDestUnreachs spikes.",
            "find the encapsulation (ip xfrm policy, tunnels, IPVS tunnel mode); lower the inner MTU or "
            "clamp the MSS (iptables -t mangle -A POSTROUTING -p tcp --tcp-flags SYN,RST SYN -j TCPMSS "
            "--clamp-mss-to-pmtu) and flush the cache",
            {"entries": [asdict(e) for e in at_link[:MAX_LISTED]]},
        ))
    hinted: dict[tuple[int, int, str], list[CacheEntry]] = {}
    for e in with_mtu:
        if e in floor4 or e in floor6 or e in at_link:
            continue
        hint = mtu_hint(_mtu(e), e.family)
        if hint:
            hinted.setdefault((e.family, _mtu(e), hint), []).append(e)
    for (family, mtu, hint), group in sorted(hinted.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        findings.append(Finding(
            "pmtu_cache.encapsulation",
            Severity.INFO,
            f"{len(group)} IPv{family} destination(s) learned MTU {mtu}: {hint}",
            "A PMTU of this size usually comes from an encapsulation on the path (a tunnel adds its headers "
            "and the hop in front of it announces the reduced MTU). If the tunnel is yours (e.g. a load "
            "balancer in IPIP tunnel mode, as in the LVS-Tun MSS story) the senders keep learning it "
            "through PTBs; clamping the MSS at the tunnel avoids the round trips.\n"
            + "\n".join("  " + e.describe() for e in group[:SHOW]),
            "",
            {"family": family, "mtu": mtu, "hint": hint, "entries": [asdict(e) for e in group[:MAX_LISTED]]},
        ))
    return findings

"""``pmtud-relay analyze``: replay a capture through the exact core pipeline, offline.

Every frame of a pcap or pcapng file goes through :meth:`pmtud_relay.core.Relay.handle`
with the capture's timestamps as the clock, so parsing, policy, dedup and rate limits
behave exactly as the daemon would have behaved on that traffic. The report says what
PTBs were seen (per outer source, per MTU, per destination), what would have been
relayed, what was dropped and why, what dedup and the rate limits did with the
capture's timing, and which inner flows were affected.

Link types: Ethernet; Linux cooked captures (SLL and SLL2, e.g. ``tcpdump -i any``),
whose Ethernet header is rebuilt from the recorded packet type; raw IP. VIPs are never
inferred (that would hide ``not_vip`` drops): pass ``--vip`` or say ``--assume-vips``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import struct
import sys
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator

from pmtud_relay import argtypes
from pmtud_relay.core import dedup as _dedup
from pmtud_relay.core import ratelimit as _rl
from pmtud_relay.core.frame import parse_mac
from pmtud_relay.core.packet import ETH_P_IP, ETH_P_IPV6, VLAN_TPIDS
from pmtud_relay.core.policy import (
    DEFAULT_FLOOR_V4,
    DEFAULT_FLOOR_V6,
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
    Policy,
    VipSet,
    protocol_numbers,
)
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Relay, RelayConfig
from pmtud_relay.doctor.hints import mtu_hint
from pmtud_relay.report import decision_record

EXIT_OK = 0
EXIT_ERROR = 1  # unreadable or unsupported capture
EXIT_USAGE = 2  # bad options (argparse uses 2 as well)

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_RAW_ALIASES = (12, 14)  # DLT_RAW as some writers store it
LINKTYPE_NAMES = {
    LINKTYPE_ETHERNET: "ethernet",
    LINKTYPE_RAW: "raw-ip",
    12: "raw-ip",
    14: "raw-ip",
    LINKTYPE_LINUX_SLL: "linux-sll",
    LINKTYPE_LINUX_SLL2: "linux-sll2",
    LINKTYPE_IPV4: "raw-ipv4",
    LINKTYPE_IPV6: "raw-ipv6",
}
SUPPORTED_LINKTYPES = frozenset(LINKTYPE_NAMES)

#: Stand-in MACs for rebuilt Ethernet headers (locally administered, unicast).
HOST_MAC = b"\x02\x00\x00\x00\x00\x01"
OTHER_MAC = b"\x02\x00\x00\x00\x00\x02"
_MCAST_V4 = b"\x01\x00\x5e\x00\x00\x01"
_MCAST_V6 = b"\x33\x33\x00\x00\x00\x01"
_BCAST = b"\xff" * 6
#: Source MAC handed to the core for building copies (the copies are never sent).
_COPY_SRC = b"\x02\x00\x00\x00\x00\xfe"

_U16 = struct.Struct("!H").unpack_from
_SLL = struct.Struct("!HHH8sH")  # pkttype, hatype, halen, addr, protocol
_SLL2 = struct.Struct("!HHIHBB8s")  # protocol, reserved, ifindex, hatype, pkttype, halen, addr

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite", 50: "esp", 47: "gre"}

#: Reasons whose drops are explained in the report's notes.
_REASON_TEXT = {
    Reason.RELAYED: "would be relayed",
    Reason.DUPLICATE: "same router, flow, MTU and quoted sequence already relayed within the dedup window",
    Reason.RATE_LIMITED_SOURCE: "the sending router's token bucket was empty",
    Reason.RATE_LIMITED_GLOBAL: "the global token bucket was empty",
    Reason.NOT_VIP: "quoted source is not a service address",
    Reason.NOT_UNICAST: "arrived as L2 broadcast/multicast: a relayed copy, never relayed again",
    Reason.OTHER_HOST: "unicast to another host's MAC (promiscuous capture)",
    Reason.OWN_FRAME: "sent by this host",
    Reason.DST_NOT_QUOTED_SRC: "sent to an address other than the quoted packet's source",
    Reason.MTU_BELOW_FLOOR: "announced MTU below the floor",
    Reason.MTU_NOT_BELOW_PACKET: "announced MTU not below the quoted packet's length",
    Reason.PROTO_NOT_ALLOWED: "quoted protocol not in --protocol",
    Reason.PORT_NOT_ALLOWED: "quoted source port not in --port",
    Reason.BAD_CHECKSUM: "malformed: checksum does not verify",
    Reason.TOO_SHORT: "malformed: truncated (snap length?)",
    Reason.SHORT_QUOTE: "malformed: quotes too little of the original packet",
    Reason.SHORT_L4_QUOTE: "quotes under 8 bytes past the quoted IP header: no kernel can match it to a socket",
    Reason.BAD_INNER: "malformed: quoted packet is not IP",
    Reason.INNER_ICMP_ERROR: "PTB about an ICMP error: never legitimate",
    Reason.BAD_IP: "malformed outer IP header",
    Reason.BAD_EXT_HEADER: "malformed IPv6 extension headers",
    Reason.FRAGMENT: "outer packet is a fragment",
}


class AnalyzeError(Exception):
    """A capture that cannot be read; the message is for the user."""


# --- reading ---------------------------------------------------------------------------------


@dataclass
class CaptureInfo:
    path: str
    format: str = ""  # pcap / pcapng


def read_capture(path: str, info: CaptureInfo | None = None) -> Iterator[tuple[bytes, float, int, int | None, int]]:
    """Yield (data, timestamp, linktype, pcapng direction or None, wire length) per frame."""
    try:
        from scapy.error import Scapy_Exception
        from scapy.utils import RawPcapNgReader, RawPcapReader
    except ImportError:  # pragma: no cover - scapy is a test dependency
        raise AnalyzeError("analyze needs scapy (pip install scapy) to read captures") from None
    try:
        reader = RawPcapReader(path)
    except FileNotFoundError:
        raise AnalyzeError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise AnalyzeError(f"{path}: is a directory") from None
    except PermissionError:
        raise AnalyzeError(f"{path}: permission denied") from None
    except OSError as exc:
        raise AnalyzeError(f"{path}: {exc.strerror or exc}") from None
    except Scapy_Exception as exc:
        raise AnalyzeError(f"{path}: not a pcap or pcapng capture ({exc})") from None
    with reader:
        if isinstance(reader, RawPcapNgReader):
            if info is not None:
                info.format = "pcapng"
            for data, meta in reader:
                ts = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
                yield data, ts, meta.linktype, meta.direction, meta.wirelen
        else:
            if info is not None:
                info.format = "pcap"
            div = 1e9 if getattr(reader, "nano", False) else 1e6
            linktype = reader.linktype
            for data, meta in reader:
                yield data, meta.sec + meta.usec / div, linktype, None, meta.wirelen


def to_ethernet(data: bytes, linktype: int, host_macs: frozenset[bytes] = frozenset()) -> tuple[bytes, int] | None:
    """(Ethernet frame, Linux packet type) for a captured frame, or None for an unsupported link type.

    Cooked (SLL/SLL2) captures record the packet type; the Ethernet header is rebuilt to
    match it (broadcast/multicast destination for group frames, a stand-in unicast MAC
    otherwise). Raw IP has no link layer: it is treated as unicast to this host.
    """
    if linktype == LINKTYPE_ETHERNET:
        return data, ethernet_pkttype(data, host_macs)
    if linktype == LINKTYPE_LINUX_SLL:
        if len(data) < _SLL.size:
            return b"", PACKET_HOST  # the parser reports too_short
        pkttype, _hatype, halen, addr, proto = _SLL.unpack_from(data)
        payload = data[_SLL.size :]
    elif linktype == LINKTYPE_LINUX_SLL2:
        if len(data) < _SLL2.size:
            return b"", PACKET_HOST
        proto, _res, _ifindex, _hatype, pkttype, halen, addr = _SLL2.unpack_from(data)
        payload = data[_SLL2.size :]
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, *_RAW_ALIASES):
        version = data[0] >> 4 if data else 0
        proto = ETH_P_IPV6 if version == 6 else ETH_P_IP
        dst = next(iter(host_macs)) if host_macs else HOST_MAC
        return dst + OTHER_MAC + struct.pack("!H", proto) + data, PACKET_HOST
    else:
        return None
    if pkttype > PACKET_OUTGOING:  # PACKET_LOOPBACK and friends: looped-back own frames
        pkttype = PACKET_OUTGOING
    src = addr[:6] if halen == 6 else b"\x00" * 6
    if pkttype == PACKET_BROADCAST:
        dst = _BCAST
    elif pkttype == PACKET_MULTICAST:
        dst = _MCAST_V6 if proto == ETH_P_IPV6 else _MCAST_V4
    elif pkttype == PACKET_OTHERHOST:
        dst = OTHER_MAC
    else:
        dst = next(iter(host_macs)) if host_macs else HOST_MAC
    return dst + src + struct.pack("!H", proto) + payload, pkttype


def ethernet_pkttype(frame: bytes, host_macs: frozenset[bytes] = frozenset()) -> int:
    """The packet type a capture socket would have reported for an Ethernet frame.

    Group destination: broadcast/multicast. Otherwise unicast to this host, unless
    ``host_macs`` is given: then frames from one of them are this host's own, and
    frames to any other MAC were seen promiscuously.
    """
    if len(frame) < 12:
        return PACKET_HOST
    if frame[0] & 1:
        return PACKET_BROADCAST if frame[:6] == _BCAST else PACKET_MULTICAST
    if host_macs:
        if frame[6:12] in host_macs:
            return PACKET_OUTGOING
        if frame[:6] not in host_macs:
            return PACKET_OTHERHOST
    return PACKET_HOST


def peek_ptb(frame: bytes) -> tuple[int, bytes, bytes] | None:
    """(family, outer source, outer destination) if ``frame`` claims to be a PTB by its type fields alone.

    Used only to tell malformed PTBs (bad checksum, truncated, ...) from other traffic
    among the frames the core's parser rejected.
    """
    n = len(frame)
    if n < 14:
        return None
    (ethertype,) = _U16(frame, 12)
    off, tags = 14, 0
    while ethertype in VLAN_TPIDS and tags < 2 and n >= off + 4:
        (ethertype,) = _U16(frame, off + 2)
        off += 4
        tags += 1
    if ethertype == ETH_P_IP:
        if n < off + 20 or frame[off] >> 4 != 4:
            return None
        ihl = (frame[off] & 0x0F) << 2
        if ihl < 20 or frame[off + 9] != 1 or _U16(frame, off + 6)[0] & 0x1FFF or n < off + ihl + 2:
            return None
        if frame[off + ihl] == 3 and frame[off + ihl + 1] == 4:
            return 4, frame[off + 12 : off + 16], frame[off + 16 : off + 20]
    elif ethertype == ETH_P_IPV6:
        if n >= off + 42 and frame[off] >> 4 == 6 and frame[off + 6] == 58 and frame[off + 40] == 2 and frame[off + 41] == 0:
            return 6, frame[off + 8 : off + 24], frame[off + 24 : off + 40]
    return None


# --- accounting ------------------------------------------------------------------------------


def _ip(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


@dataclass
class _Tally:
    ptbs: int = 0
    relayed: int = 0
    reasons: Counter = field(default_factory=Counter)
    mtus: Counter = field(default_factory=Counter)
    first: float | None = None
    last: float | None = None
    window: deque = field(default_factory=deque)
    peak: int = 0

    def add(self, reason: Reason, now: float, mtu: int | None = None) -> None:
        self.ptbs += 1
        if reason is Reason.RELAYED:
            self.relayed += 1
        else:
            self.reasons[reason.value] += 1
        if mtu is not None:
            self.mtus[mtu] += 1
        if self.first is None:
            self.first = now
        self.last = now
        w = self.window
        w.append(now)
        while w and now - w[0] >= 1.0:
            w.popleft()
        if len(w) > self.peak:
            self.peak = len(w)


def _sorted_counts(counter: Counter) -> dict:
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0]))))


class Analyzer:
    """Feed frames in capture order with :meth:`feed`; read :meth:`result`."""

    def __init__(self, config: RelayConfig, host_macs: frozenset[bytes] = frozenset(), top: int = 10,
                 keep_decisions: bool = False):
        self.config = config
        self.host_macs = host_macs
        self.top = top
        self.keep_decisions = keep_decisions
        self.relay: Relay | None = None
        self.frames = 0
        self.truncated = 0
        self.truncated_ptbs = 0
        self.linktypes: Counter = Counter()
        self.unsupported: Counter = Counter()
        self.start: float | None = None
        self.end: float | None = None
        self.now: float | None = None
        self.backwards = 0
        self.verdicts: Counter = Counter()
        self.families: Counter = Counter()
        self.malformed = 0
        self.other: Counter = Counter()
        self.all_ptbs = _Tally()
        self.sources: dict[str, _Tally] = {}
        self.mtus: dict[tuple[int, int], _Tally] = {}
        self.destinations: dict[str, _Tally] = {}
        self.flows: dict[tuple, _Tally] = {}
        self.not_vip_sources: Counter = Counter()
        self.first_at: dict[str, float] = {}
        self.decisions: list[dict] = []

    def feed(self, data: bytes, ts: float, linktype: int, direction: int | None = None,
             wirelen: int | None = None) -> None:
        self.frames += 1
        self.linktypes[linktype] += 1
        truncated = wirelen is not None and wirelen > len(data)
        if truncated:
            self.truncated += 1
        if self.start is None:
            self.start = self.end = self.now = ts
            self.relay = Relay(self.config, now=ts)
        if ts < self.now:
            self.backwards += 1  # merged or reordered capture: keep the clock monotonic
        else:
            self.now = ts
        self.end = max(self.end, ts)
        now = self.now
        adapted = to_ethernet(data, linktype, self.host_macs)
        if adapted is None:
            self.unsupported[linktype] += 1
            return
        frame, pkttype = adapted
        if direction == 2:  # pcapng: outbound
            pkttype = PACKET_OUTGOING
        decision = self.relay.handle(frame, now, _COPY_SRC, pkttype)
        reason = decision.reason
        ptb = decision.ptb
        if ptb is None:
            peek = peek_ptb(frame)
            if peek is None:
                self.other[reason.value] += 1
                return
            family, outer_src, outer_dst = peek
            self.malformed += 1
            if truncated:
                self.truncated_ptbs += 1
            self._count(reason, now, family, _ip(outer_src), _ip(outer_dst), None, None)
            if self.keep_decisions:
                rec = decision_record(decision)
                rec.update(family=family, outer_src=_ip(outer_src), outer_dst=_ip(outer_dst))
                self.decisions.append({"at": round(now - self.start, 6), **rec})
            return
        if truncated:
            self.truncated_ptbs += 1
        flow = (ptb.family, ptb.inner_src, ptb.sport, ptb.inner_dst, ptb.dport, ptb.proto)
        self._count(reason, now, ptb.family, _ip(ptb.outer_src), _ip(ptb.outer_dst), ptb.mtu, flow)
        if reason is Reason.NOT_VIP:
            self.not_vip_sources[_ip(ptb.inner_src)] += 1
        if self.keep_decisions:
            self.decisions.append({"at": round(now - self.start, 6), **decision_record(decision)})

    def _count(self, reason, now, family, source, destination, mtu, flow) -> None:
        self.verdicts[reason.value] += 1
        self.families[family] += 1
        self.first_at.setdefault(reason.value, now - self.start)
        self.all_ptbs.add(reason, now, mtu)
        self.sources.setdefault(source, _Tally()).add(reason, now, mtu)
        if mtu is not None:
            self.mtus.setdefault((family, mtu), _Tally()).add(reason, now)
        if destination is not None:
            self.destinations.setdefault(destination, _Tally()).add(reason, now)
        if flow is not None:
            self.flows.setdefault(flow, _Tally()).add(reason, now, mtu)

    # -- report -----------------------------------------------------------------------------

    def _at(self, ts: float | None) -> float | None:
        return None if ts is None or self.start is None else round(ts - self.start, 6)

    def result(self, path: str = "", fmt: str = "") -> dict:
        c = self.config
        p = c.policy
        seen = self.all_ptbs.ptbs
        relayed = self.all_ptbs.relayed
        vips: list[str] | str = [str(n) for n in p.vips.networks]
        if vips == ["0.0.0.0/0", "::/0"]:
            vips = "any"
        reasons = Counter({k: v for k, v in self.verdicts.items()})
        ordered = {}
        if Reason.RELAYED.value in reasons:
            ordered[Reason.RELAYED.value] = reasons.pop(Reason.RELAYED.value)
        ordered.update(_sorted_counts(reasons))

        def iso(ts):
            return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds")

        sources = [
            {"source": s, "ptbs": t.ptbs, "relayed": t.relayed, "dropped": _sorted_counts(t.reasons),
             "mtus": {str(k): v for k, v in _sorted_counts(t.mtus).items()}, "peak_per_second": t.peak,
             "first_at": self._at(t.first), "last_at": self._at(t.last)}
            for s, t in sorted(self.sources.items(), key=lambda kv: (-kv[1].ptbs, kv[0]))
        ]
        mtus = [
            {"family": fam, "mtu": mtu, "ptbs": t.ptbs, "relayed": t.relayed, "dropped": _sorted_counts(t.reasons),
             "hint": mtu_hint(mtu, fam)}
            for (fam, mtu), t in sorted(self.mtus.items(), key=lambda kv: (-kv[1].ptbs, kv[0]))
        ]
        destinations = [
            {"destination": d, "ptbs": t.ptbs, "relayed": t.relayed, "dropped": _sorted_counts(t.reasons)}
            for d, t in sorted(self.destinations.items(), key=lambda kv: (-kv[1].ptbs, kv[0]))
        ]
        flows_sorted = sorted(self.flows.items(), key=lambda kv: (-kv[1].ptbs, kv[1].first, kv[0]))
        without = [t for _, t in flows_sorted if t.relayed == 0]
        without_by_reason: Counter = Counter()
        for t in without:
            without_by_reason[t.reasons.most_common(1)[0][0] if t.reasons else "unknown"] += 1
        top = [self._flow_record(k, t) for k, t in flows_sorted[: self.top]]
        out = {
            "capture": {
                "file": path,
                "format": fmt,
                "linktypes": {LINKTYPE_NAMES.get(k, str(k)): v for k, v in sorted(self.linktypes.items())},
                "frames": self.frames,
                "truncated_frames": self.truncated,
                "unsupported_frames": {str(k): v for k, v in sorted(self.unsupported.items())},
                "start": iso(self.start),
                "end": iso(self.end),
                "duration": round(self.end - self.start, 6) if self.start is not None else 0.0,
                "timestamps_backwards": self.backwards,
            },
            "config": {
                "vips": vips,
                "floor_v4": p.floor_v4,
                "floor_v6": p.floor_v6,
                "protocols": sorted(p.protocols) if p.protocols is not None else None,
                "ports": sorted(p.ports) if p.ports is not None else None,
                "dedup_window": c.dedup_window,
                "source_rate": c.source_rate,
                "source_burst": c.source_burst,
                "global_rate": c.global_rate,
                "global_burst": c.global_burst,
                "host_macs": sorted(":".join(f"{b:02x}" for b in m) for m in self.host_macs),
            },
            "ptbs": {
                "seen": seen,
                "relayed": relayed,
                "dropped": seen - relayed,
                "ipv4": self.families.get(4, 0),
                "ipv6": self.families.get(6, 0),
                "malformed": self.malformed,
                "reasons": ordered,
            },
            "timing": {
                "peak_ptbs_per_second": self.all_ptbs.peak,
                "first_at": {k: round(v, 6) for k, v in sorted(self.first_at.items(), key=lambda kv: kv[1])},
            },
            "sources": sources,
            "mtus": mtus,
            "destinations": destinations,
            "flows": {
                "count": len(self.flows),
                "with_relay": len(self.flows) - len(without),
                "without_relay": len(without),
                "without_relay_by_reason": _sorted_counts(without_by_reason),
                "top": top,
            },
            "other_frames": {"count": sum(self.other.values()), "reasons": _sorted_counts(self.other)},
            "notes": self._notes(seen),
        }
        if self.keep_decisions:
            out["decisions"] = self.decisions
        return out

    def _flow_record(self, key, t: _Tally) -> dict:
        family, src, sport, dst, dport, proto = key
        s, d = _ip(src), _ip(dst)

        def ep(addr, port):
            if port < 0:
                return addr
            return f"[{addr}]:{port}" if family == 6 else f"{addr}:{port}"

        return {
            "flow": f"{ep(s, sport)} > {ep(d, dport)} {PROTO_NAMES.get(proto, str(proto))}",
            "family": family, "proto": proto, "src": s, "sport": sport if sport >= 0 else None,
            "dst": d, "dport": dport if dport >= 0 else None,
            "ptbs": t.ptbs, "relayed": t.relayed, "dropped": _sorted_counts(t.reasons),
            "mtus": sorted(t.mtus), "first_at": self._at(t.first), "last_at": self._at(t.last),
        }

    def _notes(self, seen: int) -> list[str]:
        v = self.verdicts
        c = self.config
        notes: list[str] = []
        if self.frames == 0:
            notes.append("the capture holds no frames")
        elif seen == 0:
            notes.append("no PTBs in the capture; capture them with e.g. "
                         "tcpdump -s 0 -w ptb.pcap '(icmp[0]=3 and icmp[1]=4) or (icmp6 and ip6[40]=2)'")
        if self.unsupported:
            kinds = ", ".join(f"link type {k} ({n} frames)" for k, n in sorted(self.unsupported.items()))
            notes.append(f"unsupported link layer skipped: {kinds}; supported: Ethernet, Linux cooked "
                         "(SLL/SLL2, tcpdump -i any) and raw IP")
        if self.truncated:
            notes.append(f"{self.truncated} frames were cut by the capture's snap length ({self.truncated_ptbs} "
                         "of them PTBs); the core needs the whole PTB to verify it: capture with -s 0")
        if v.get(Reason.NOT_VIP.value):
            top = ", ".join(f"{a} x{n}" for a, n in self.not_vip_sources.most_common(3))
            notes.append(f"{v[Reason.NOT_VIP.value]} PTBs quote a source outside the VIPs ({top}): "
                         "add those prefixes with --vip if they are service addresses")
        if v.get(Reason.DUPLICATE.value):
            notes.append(f"dedup suppressed {v[Reason.DUPLICATE.value]} PTBs repeating a (router, flow, MTU, "
                         f"quoted sequence) already relayed within {c.dedup_window:g} s")
        rls, rlg = v.get(Reason.RATE_LIMITED_SOURCE.value, 0), v.get(Reason.RATE_LIMITED_GLOBAL.value, 0)
        if rls or rlg:
            peak = max(self.sources.items(), key=lambda kv: kv[1].peak)
            notes.append(
                f"rate limits held back {rls + rlg} PTBs (per source {rls} at {c.source_rate:g}/s burst "
                f"{c.source_burst:g}; global {rlg} at {c.global_rate:g}/s burst {c.global_burst:g}); the busiest "
                f"source {peak[0]} peaked at {peak[1].peak} PTBs in one second. A held-back PTB reaches the "
                "owner on the sender's retransmission, once tokens refill")
        if v.get(Reason.NOT_UNICAST.value):
            notes.append(f"{v[Reason.NOT_UNICAST.value]} PTBs arrived as L2 broadcast/multicast: copies made by a "
                         "relay; they are delivered to their owner, never relayed again")
        if v.get(Reason.MTU_BELOW_FLOOR.value):
            notes.append(f"{v[Reason.MTU_BELOW_FLOOR.value]} PTBs announced an MTU below the floor "
                         f"({c.policy.floor_v4}/{c.policy.floor_v6}): forged, or a PMTU collapse upstream")
        if self.backwards:
            notes.append(f"timestamps went backwards {self.backwards} times (merged capture?); the clock was held "
                         "at the latest time seen")
        return notes


# --- text rendering --------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list], indent: str = "  ") -> list[str]:
    cells = [[str(x) for x in headers]] + [["" if x is None else str(x) for x in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(r[i].replace(".", "", 1).isdigit() or not r[i] for r in cells[1:]) for i in range(len(headers))]
    out = []
    for r in cells:
        parts = []
        for i, (cell, w) in enumerate(zip(r, widths)):
            last = i == len(widths) - 1
            if numeric[i] and not last:
                parts.append(cell.rjust(w))
            else:
                parts.append(cell if last else cell.ljust(w))
        out.append((indent + "  ".join(parts)).rstrip())
    return out


def _reasons_text(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def render_text(res: dict, top: int = 10) -> str:
    cap, cfg, ptbs = res["capture"], res["config"], res["ptbs"]
    lines = []
    kinds = ", ".join(f"{k} {v}" for k, v in cap["linktypes"].items()) or "-"
    lines.append(f"capture   {cap['file']} ({cap['format'] or '?'}; {kinds}): {cap['frames']} frames")
    if cap["start"]:
        lines.append(f"time      {cap['start']} .. {cap['end']} ({cap['duration']:.3f} s)")
    vips = cfg["vips"] if isinstance(cfg["vips"], str) else ", ".join(cfg["vips"]) or "(none)"
    lines.append(f"policy    VIPs {vips}; floors {cfg['floor_v4']}/{cfg['floor_v6']}"
                 + (f"; protocols {cfg['protocols']}" if cfg["protocols"] else "")
                 + (f"; ports {cfg['ports']}" if cfg["ports"] else ""))
    lines.append(f"limits    dedup {cfg['dedup_window']:g} s; per source {cfg['source_rate']:g}/s burst "
                 f"{cfg['source_burst']:g}; global {cfg['global_rate']:g}/s burst {cfg['global_burst']:g}")
    lines.append("")
    lines.append(f"PTBs: {ptbs['seen']} seen (IPv4 {ptbs['ipv4']}, IPv6 {ptbs['ipv6']}): "
                 f"{ptbs['relayed']} would be relayed, {ptbs['dropped']} dropped")
    rows = []
    for reason, n in ptbs["reasons"].items():
        text = _REASON_TEXT.get(Reason(reason), "")
        first = res["timing"]["first_at"].get(reason)
        rows.append([reason, n, f"{first:.3f}" if first is not None else "", text])
    if rows:
        lines += _table(["verdict", "PTBs", "first at s", "meaning"], rows)
    lines.append(f"  peak: {res['timing']['peak_ptbs_per_second']} PTBs within one second")
    if res["sources"]:
        lines.append("")
        lines.append("by outer source (the hop that sent the PTB)")
        lines += _table(
            ["source", "PTBs", "relayed", "peak/s", "MTUs", "dropped"],
            [[s["source"], s["ptbs"], s["relayed"], s["peak_per_second"], " ".join(s["mtus"]) or "-",
              _reasons_text(s["dropped"])] for s in res["sources"][:top]],
        )
        if len(res["sources"]) > top:
            lines.append(f"  ... {len(res['sources']) - top} more sources")
    if res["mtus"]:
        lines.append("")
        lines.append("by announced MTU")
        lines += _table(
            ["MTU", "family", "PTBs", "relayed", "dropped", "hint"],
            [[m["mtu"], f"IPv{m['family']}", m["ptbs"], m["relayed"], _reasons_text(m["dropped"]), m["hint"] or ""]
             for m in res["mtus"][:top]],
        )
    if res["destinations"]:
        lines.append("")
        lines.append("by destination (the address the PTB was sent to)")
        lines += _table(["destination", "PTBs", "relayed", "dropped"],
                        [[d["destination"], d["ptbs"], d["relayed"], _reasons_text(d["dropped"])]
                         for d in res["destinations"][:top]])
    fl = res["flows"]
    lines.append("")
    lines.append(f"inner flows affected: {fl['count']} ({fl['with_relay']} with a relayed PTB, "
                 f"{fl['without_relay']} without"
                 + (": " + _reasons_text(fl["without_relay_by_reason"]) if fl["without_relay"] else "") + ")")
    if fl["top"]:
        lines += _table(["flow", "PTBs", "relayed", "MTUs", "dropped"],
                        [[f["flow"], f["ptbs"], f["relayed"], " ".join(map(str, f["mtus"])),
                          _reasons_text(f["dropped"])] for f in fl["top"]])
        if fl["count"] > len(fl["top"]):
            lines.append(f"  ... {fl['count'] - len(fl['top'])} more flows")
    other = res["other_frames"]
    lines.append("")
    lines.append(f"other frames: {other['count']}" + (f" ({_reasons_text(other['reasons'])})" if other["count"] else ""))
    if res["notes"]:
        lines.append("")
        lines.append("notes")
        lines += [f"  - {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


# --- command line ----------------------------------------------------------------------------


def _mac(text: str) -> bytes:
    try:
        return parse_mac(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("file", metavar="FILE", help="capture file: pcap or pcapng (gzip-compressed is fine)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--top", type=argtypes.positive_int, default=10, metavar="N",
                   help="rows per table and inner flows listed (default %(default)s)")
    p.add_argument("--list", action="store_true", dest="list_decisions",
                   help="also list every PTB decision (text: logfmt lines; JSON: a 'decisions' array)")
    g = p.add_argument_group("service addresses (one of these is required)")
    vg = g.add_mutually_exclusive_group(required=True)
    vg.add_argument("--vip", "--vips", action="append", type=argtypes.prefix, dest="vips", metavar="PREFIX",
                    help="service address or prefix (repeatable), as for run")
    vg.add_argument("--assume-vips", action="store_true",
                    help="treat every quoted source as a VIP (no not_vip drops: use only to see what the "
                         "other stages would do)")
    g = p.add_argument_group("policy (as for run)")
    g.add_argument("--floor-v4", type=int, default=DEFAULT_FLOOR_V4, metavar="BYTES",
                   help="lowest IPv4 MTU relayed (default %(default)s)")
    g.add_argument("--floor-v6", type=int, default=DEFAULT_FLOOR_V6, metavar="BYTES",
                   help="lowest IPv6 MTU relayed (default %(default)s)")
    g.add_argument("--protocol", "--protocols", action="append", dest="protocols", metavar="NAME",
                   help="relay only PTBs quoting this protocol: tcp, udp, sctp, udplite, icmp or a number (repeatable)")
    g.add_argument("--port", "--ports", action="append", type=argtypes.port, dest="ports", metavar="PORT",
                   help="relay only PTBs quoting this source (service) port (repeatable)")
    g.add_argument("--host-mac", action="append", type=_mac, dest="host_macs", metavar="MAC",
                   help="MAC(s) of the capturing host: Ethernet frames from it count as its own, frames to "
                        "other unicast MACs as seen promiscuously (default: every unicast frame is for this host)")
    g = p.add_argument_group("dedup and rate limits (as for run)")
    g.add_argument("--dedup-window", type=argtypes.non_negative_float, default=_dedup.DEFAULT_WINDOW, metavar="SECONDS",
                   help="relay the same PTB (router, flow, MTU, quoted sequence) once per window (default %(default)s)")
    g.add_argument("--dedup-capacity", type=argtypes.positive_int, default=_dedup.DEFAULT_CAPACITY, metavar="KEYS",
                   help="dedup table size (default %(default)s)")
    g.add_argument("--source-rate", type=argtypes.positive_float, default=_rl.DEFAULT_SOURCE_RATE, metavar="PPS",
                   help="PTBs per second relayed per sending router (default %(default)s)")
    g.add_argument("--source-burst", type=argtypes.burst, default=_rl.DEFAULT_SOURCE_BURST, metavar="N",
                   help="per-source burst (default %(default)s)")
    g.add_argument("--global-rate", type=argtypes.positive_float, default=_rl.DEFAULT_GLOBAL_RATE, metavar="PPS",
                   help="PTBs per second relayed in total (default %(default)s)")
    g.add_argument("--global-burst", type=argtypes.burst, default=_rl.DEFAULT_GLOBAL_BURST, metavar="N",
                   help="global burst (default %(default)s)")
    g.add_argument("--source-capacity", type=argtypes.positive_int, default=_rl.DEFAULT_SOURCE_CAPACITY, metavar="N",
                   help="sources tracked by the per-source limiter (default %(default)s)")
    p.set_defaults(handler=main)
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``analyze`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "analyze",
        help="replay a pcap/pcapng capture through the relay's decisions, offline",
        description="Run every frame of a capture through the relay's core (parser, policy, dedup, rate "
        "limits) with the capture's timestamps as the clock, and report what would have been relayed, what "
        "dropped and why, per source, per MTU and per inner flow. Nothing is sent.",
    )
    return configure_parser(p)


def relay_config(args: argparse.Namespace) -> RelayConfig:
    """Core configuration from the options; ValueError names the option at fault."""
    try:
        protocols = protocol_numbers(args.protocols) if args.protocols else None
    except ValueError as exc:
        raise ValueError(f"--protocol: {exc}") from None
    vips = VipSet(["0.0.0.0/0", "::/0"]) if args.assume_vips else VipSet(args.vips or ())
    try:
        policy = Policy(vips=vips, floor_v4=args.floor_v4, floor_v6=args.floor_v6, protocols=protocols,
                        ports=frozenset(args.ports) if args.ports else None)
    except ValueError as exc:
        text = str(exc)
        option = "--floor-v4" if "floor_v4" in text else "--floor-v6" if "floor_v6" in text else "--port"
        raise ValueError(f"{option}: {exc}") from None
    return RelayConfig(
        policy=policy,
        dedup_window=args.dedup_window,
        dedup_capacity=args.dedup_capacity,
        source_rate=args.source_rate,
        source_burst=args.source_burst,
        global_rate=args.global_rate,
        global_burst=args.global_burst,
        source_capacity=args.source_capacity,
    )


def analyze_file(path: str, config: RelayConfig, host_macs=frozenset(), top: int = 10,
                 keep_decisions: bool = False) -> dict:
    """Analyse ``path`` and return the report as a JSON-ready dict (AnalyzeError if unreadable)."""
    info = CaptureInfo(path)
    analyzer = Analyzer(config, frozenset(host_macs), top, keep_decisions)
    for data, ts, linktype, direction, wirelen in read_capture(path, info):
        analyzer.feed(data, ts, linktype, direction, wirelen)
    return analyzer.result(path, info.format)


def main(args: argparse.Namespace) -> int:
    try:
        config = relay_config(args)
    except ValueError as exc:
        print(f"pmtud-relay analyze: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        res = analyze_file(args.file, config, frozenset(args.host_macs or ()), args.top, args.list_decisions)
    except AnalyzeError as exc:
        print(f"pmtud-relay analyze: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(res, indent=2))
        return EXIT_OK
    sys.stdout.write(render_text(res, args.top))
    if args.list_decisions:
        from pmtud_relay.report import logfmt

        print("\ndecisions")
        for rec in res["decisions"]:
            print(logfmt(rec))
    return EXIT_OK


def cli(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m pmtud_relay.analyze``) until the CLI wiring lands."""
    parser = configure_parser(argparse.ArgumentParser(prog="pmtud-relay analyze"))
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(cli())

"""The analysis of ``pmtud-relay analyze``: every frame through the core's
:meth:`~pmtud_relay.core.relay.Relay.handle` with the capture's timestamps as the clock, so
parsing, policy, dedup and rate limits behave exactly as the daemon would have on that
traffic; the verdicts tallied per outer source, MTU, destination and inner flow, and the
result as a JSON-ready dict with notes that explain the drops.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pmtud_relay.analyze.capture import LINKTYPE_NAMES, to_ethernet
from pmtud_relay.analyze.claims import claimed_ptb
from pmtud_relay.core.policy import PACKET_OUTGOING
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Relay, RelayConfig
from pmtud_relay.doctor.hints import mtu_hint
from pmtud_relay.report import decision_record

#: Source MAC handed to the core for building copies (the copies are never sent).
_COPY_SRC = b"\x02\x00\x00\x00\x00\xfe"

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite", 50: "esp", 47: "gre"}


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
        if self.relay is None:
            self.start = self.end = self.now = ts
            self.relay = Relay(self.config, now=ts)
        start, relay = self.start or 0.0, self.relay  # set by the first frame
        now = self.now if self.now is not None else ts
        if ts < now:
            self.backwards += 1  # merged or reordered capture: keep the clock monotonic
        else:
            self.now = now = ts
        self.end = ts if self.end is None else max(self.end, ts)
        adapted = to_ethernet(data, linktype, self.host_macs)
        if adapted is None:
            self.unsupported[linktype] += 1
            return
        frame, pkttype = adapted
        if direction == 2:  # pcapng: outbound
            pkttype = PACKET_OUTGOING
        decision = relay.handle(frame, now, _COPY_SRC, pkttype)
        reason = decision.reason
        ptb = decision.ptb
        if ptb is None:
            claim = claimed_ptb(frame)  # a malformed PTB, or other traffic?
            if claim is None:
                self.other[reason.value] += 1
                return
            family, l3 = claim
            if family == 4:
                outer_src, outer_dst = frame[l3 + 12 : l3 + 16], frame[l3 + 16 : l3 + 20]
            else:
                outer_src, outer_dst = frame[l3 + 8 : l3 + 24], frame[l3 + 24 : l3 + 40]
            self.malformed += 1
            if truncated:
                self.truncated_ptbs += 1
            self._count(reason, now, family, _ip(outer_src), _ip(outer_dst), None, None)
            if self.keep_decisions:
                rec = decision_record(decision)
                rec.update(family=family, outer_src=_ip(outer_src), outer_dst=_ip(outer_dst))
                self.decisions.append({"at": round(now - start, 6), **rec})
            return
        if truncated:
            self.truncated_ptbs += 1
        flow = (ptb.family, ptb.inner_src, ptb.sport, ptb.inner_dst, ptb.dport, ptb.proto)
        self._count(reason, now, ptb.family, _ip(ptb.outer_src), _ip(ptb.outer_dst), ptb.mtu, flow)
        if reason is Reason.NOT_VIP:
            self.not_vip_sources[_ip(ptb.inner_src)] += 1
        if self.keep_decisions:
            self.decisions.append({"at": round(now - start, 6), **decision_record(decision)})

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
                "duration": 0.0 if self.start is None or self.end is None else round(self.end - self.start, 6),
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



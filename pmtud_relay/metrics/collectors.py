"""The custom collectors, read at scrape time, and the private registry that holds them.

:class:`RelayCollector` turns a :class:`~pmtud_relay.metrics.counters.Stats` and the live
relay into metric families; :class:`SelfProcessCollector` gives the process_* metrics
without ``/proc/self/stat``. :func:`build_registry` puts them in a registry of their own,
never prometheus_client's global default one.
"""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable

from prometheus_client import CollectorRegistry  # type: ignore[import-not-found, unused-ignore]
from prometheus_client.core import (  # type: ignore[import-not-found, unused-ignore]
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

from pmtud_relay import __version__
from pmtud_relay.core.reasons import PARSE_REASONS, Reason
from pmtud_relay.metrics.counters import Stats

if TYPE_CHECKING:
    from pmtud_relay.core.relay import Relay

PREFIX = "pmtud_relay"


FAMILY_LABEL = {4: "ipv4", 6: "ipv6", 0: "unknown"}
_DROP_REASONS = tuple(r for r in Reason if r is not Reason.RELAYED)


# -- the collector --------------------------------------------------------------------------


class RelayCollector:
    """Builds metric families from a :class:`Stats` and the live relay at scrape time.

    ``relay`` returns the daemon's current :class:`pmtud_relay.core.Relay` (or None); its
    dedup table, rate limiter and policy are read for the table-size gauges.
    ``log_dropped`` returns the count of log lines dropped by the non-blocking log writer.
    """

    def __init__(self, stats: Stats, relay: Callable[[], Relay | None] | None = None,
                 log_dropped: Callable[[], int] | None = None, version: str = __version__):
        self.stats = stats
        self.relay = relay or (lambda: None)
        self.log_dropped = log_dropped
        self.version = version

    def describe(self) -> list[Any]:
        return []  # registration must not run collect()

    def collect(self) -> Iterator[Any]:
        s = self.stats
        s.poll_overruns()
        decisions = s.decisions.copy()  # one C-level copy: safe against concurrent updates
        p = PREFIX

        received = CounterMetricFamily(f"{p}_ptb_received", "Frames the capture delivered (PTB candidates), "
                                       "by interface and address family; = relayed + dropped.",
                                       labels=["interface", "family"])
        relayed = CounterMetricFamily(f"{p}_ptb_relayed", "PTBs relayed (copies sent, or that "
                                      "would be sent in dry-run).", labels=["interface", "family"])
        dropped = CounterMetricFamily(f"{p}_ptb_dropped", "Frames not relayed, by reason "
                                      "(the closed set of pmtud_relay.core.reasons.Reason).",
                                      labels=["interface", "family", "reason"])
        rx: dict[tuple[str, str], int] = {}
        rel: dict[tuple[str, str], int] = {}
        drop: dict[tuple[str, str, str], int] = {}
        for ifname in s.interfaces:
            for fam in ("ipv4", "ipv6"):
                rx[(ifname, fam)] = 0
                rel[(ifname, fam)] = 0
            for dropped_for in _DROP_REASONS:
                fams = ("unknown",) if dropped_for in PARSE_REASONS else ("ipv4", "ipv6")
                for fam in fams:
                    drop[(ifname, fam, dropped_for.value)] = 0
        limited = {"source": 0, "global": 0}
        deduplicated = 0
        for (ifname, family, reason), n in decisions.items():
            fam = FAMILY_LABEL.get(family, "unknown")
            rx[(ifname, fam)] = rx.get((ifname, fam), 0) + n
            if reason is Reason.RELAYED:
                rel[(ifname, fam)] = rel.get((ifname, fam), 0) + n
                continue
            drop[(ifname, fam, reason.value)] = drop.get((ifname, fam, reason.value), 0) + n
            if reason is Reason.RATE_LIMITED_SOURCE:
                limited["source"] += n
            elif reason is Reason.RATE_LIMITED_GLOBAL:
                limited["global"] += n
            elif reason is Reason.DUPLICATE:
                deduplicated += n
        for (ifname, fam), n in sorted(rx.items()):
            received.add_metric([ifname, fam], n)
        for (ifname, fam), n in sorted(rel.items()):
            relayed.add_metric([ifname, fam], n)
        for labels, n in sorted(drop.items()):
            dropped.add_metric(list(labels), n)
        yield received
        yield relayed
        yield dropped

        rl = CounterMetricFamily(f"{p}_ptb_rate_limited", "PTBs dropped by a rate limit, by bucket "
                                 "(source: per sending router; global: all relayed PTBs).", labels=["bucket"])
        for bucket in ("source", "global"):
            rl.add_metric([bucket], limited[bucket])
        yield rl
        yield CounterMetricFamily(f"{p}_ptb_deduplicated", "PTBs dropped as duplicates of one relayed "
                                  "within dedup_window.", value=deduplicated)

        se = CounterMetricFamily(f"{p}_send_errors", "Copies the kernel refused to send, by "
                                 "interface and errno name.", labels=["interface", "errno"])
        for (ifname, name), n in sorted(s.send_errors.copy().items()):
            se.add_metric([ifname, name], n)
        yield se
        ov = CounterMetricFamily(f"{p}_capture_overruns", "Frames the kernel dropped before the "
                                 "daemon read them (capture buffer full).", labels=["interface"])
        overruns = dict.fromkeys(s.interfaces, 0)
        overruns.update(s.overruns)
        for ifname, n in sorted(overruns.items()):
            ov.add_metric([ifname], n)
        yield ov
        cf = CounterMetricFamily(f"{p}_capture_faults", "AF_PACKET capture events that are not PTB "
                                 "decisions: frames larger than a ring slot (truncated) and ring "
                                 "resynchronisations (ring_resync: the reader's slot stayed empty while "
                                 "later slots held frames).", labels=["interface", "kind"])
        for (ifname, kind), n in sorted(s.capture_totals().items()):
            cf.add_metric([ifname, kind], n)
        yield cf

        h = s.latency
        yield HistogramMetricFamily(f"{p}_processing_seconds", "Time from the end of a capture read "
                                    "to the last decision (and send) of that batch: the latency of "
                                    "the batch's last frame, one observation per wake-up.",
                                    buckets=h.cumulative(), sum_value=h.sum)

        relay = self.relay()
        if relay is not None:
            yield GaugeMetricFamily(f"{p}_rate_limit_sources", "Sending routers tracked by the "
                                    "per-source rate limiter.", value=len(relay.limiter))
            yield GaugeMetricFamily(f"{p}_dedup_keys", "Keys in the dedup table.", value=len(relay.dedup))
            ev = CounterMetricFamily(f"{p}_table_evictions", "Entries evicted from a full table "
                                     "before they expired (since the table was last rebuilt).",
                                     labels=["table"])
            ev.add_metric(["dedup"], relay.dedup.evictions)
            ev.add_metric(["rate_limit_sources"], relay.limiter.evictions)
            ev.add_metric(["known_sources"], relay.limiter.known_evictions)
            yield ev
            yield GaugeMetricFamily(f"{p}_known_sources", "Sending routers known for the global "
                                    "reserve (had a PTB relayed recently).", value=relay.limiter.known_sources())
            yield CounterMetricFamily(f"{p}_ptb_relayed_from_reserve", "PTBs relayed with a token of "
                                      "the global reserve (the general part was empty; since the limiter "
                                      "was last rebuilt); part of ptb_relayed.", value=relay.limiter.reserve_relayed)
            vips = GaugeMetricFamily(f"{p}_vips", "Service addresses or prefixes in effect, by family "
                                     "(0: every PTB about that family is dropped as not_vip).", labels=["family"])
            networks = relay.policy.vips.networks
            for version, fam in ((4, "ipv4"), (6, "ipv6")):
                vips.add_metric([fam], sum(1 for n in networks if n.version == version))
            yield vips
            shunner = relay.shunner
            yield GaugeMetricFamily(f"{p}_kernel_held_sources", "Outer sources whose frames the AF_PACKET "
                                    "captures drop in the kernel now: each flooded far past its own rate "
                                    "limit (the shun list; always 0 with NFLOG capture).", value=len(shunner))
            yield CounterMetricFamily(f"{p}_kernel_holds", "Times a flooding source was put on the shun "
                                      "list (dropped in the kernel for a while).", value=shunner.shuns)

        yield CounterMetricFamily(f"{p}_internal_errors", "Exceptions caught on the packet path "
                                  "(the frame was skipped).", value=s.internal_errors)
        cr = CounterMetricFamily(f"{p}_config_reloads", "SIGHUP configuration reloads, by result.",
                                 labels=["result"])
        for result in ("success", "failure"):
            cr.add_metric([result], s.reloads[result])
        yield cr
        yield GaugeMetricFamily(f"{p}_config_last_reload_success_timestamp_seconds", "Unix time of "
                                "the last successful configuration load.", value=s.last_reload_success)
        if self.log_dropped is not None:
            yield CounterMetricFamily(f"{p}_log_lines_dropped", "Log lines dropped because stderr "
                                      "could not keep up.", value=self.log_dropped())
        yield GaugeMetricFamily(f"{p}_ready", "1 once start-up is done and every configured interface "
                                "is bound (what /readyz answers).", value=0 if s.not_ready_reason() else 1)
        yield GaugeMetricFamily(f"{p}_interfaces_waiting", "Configured interfaces the daemon waits for "
                                "(no such interface, or down): bound as soon as they are up.",
                                value=len(s.waiting))
        yield GaugeMetricFamily(f"{p}_start_time_seconds", "Unix time the daemon started.", value=s.started)
        info = InfoMetricFamily(f"{p}_build", "Version of pmtud-relay and of its Python.")
        info.add_metric([], {"version": self.version, "python": platform.python_version()})
        yield info


class SelfProcessCollector:
    """The standard ``process_*`` metrics from the process's own entries only.

    prometheus_client's ProcessCollector needs ``/proc/stat`` (boot time) and exports nothing
    when it is hidden, as systemd's ``ProcSubset=pid`` does. This one reads ``os.times()``,
    ``/proc/self/statm``, ``/proc/self/fd`` and the RLIMIT_NOFILE limit, which stay visible.
    """

    def __init__(self, started: float, proc: str = "/proc/self"):
        self.started = started
        self.proc = proc
        self.pagesize = os.sysconf("SC_PAGE_SIZE")

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        t = os.times()
        yield CounterMetricFamily("process_cpu_seconds", "Total user and system CPU time spent in seconds.",
                                  value=t.user + t.system)
        try:
            with open(os.path.join(self.proc, "statm"), "rb") as f:
                size, resident = (int(x) for x in f.read().split()[:2])
            yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                                    value=size * self.pagesize)
            yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.",
                                    value=resident * self.pagesize)
        except (OSError, ValueError):
            pass
        try:
            yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.",
                                    value=len(os.listdir(os.path.join(self.proc, "fd"))))
        except OSError:
            pass
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:
            yield GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.", value=soft)
        yield GaugeMetricFamily("process_start_time_seconds", "Start time of the process since unix epoch "
                                "in seconds (when the daemon's metrics began).", value=self.started)


def build_registry(stats: Stats, relay: Callable[[], Relay | None] | None = None,
                   log_dropped: Callable[[], int] | None = None, process: bool = True) -> CollectorRegistry:
    """A private registry with the relay collector (and process_* metrics unless ``process``
    is false). Never the prometheus_client default registry."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(stats, relay, log_dropped))
    if process:
        registry.register(SelfProcessCollector(stats.started))
    return registry

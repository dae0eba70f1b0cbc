"""Prometheus metrics of delivery confirmation, read from the running Confirmer at scrape time.

Label sets are closed and exported from the start at 0: ``origin`` is an
:class:`~pmtud_relay.confirm.verdict.Origin` value, ``verdict`` an
:class:`~pmtud_relay.confirm.verdict.OwnerVerdict` value, ``outcome`` ``looked_up`` or a drop
:class:`~pmtud_relay.core.reasons.Reason` value. Never an address or a port.

Register with ``registry.register(ConfirmCollector(lambda: daemon.confirmer, lambda: daemon.copy_counts))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from pmtud_relay.core.reasons import Reason

from .verdict import Origin, OwnerVerdict

PREFIX = "pmtud_relay"
#: What became of another relay's L2 copy: looked up, or the reason it was dropped.
COPY_OUTCOMES = ("looked_up",) + tuple(r.value for r in Reason if r is not Reason.RELAYED)


class ConfirmCollector:
    def __init__(self, confirmer: Callable[[], object], copy_counts: Callable[[], Mapping[Reason, int]]):
        self.confirmer = confirmer
        self.copy_counts = copy_counts

    def describe(self):
        return []  # registration must not run collect()

    def collect(self):
        c = self.confirmer()
        if c is None:
            return
        p = PREFIX
        yield GaugeMetricFamily(f"{p}_owner_lookup_enabled", "1 when delivery confirmation looks up "
                                "the owner of each accepted PTB, 0 when it cannot (no sock_diag).",
                                value=1 if c.enabled else 0)
        verdicts = CounterMetricFamily(
            f"{p}_owner_verdicts", "Accepted PTBs by how they reached this host (captured: relayed from "
            "here; l2_copy: another relay's copy; peer: injected from a peer) and what the local kernel "
            "says of the quoted flow: applied (a local socket owns it and its path MTU is at or below "
            "the PTB's), not_applied (owned, PMTU not lowered), orphan (no local owner), unknown.",
            labels=["origin", "verdict"])
        counts = dict(c.verdicts)
        for origin in Origin:
            for verdict in OwnerVerdict:
                verdicts.add_metric([origin.value, verdict.value], counts.get((origin, verdict), 0))
        yield verdicts
        h = c.to_pmtu
        yield HistogramMetricFamily(
            f"{p}_capture_to_pmtu_seconds", "Time from a PTB's capture to the owner lookup that saw the "
            "socket's path MTU at or below the PTB's (applied verdicts; lookups are retried at 1, 2, 4, "
            "… ms, so this is an upper bound at that resolution).",
            buckets=h.cumulative(), sum_value=h.sum)
        yield CounterMetricFamily(f"{p}_owner_lookups", "sock_diag owner lookups sent to the kernel "
                                  "(one per accepted PTB, plus the re-reads of an owned flow's PMTU).",
                                  value=c.lookups)
        yield CounterMetricFamily(f"{p}_owner_lookup_errors", "Owner lookups the kernel did not answer "
                                  "usefully (verdict unknown).", value=c.lookup_errors)
        yield CounterMetricFamily(f"{p}_owner_lookup_queue_full", "Accepted PTBs not looked up because "
                                  "the lookup queue was full (verdict unknown).", value=c.queue_full)
        copies = CounterMetricFamily(f"{p}_l2_copies_received", "Other relays' L2 copies this host "
                                     "received, by outcome: looked_up (passed this host's checks and "
                                     "limits; never relayed again) or the reason it was dropped.",
                                     labels=["outcome"])
        cc = {("looked_up" if r is Reason.RELAYED else r.value): n for r, n in dict(self.copy_counts()).items()}
        for outcome in COPY_OUTCOMES:
            copies.add_metric([outcome], cc.get(outcome, 0))
        yield copies

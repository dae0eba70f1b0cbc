"""Prometheus metrics of the peer relay, read from the running PeerService at scrape time.

Label sets are closed: ``reason`` is a :class:`~pmtud_relay.peers.wire.PeerReason` value or
``ptb_`` + a :class:`~pmtud_relay.core.reasons.Reason` value (every one exported from the start,
at 0); ``errno`` is an errno name. No per-peer labels: a DNS-sourced peer list has no fixed size.

Register with ``registry.register(PeerCollector(lambda: daemon.peering))``.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pmtud_relay.core.reasons import Reason
from pmtud_relay.peers.ack import AckDrop, AckVerdict
from pmtud_relay.peers.wire import PeerReason

PREFIX = "pmtud_relay_peer"

#: Every receive outcome, in the order the receiver checks them.
RX_REASONS = tuple(r.value for r in PeerReason) + tuple(
    "ptb_" + r.value for r in Reason if r is not Reason.RELAYED
)


class PeerCollector:
    def __init__(self, service: Callable[[], object]):
        self.service = service

    def describe(self):
        return []  # registration must not run collect()

    def collect(self):
        svc = self.service()
        if svc is None:
            return
        yield GaugeMetricFamily(f"{PREFIX}s", "Peers in the current list (after resolution, without this host).",
                                value=len(svc.table.peers))
        yield CounterMetricFamily(f"{PREFIX}_datagrams_sent", "Relay datagrams sent to peers "
                                  "(one per PTB and target peer; in dry-run: that would be sent).", value=svc.tx)
        yield CounterMetricFamily(f"{PREFIX}_send_rate_limited", "PTBs not sent to a peer because its "
                                  "token bucket was empty.", value=sum(svc.table.limited.values()))
        errors = CounterMetricFamily(f"{PREFIX}_send_errors", "Failed sends to peers, by errno.", labels=["errno"])
        for name, n in sorted(svc.tx_errors.items()):
            errors.add_metric([name], n)
        yield errors
        yield from _ack_metrics(svc)
        if svc.inbox is None:
            return
        received = CounterMetricFamily(f"{PREFIX}_datagrams_received", "Datagrams received from peers, by "
                                       "outcome: accepted (injected), a protocol rejection, or ptb_<reason> "
                                       "when the PTB inside failed this host's own checks.", labels=["reason"])
        counts = {("ptb_" + r.value if isinstance(r, Reason) else r.value): n
                  for r, n in dict(svc.inbox.counts).items()}
        for reason in RX_REASONS:
            received.add_metric([reason], counts.get(reason, 0))
        yield received
        yield CounterMetricFamily(f"{PREFIX}_injected", "PTBs from peers injected into this host's receive path.",
                                  value=svc.injected)
        inject_errors = CounterMetricFamily(f"{PREFIX}_inject_errors", "Failed injections, by errno.",
                                            labels=["errno"])
        for name, n in sorted(svc.inject_errors.items()):
            inject_errors.add_metric([name], n)
        yield inject_errors
        listener = svc.listener
        pf = listener.filter if listener is not None else None
        if pf is not None:
            yield GaugeMetricFamily(f"{PREFIX}_filter_addresses", "Peer addresses the listener's in-kernel "
                                    "filter admits (datagrams from any other address never reach userspace).",
                                    value=len(pf.addresses))
            yield GaugeMetricFamily(f"{PREFIX}_filter_magic_only", "1 when the listener's in-kernel filter "
                                    "checks only the protocol magic (a host that only listens, or a peer list "
                                    "the kernel cannot take), else 0.", value=1 if pf.mode == "magic" else 0)
        yield CounterMetricFamily(f"{PREFIX}_key_reloads", "Key file changes applied.", value=svc.key_reloads)


def _ack_metrics(svc):
    """Delivery acknowledgements (docs/peers.md, "Acknowledgements"); every label from the start."""
    tracker = getattr(svc, "ack_tracker", None)
    if tracker is not None:
        svc.expire_acks(svc.clock())  # a fan-out whose wait is over counts now, not at the next refresh
        acks = CounterMetricFamily(f"{PREFIX}_acks", "Owner acknowledgements accepted for PTBs this host "
                                   "sent to peers, by the owner's verdict: applied (its path MTU dropped) "
                                   "or not_applied.", labels=["result"])
        for verdict in AckVerdict:
            acks.add_metric([verdict.label], tracker.acks[verdict])
        yield acks
        drops = CounterMetricFamily(f"{PREFIX}_ack_drops", "Acknowledgements dropped, by reason (unsolicited: "
                                    "for no datagram this host sent; late: after the wait expired).",
                                    labels=["reason"])
        for reason in AckDrop:
            drops.add_metric([reason.value], tracker.drops[reason])
        yield drops
        fanouts = CounterMetricFamily(f"{PREFIX}_fanouts", "PTBs sent to peers, by outcome: delivered (an "
                                      "owner acknowledged it), not_delivered (no owner ack within the wait), "
                                      "evicted (the table of PTBs awaiting acks was full).", labels=["result"])
        for result in ("delivered", "not_delivered", "evicted"):
            fanouts.add_metric([result], tracker.fanouts[result])
        yield fanouts
        yield GaugeMetricFamily(f"{PREFIX}_fanouts_awaiting_ack", "PTBs sent to peers still within their "
                                "wait for an acknowledgement.", value=len(tracker))
    gate = getattr(svc, "ack_gate", None)
    if gate is not None:
        sent = CounterMetricFamily(f"{PREFIX}_acks_sent", "Acknowledgements this host sent as the owner of "
                                   "a peer's PTB, by verdict.", labels=["result"])
        for verdict in AckVerdict:
            sent.add_metric([verdict.label], svc.acks_sent.get(verdict.label, 0))
        yield sent
        refused = CounterMetricFamily(f"{PREFIX}_acks_not_sent", "Acknowledgements this host owed but did "
                                      "not send, by reason.", labels=["reason"])
        refused.add_metric(["rate_limited"], gate.counts["rate_limited"])
        refused.add_metric(["larger_than_datagram"], gate.counts["larger_than_datagram"])
        refused.add_metric(["repeat"], gate.counts["repeat"])
        refused.add_metric(["send_failed"], sum(svc.ack_send_errors.values()))
        yield refused

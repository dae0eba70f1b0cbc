"""Delivery confirmation in the daemon (docs/confirmation.md): after a batch's copies left, queue
the owner lookups of its relayed PTBs and of the other relays' L2 copies it captured.

Other relays' copies are checked by a Relay of their own (same configuration, its own dedup and
limits: a flood of copies cannot take tokens from relaying) and never relayed. The Confirmer
runs the lookups on a later turn of the loop; in dry-run each verdict ends a decision line.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from pmtud_relay.core.policy import PACKET_L2_COPY
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Decision, Relay
from pmtud_relay.report import decision_record

if TYPE_CHECKING:
    from pmtud_relay.confirm.lookup import KernelLookup
    from pmtud_relay.confirm.service import Confirmer
    from pmtud_relay.daemon.port import Port
    from pmtud_relay.daemon.reporter import Reporter


def open_owner_lookup(log: logging.Logger) -> KernelLookup | None:
    """The kernel's socket lookup (sock_diag), or None where there is none: relay on, verdicts unknown."""
    from pmtud_relay.confirm.lookup import KernelLookup

    try:
        return KernelLookup()
    except OSError as exc:
        log.warning("owner_lookup_unavailable", extra={"kv": {"error": exc.strerror or str(exc)}})
        return None


class Confirmation:
    """``relay`` decides what is relayed; ``copies`` (a Relay of its own) checks other relays'
    L2 copies; ``copy_counts`` is what became of those (exported by confirm.metrics)."""

    def __init__(self, relay: Relay, copies: Relay, confirmer: Confirmer, reporter: Reporter, dry_run: bool,
                 copy_counts: dict[Reason, int]):
        self.relay = relay
        self.copies = copies
        self.confirmer = confirmer
        self.reporter = reporter
        self.dry_run = dry_run
        self.copy_counts = copy_counts

    def submit(self, relayed: list[Decision] | None, copies: list[bytes] | None, now: float, port: Port) -> None:
        """Queue the owner lookups of this batch's relayed PTBs and of the L2 copies that pass the
        same checks and limits as a captured PTB."""
        from pmtud_relay.confirm.verdict import Origin

        confirmer = self.confirmer
        ifname = port.ifname
        dry_run = self.dry_run
        for decision in relayed or ():
            cb = functools.partial(self._report_verdict, decision, ifname, Origin.CAPTURED) if dry_run else None
            confirmer.submit_ptb(decision.ptb, Origin.CAPTURED, now, cb)  # type: ignore[arg-type]  # relayed: a PTB
        if copies:
            inspector = self.copies
            if inspector.config is not self.relay.config:  # reloaded, or new VIPs: follow the relay
                inspector.reconfigure(self.relay.config, now)
            counts = self.copy_counts
            mac = port.mac
            for frame in copies:
                if frame[6:12] == mac:  # this relay's own copy, looped back (on lo): not another view
                    counts[Reason.OWN_FRAME] = counts.get(Reason.OWN_FRAME, 0) + 1
                    continue
                decision = inspector.handle(frame, now, mac, PACKET_L2_COPY)
                counts[decision.reason] = counts.get(decision.reason, 0) + 1
                if decision.relay:
                    cb = functools.partial(self._report_verdict, decision, ifname, Origin.L2_COPY) if dry_run else None
                    confirmer.submit_ptb(decision.ptb, Origin.L2_COPY, now, cb)  # type: ignore[arg-type]
                elif dry_run:
                    self.reporter.report(decision, ifname, origin="l2_copy")
            # A source flooding group-MAC PTBs is held in the kernel like one flooding unicast ones.
            drops = inspector.limiter.take_source_drops()
            if drops:
                self.relay.limiter.add_source_drops(drops)

    def _report_verdict(self, decision: Decision, ifname: str, origin, verdict, elapsed: float) -> None:
        self.reporter.report(decision, ifname, origin=origin.value, owner=verdict.value,
                             owner_seconds=round(elapsed, 6))


def log_owner_verdict(log: logging.Logger, origin, verdict, elapsed: float, ptb, pmtu) -> None:
    """Every verdict (the Confirmer's observer, bound to the daemon's logger): debug log line."""
    if log.isEnabledFor(10) and ptb is not None:
        rec = decision_record(Decision(True, Reason.RELAYED, ptb, None))
        if origin.value != "captured":  # another relay's copy or a peer's PTB: looked up, not relayed here
            rec.update(verdict="look_up", reason=origin.value)
        rec.update(origin=origin.value, owner=verdict.value, owner_seconds=round(elapsed, 6), pmtu=pmtu)
        log.debug("owner_verdict", extra={"kv": rec})

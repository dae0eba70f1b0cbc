"""What the daemon says about itself while it runs: the periodic summary line, the systemd
status and watchdog, the capture events of the stopped line. They read every part of the
daemon, so they take it whole."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pmtud_relay import metrics
from pmtud_relay.core.reasons import Reason

if TYPE_CHECKING:
    from pmtud_relay.daemon.parts import DaemonParts


def capture_faults(stats: metrics.Stats) -> dict[str, int]:
    """Capture events since start, over every interface, that happened at all:
    ``capture_truncated``, ``capture_ring_resync`` (for the summary and stopped lines)."""
    faults: dict[str, int] = {}
    for (_ifname, kind), n in stats.capture_totals().items():
        faults[kind] = faults.get(kind, 0) + n
    return {f"capture_{kind}": n for kind, n in sorted(faults.items()) if n}


async def summary_loop(d: DaemonParts, stop: asyncio.Event) -> None:
    relay = d.relay
    last = dict(relay.counts)
    last_owner: dict[str, int] = {}
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), d.settings.summary_interval)
        except asyncio.TimeoutError:
            pass
        now_counts = dict(relay.counts)
        delta = {r.value: now_counts[r] - last[r] for r in Reason if now_counts[r] - last[r]}
        last = now_counts
        relayed = delta.pop(Reason.RELAYED.value, 0)
        kv = {"relayed": relayed, "dropped": sum(delta.values())}
        kv.update({f"drop_{k}": v for k, v in sorted(delta.items())})
        kv["send_errors"] = sum(d.send_errors.values())
        kv["dedup_keys"] = len(relay.dedup)
        kv["rate_sources"] = len(relay.limiter)
        kv.update(capture_faults(d.stats))
        if relay.shunner:  # sources the capture filter drops now (AF_PACKET only)
            kv["kernel_held_sources"] = len(relay.shunner)
        kv.update(d.interfaces.mode.summary())
        if d.peering is not None:
            kv.update(d.peering.stats())
        if d.confirmer is not None:  # owner verdicts in the interval (docs/confirmation.md)
            owner: dict[str, int] = {}
            for (_origin, verdict), n in d.confirmer.verdicts.items():
                owner["owner_" + verdict.value] = owner.get("owner_" + verdict.value, 0) + n
            kv.update({k: n - last_owner.get(k, 0) for k, n in sorted(owner.items()) if n - last_owner.get(k, 0)})
            last_owner = owner
        d.log.info("summary", extra={"kv": kv})
        d.notifier.notify(f"STATUS={d.interfaces.status_text()}; relayed {relay.counts[Reason.RELAYED]} "
                          "PTBs since start")


async def watchdog_loop(d: DaemonParts, stop: asyncio.Event, interval: float) -> None:
    while not stop.is_set():
        d.notifier.notify("WATCHDOG=1")
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass


def stopped_counts(d: DaemonParts) -> dict[str, int]:
    """The stopped line: every decision since start, the capture events, the peers' counts."""
    counts = {r.value: n for r, n in d.relay.counts.items() if n}
    if d.relay.limiter.reserve_relayed:  # of "relayed", those with a reserve token
        counts["relayed_from_reserve"] = d.relay.limiter.reserve_relayed
    counts.update(capture_faults(d.stats))
    if d.peering is not None:
        counts.update(d.peering.stats())
    return counts

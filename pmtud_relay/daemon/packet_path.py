"""The packet path: a readable capture's frames through the core and out.

On every wake-up :meth:`PacketPath.on_readable` drains the port's capture, reads the clock once
for the batch, asks :class:`pmtud_relay.core.relay.Relay` about each frame and queues the
copies into the port's emitter (one send() per batch, emit/l2.py) and to the peers. After the
copies left it hands the kernel holds the core decided to the captures, and the relayed PTBs
(and other relays' L2 copies) to delivery confirmation. Nothing else happens here: a wake-up
with no frame goes to the interface lifecycle (daemon/ports.py).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from pmtud_relay import metrics
from pmtud_relay.core.policy import PACKET_BROADCAST, PACKET_MULTICAST
from pmtud_relay.core.relay import Decision, Relay
from pmtud_relay.report import decision_record

if TYPE_CHECKING:
    from pmtud_relay.daemon.confirmation import Confirmation
    from pmtud_relay.daemon.faults import Faults
    from pmtud_relay.daemon.holds import KernelHolds
    from pmtud_relay.daemon.port import Port
    from pmtud_relay.daemon.reporter import Reporter
    from pmtud_relay.peers.service import PeerService

DEBUG = logging.DEBUG


class PacketPath:
    """``idle``: called with the port on a wake-up that found no frame (the lifecycle's
    ``idle_wakeup``). ``peering`` and ``confirmation`` are set once they are open (None: off)."""

    def __init__(self, relay: Relay, stats: metrics.Stats, faults: Faults, holds: KernelHolds,
                 reporter: Reporter, clock: Callable[[], float], log: logging.Logger, dry_run: bool,
                 idle: Callable[[Port], None]):
        self.relay = relay
        self.stats = stats
        self.faults = faults
        self.holds = holds
        self.reporter = reporter
        self.clock = clock
        self.log = log
        self.dry_run = dry_run
        self.idle = idle
        self.peering: PeerService | None = None
        self.confirmation: Confirmation | None = None

    def on_readable(self, port: Port) -> None:
        try:
            batch = port.capture.drain()
            if not batch:
                self.idle(port)  # cold path: maybe the socket's error (link down) woke us
                return
            now = self.clock()
            started = time.perf_counter()
            relay = self.relay
            handle = relay.handle
            emitter = port.emitter
            # Copies go into the emitter's TX ring and leave with one send() per batch
            # (queue() flushes on its own every few copies, see emit/l2.py).
            queue = emitter.queue if emitter is not None else None
            mac = port.mac
            peering = self.peering
            ifname = port.ifname
            counts = self.stats.decisions
            dry_run = self.dry_run
            debug = not dry_run and self.log.isEnabledFor(DEBUG)  # once per batch, not per packet
            confirmation = self.confirmation
            confirm: list[Decision] | None = None  # relayed PTBs to look up, after the copies left
            copies: list[bytes] | None = None  # other relays' L2 copies (never relayed)
            for frame, pkttype in batch:
                if pkttype and (pkttype == PACKET_BROADCAST or pkttype == PACKET_MULTICAST) \
                        and confirmation is not None:
                    if copies is None:
                        copies = []
                    copies.append(frame)
                    continue
                decision = handle(frame, now, mac, pkttype)
                ptb = decision.ptb
                key = (ifname, ptb.family if ptb is not None else 0, decision.reason)
                counts[key] = counts.get(key, 0) + 1
                if decision.relay:
                    if queue is not None:
                        err = queue(decision.copy)  # type: ignore[arg-type]  # relayed: a copy
                        if err:
                            self.faults.send_error(err, ifname)
                    if peering is not None:
                        peering.fanout(ptb, now)
                    if debug:
                        self.log.debug("relayed", extra={"kv": decision_record(decision, ifname)})
                    if confirmation is not None:
                        if confirm is None:
                            confirm = []
                        confirm.append(decision)
                        continue  # a dry-run line waits for the owner verdict (confirmation.py)
                if dry_run:
                    self.reporter.report(decision, ifname)
            if emitter is not None:
                err = emitter.flush()
                if err:
                    self.faults.send_error(err, ifname)
            # Sources flooding far past their bucket are dropped in the kernel for a while
            # (core/shun.py decides, captures that can hold sources apply it). NFLOG captures
            # cannot (its firewall rules carry their own in-kernel limit): not decided there.
            if port.capture.holds_sources:
                blocked = relay.kernel_blocklist(now)
                if blocked is not None:
                    self.holds.apply(blocked)
            self.stats.latency.observe(time.perf_counter() - started)
            if confirmation is not None and (confirm is not None or copies is not None):
                confirmation.submit(confirm, copies, now, port)  # after the copies went out: no added latency
        except Exception:  # never let one bad frame or a bug kill the daemon
            self.faults.internal("packet_path_error", port.ifname)

"""The relay daemon: opens its parts, serves until stopped, closes them.

The parts, each in a module of its own: the interface lifecycle (ports.py) over a capture mode
chosen once (capture_modes.py), the packet path (packet_path.py), kernel holds (holds.py),
service addresses (vips.py), delivery confirmation (confirmation.py), reload (reload.py), the
summary and systemd status (summary.py). All I/O and the clock live in the daemon; decisions
come from :class:`pmtud_relay.core.relay.Relay`.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, TextIO

from pmtud_relay import logs, metrics
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Relay
from pmtud_relay.daemon import reload as _reload
from pmtud_relay.daemon import summary
from pmtud_relay.daemon.capture_modes import capture_mode
from pmtud_relay.daemon.confirmation import Confirmation, log_owner_verdict, open_owner_lookup
from pmtud_relay.daemon.faults import Faults
from pmtud_relay.daemon.holds import KernelHolds
from pmtud_relay.daemon.packet_path import PacketPath
from pmtud_relay.daemon.ports import WAITING_HINT, Interfaces
from pmtud_relay.daemon.reporter import Reporter
from pmtud_relay.daemon.sdnotify import Notifier
from pmtud_relay.daemon.vips import Vips, vip_text
from pmtud_relay.emit.l2 import L2Emitter

if TYPE_CHECKING:
    from pmtud_relay.config import Loaded
    from pmtud_relay.config.records import DaemonSettings
    from pmtud_relay.confirm.lookup import KernelLookup
    from pmtud_relay.confirm.service import Confirmer
    from pmtud_relay.peers.service import PeerService
    from pmtud_relay.rules import RuleManager


class RelayDaemon:
    def __init__(
        self,
        settings: DaemonSettings,
        out: TextIO = sys.stdout,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.out = out
        self.clock = clock
        self.log = logs.get()
        self.relay = Relay(settings.relay, now=clock())
        # Metrics: plain counters, read by metrics.RelayCollector only when Prometheus scrapes.
        self.stats = metrics.Stats(settings.interfaces)
        self.faults = Faults(self.stats, self.log, clock)
        self.send_errors = self.faults.send_errors
        self.metrics_sock: socket.socket | None = None  # from metrics.bind(), opened by the CLI
        self.reloader: Callable[[], Loaded] | None = None  # raises config.ConfigError (SIGHUP)
        self.config: Any = None  # the config.Settings in force, for reload diffs
        # Made by serve(): before Python 3.10 an asyncio.Event binds to the loop current when it is
        # created, and none runs yet here. stop() before serve() is remembered.
        self._stop: asyncio.Event | None = None
        self._stop_requested = False
        self.notifier = Notifier()
        self.rules: RuleManager | None = None  # when settings.manage_rules
        self.peering: PeerService | None = None  # when settings.peers
        self.vips = Vips(self.relay, lambda: self.settings, clock, self.log, self.faults)
        peers = settings.peers
        no_l2 = settings.dry_run or (peers is not None and not peers.l2)  # no L2 copy is sent
        self.interfaces = Interfaces(
            capture_mode(settings, self.stats, self.faults, clock), self.stats.waiting, self.faults, self.log,
            emitter=None if no_l2 else L2Emitter, held=lambda: self.relay.shunner.samples,
            on_change=self._notify_status, on_link_event=self.vips.may_have_changed)
        self.ports = self.interfaces.ports  # the ports served now (the same list)
        self.holds = KernelHolds(self.relay, self.ports, clock, self.log, self.faults)
        self.reporter = Reporter(out, settings.json_output)
        self.path = PacketPath(self.relay, self.stats, self.faults, self.holds, self.reporter, clock, self.log,
                               settings.dry_run, self.interfaces.idle_wakeup)
        # Delivery confirmation (docs/confirmation.md): the kernel lookup is opened by open(), the
        # Confirmer (it needs the running loop) by serve(). Other relays' L2 copies are checked by
        # a Relay of their own (same configuration, its own dedup and limits), never relayed.
        self.owner_lookup: KernelLookup | None = None
        self.confirmer: Confirmer | None = None
        self.copies = Relay(settings.relay, now=self.clock()) if settings.confirm_owner else None
        self.copy_counts: dict[Reason, int] = {}  # what became of the L2 copies received

    @property
    def internal_errors(self) -> int:
        return self.faults.internal_errors

    # -- set-up ---------------------------------------------------------------
    def open(self) -> None:
        """Open every capture and emit socket; raises OSError (e.g. EPERM) to the CLI."""
        try:
            self._open_links()  # first: no link event between opening a port and watching is lost
            # Bind what the capture kind shares (the NFLOG group) before the rules: a busy group must
            # not cost another instance its rules. RulesError/NflogError go to the CLI.
            self.interfaces.mode.bind()
            for ifname in self.settings.interfaces:
                self.interfaces.open_or_wait(ifname)
            if self.settings.manage_rules:
                self._install_rules()
            if self.settings.peers is not None:
                self._open_peers()
            if self.settings.confirm_owner:
                self.owner_lookup = open_owner_lookup(self.log)
        except BaseException:
            self.close()
            raise

    def _open_links(self) -> None:
        from pmtud_relay.netlink import linkwatch

        try:
            self.interfaces.links = linkwatch.LinkWatcher()
        except OSError as exc:  # no rtnetlink (a very unusual sandbox): run on, without re-binding
            self.log.warning("link_events_unavailable", extra={"kv": {"error": exc.strerror or str(exc)}})

    def _install_rules(self) -> None:
        from pmtud_relay import rules

        s = self.settings
        spec = rules.RuleSpec.from_limits(
            s.interfaces, s.nflog_group, s.relay.source_rate, s.relay.source_burst,
            s.relay.global_rate, s.relay.global_burst,
        )
        manager = rules.RuleManager(rules.resolve(s.rules_backend), spec)
        manager.install()
        self.rules = manager
        self.log.info("rules_installed", extra={"kv": {"backend": manager.backend.name, "group": s.nflog_group}})

    def _open_peers(self) -> None:
        """The peer relay (docs/peers.md): sender, receiver, injector. PeerError goes to the CLI."""
        from pmtud_relay.peers.service import PeerService

        s = self.settings
        assert s.peers is not None
        self.peering = PeerService(s.peers, lambda: self.relay.policy, dry_run=s.dry_run, out=self.out,
                                   json_output=s.json_output, clock=self.clock)
        self.path.peering = self.peering
        self.peering.open()

    def close(self) -> None:
        if self.rules is not None:
            manager, self.rules = self.rules, None
            try:
                manager.remove()
                self.log.info("rules_removed", extra={"kv": {"backend": manager.backend.name}})
            except Exception as exc:  # noqa: BLE001 - stopping must go on; the next start replaces them
                self.log.error("rules_remove_failed", extra={"kv": {
                    "backend": manager.backend.name, "error": str(exc)}})
        self.interfaces.close()
        if self.peering is not None:
            self.peering.close()
            self.peering = self.path.peering = None
        if self.confirmer is not None:
            self.confirmer.close()
            self.confirmer = None
            self.path.confirmation = None
        elif self.owner_lookup is not None:
            self.owner_lookup.close()
        self.owner_lookup = None

    def stop(self) -> None:
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()

    def reload(self) -> bool:
        """SIGHUP (daemon/reload.py). True if the new configuration was applied."""
        return _reload.reload(self)

    def _notify_status(self) -> None:
        if self.stats.ready:  # before READY=1 the start-up sends its own STATUS
            self.notifier.notify(f"STATUS={self.interfaces.status_text()}")

    # -- main -----------------------------------------------------------------
    def _start_confirmation(self, loop: asyncio.AbstractEventLoop) -> None:
        from pmtud_relay.confirm.service import Confirmer

        self.confirmer = confirmer = Confirmer(
            loop, self.owner_lookup, enabled=self.owner_lookup is not None, clock=self.clock,
            observer=functools.partial(log_owner_verdict, self.log))
        assert self.copies is not None  # made with confirm_owner
        self.path.confirmation = Confirmation(self.relay, self.copies, confirmer, self.reporter,
                                              self.settings.dry_run, self.copy_counts)

    async def _start_metrics(self, sock: socket.socket) -> metrics.MetricsServer:
        registry = metrics.build_registry(self.stats, lambda: self.relay, logs.dropped)
        if self.peering is not None:
            from pmtud_relay.peers.metrics import PeerCollector

            registry.register(PeerCollector(lambda: self.peering))
        if self.confirmer is not None:
            from pmtud_relay.confirm.metrics import ConfirmCollector

            registry.register(ConfirmCollector(lambda: self.confirmer, lambda: self.copy_counts))
        stats = self.stats
        server = metrics.MetricsServer(registry, ready=lambda: stats.not_ready_reason() is None,
                                       not_ready_reason=stats.not_ready_reason)
        await server.start(sock)
        return server

    def _ready_line(self) -> dict[str, object]:
        s = self.settings
        waiting = self.interfaces.waiting
        return {
            "interfaces": ",".join(p.ifname for p in self.ports),
            **({"waiting": ",".join(sorted(waiting))} if waiting else {}),
            "mode": "dry-run" if s.dry_run else (s.peers.fanout if s.peers else "l2"),
            "capture": self.interfaces.mode.label,
            "vips": vip_text(self.relay.policy.vips),
            **(self.peering.describe() if self.peering is not None else {}),
        }

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        stop = self._stop = asyncio.Event()
        if self._stop_requested:
            stop.set()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        server = None
        if self.settings.confirm_owner:
            self._start_confirmation(loop)
        if self.metrics_sock is not None:
            server = await self._start_metrics(self.metrics_sock)
        tasks: list[asyncio.Future[None]] = []
        if self.settings.discover_vips:
            await self.vips.refresh(initial=True)
        tasks.append(asyncio.create_task(self.vips.loop(stop)))
        self.interfaces.start(loop, self.path.on_readable)
        tasks.append(asyncio.create_task(summary.summary_loop(self, stop)))
        tasks.append(asyncio.create_task(self.interfaces.waiting_loop(stop, self.clock)))
        if self.notifier.watchdog_interval:
            tasks.append(asyncio.create_task(summary.watchdog_loop(self, stop, self.notifier.watchdog_interval)))
        if self.peering is not None:
            self.peering.confirmer = self.confirmer  # owner verdicts for peers' PTBs: acks (docs/peers.md)
            await self.peering.start()
        absent = [n for n in self.interfaces.absent_at_start if n in self.interfaces.waiting]
        if absent:
            self.log.warning("interfaces_waiting", extra={"kv": {
                "interfaces": ",".join(absent), "reason": "no such interface", "hint": WAITING_HINT}})
        self.log.info("ready", extra={"kv": self._ready_line()})
        self.stats.ready = True
        # READY=1 even while waiting for an interface: the service is up (a late interface is a
        # state, not a failed start); STATUS and /readyz say what it waits for.
        self.notifier.notify("READY=1", f"STATUS={self.interfaces.status_text()}")
        try:
            await stop.wait()
        finally:
            self.notifier.notify("STOPPING=1")
            self.stats.ready = False
            loop.remove_signal_handler(signal.SIGHUP)
            if server is not None:
                await server.close()
            if self.peering is not None:
                await self.peering.stop()
            self.interfaces.stop()
            self.holds.cancel()
            if self.vips.task is not None:
                tasks.append(self.vips.task)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
                # A second signal during shutdown must not kill us before managed rules are
                # removed (systemd's TimeoutStopSec/SIGKILL still bounds a hung stop).
                signal.signal(sig, signal.SIG_IGN)
            self.log.info("stopped", extra={"kv": summary.stopped_counts(self)})
            self.notifier.close()

"""The asyncio daemon: capture sockets → sans-IO relay → emitters.

All I/O and the clock live here; decisions come from :class:`pmtud_relay.core.Relay`.
Each capture socket is registered with the event loop; on every wake-up the daemon
drains every queued frame (one clock read per batch), decides, and sends the copies
out of the interface the PTB came in on.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import replace
from typing import Callable, TextIO

from pmtud_relay import hostinfo, logs, metrics
from pmtud_relay.netlink import linkwatch
from pmtud_relay.daemon.sdnotify import Notifier
from pmtud_relay.capture.afpacket import PacketCapture
from pmtud_relay.config.records import DaemonSettings
from pmtud_relay.core.policy import PACKET_BROADCAST, PACKET_L2_COPY, PACKET_MULTICAST, VipSet
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Decision, Relay
from pmtud_relay.emit.l2 import L2Emitter
from pmtud_relay.report import decision_record, logfmt, to_json


class _Port:
    """One interface: its capture socket and (unless dry-run) its emitter."""

    __slots__ = ("ifname", "capture", "emitter", "mac")

    def __init__(self, ifname: str, dry_run: bool, capture=None, accept_copies: bool = False):
        self.ifname = ifname
        if capture is None:
            from pmtud_relay.capture import bpf

            capture = PacketCapture(ifname, program=bpf.ptb_filter(accept_copies))
        self.capture = capture
        self.emitter = None if dry_run else L2Emitter(ifname)
        self.mac = self.capture.mac

    def close(self) -> None:
        self.capture.close()
        if self.emitter is not None:
            self.emitter.close()


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
        self.ports: list[_Port] = []
        self.send_errors: Counter[str] = Counter()
        self.internal_errors = 0
        self._last_error_log = 0.0
        # Metrics: plain counters, read by metrics.RelayCollector only when Prometheus scrapes.
        self.stats = metrics.Stats(settings.interfaces)
        self.metrics_sock = None  # listening socket from metrics.bind(), opened by the CLI
        self.reloader = None  # () -> config.Loaded, raises config.ConfigError (SIGHUP)
        self.config = None  # the config.Settings in force, for reload diffs
        # Made by serve(): before Python 3.10 an asyncio.Event binds to the loop current when it is
        # created, and none runs yet here. stop() before serve() is remembered.
        self._stop: asyncio.Event | None = None
        self._stop_requested = False
        self.notifier = Notifier()
        self.nflog = None  # the shared NflogCapture when settings.capture == "nflog"
        self.rules = None  # a RuleManager when settings.manage_rules
        self.peering = None  # a peering.PeerService when settings.peers
        self.links = None  # a linkwatch.LinkWatcher: re-binds interfaces that come back (both capture modes)
        # Configured interfaces without an open port (absent at start, down, deleted, renamed away);
        # the same set as stats.waiting (the gauge and /readyz read it).
        self._waiting: set[str] = self.stats.waiting
        self._absent_at_start: list[str] = []
        self._vip_refresh_pending = False
        self._vip_task = None
        self._hold_timer: asyncio.TimerHandle | None = None  # ends kernel holds on time (core/shun.py)
        self._hold_timer_at: float | None = None
        # Delivery confirmation (docs/confirmation.md): the kernel lookup is opened by open(), the
        # Confirmer (it needs the running loop) by serve(). Other relays' L2 copies are checked by
        # a Relay of their own (same configuration, its own dedup and limits), never relayed.
        self.owner_lookup = None
        self.confirmer = None
        self.copies = Relay(settings.relay, now=self.clock()) if settings.confirm_owner else None
        self.copy_counts: dict[Reason, int] = {}  # what became of the L2 copies received

    # -- set-up ---------------------------------------------------------------
    def open(self) -> None:
        """Open every capture and emit socket; raises OSError (e.g. EPERM) to the CLI."""
        try:
            if self.settings.capture == "nflog":
                self._open_links()  # first, as below: the NFLOG ports follow their interfaces too
                self._open_nflog()
                nflog = self.nflog
                self.stats.overrun_probes["nflog"] = metrics.delta_probe(lambda: nflog.overruns + nflog.lost)
            else:
                self._open_links()  # first: no link event between opening a port and watching is lost
                for ifname in self.settings.interfaces:
                    self._open_or_wait(ifname)
            if self.settings.peers is not None:
                self._open_peers()
            if self.settings.confirm_owner:
                self._open_confirmation()
        except BaseException:
            self.close()
            raise

    def _open_nflog(self) -> None:
        """Bind the NFLOG group first (a busy group must not cost another instance its
        rules), then install the rules if asked to. RulesError/NflogError go to the CLI."""
        from pmtud_relay.nflog.capture import NflogCapture
        from pmtud_relay.nflog.batching import BatchTuner

        s = self.settings
        # NETLINK_NO_ENOBUFS: on overrun the kernel would flag a socket error, which libuv (uvloop)
        # reports as fatal for the watcher: capture would stop for good. Losses are still
        # counted exactly from the NFLOG sequence numbers (nflog_lost).
        # A tuner: QTHRESH 1 (each PTB delivered at once) unless PTBs are frequent or the reader lags
        # (core/nflog_batching.py).
        self.nflog = NflogCapture(s.nflog_group, (), no_enobufs=True, tuner=BatchTuner(now=self.clock()))
        for ifname in s.interfaces:
            self._open_or_wait(ifname)
        if s.manage_rules:
            from pmtud_relay import rules

            spec = rules.RuleSpec.from_limits(
                s.interfaces, s.nflog_group, s.relay.source_rate, s.relay.source_burst,
                s.relay.global_rate, s.relay.global_burst,
            )
            manager = rules.RuleManager(rules.resolve(s.rules_backend), spec)
            manager.install()
            self.rules = manager
            self.log.info("rules_installed", extra={"kv": {"backend": manager.backend.name, "group": s.nflog_group}})

    @property
    def _no_l2_emitter(self) -> bool:
        """Dry-run, or fan-out to peers only: no L2 copies are sent."""
        peers = self.settings.peers
        return self.settings.dry_run or (peers is not None and not peers.l2)

    def _open_peers(self) -> None:
        """The peer relay (docs/peers.md): sender, receiver, injector. PeerError goes to the CLI."""
        from pmtud_relay.peers.service import PeerService

        s = self.settings
        self.peering = PeerService(s.peers, lambda: self.relay.policy, dry_run=s.dry_run, out=self.out,
                                   json_output=s.json_output, clock=self.clock)
        self.peering.open()

    def _open_confirmation(self) -> None:
        from pmtud_relay.confirm.lookup import KernelLookup

        try:
            self.owner_lookup = KernelLookup()
        except OSError as exc:  # no sock_diag in this kernel or sandbox: relay on, verdicts unknown
            self.log.warning("owner_lookup_unavailable", extra={"kv": {"error": exc.strerror or str(exc)}})

    def _open_or_wait(self, ifname: str) -> None:
        """Open the port of a configured interface at start; one that does not exist (yet) is a
        state, not an error: it is waited for and bound when it appears (link events). Without
        link events nothing would ever bind it, so then the error goes to the CLI (exit 2)."""
        try:
            self._add_port(ifname)
        except OSError as exc:
            if exc.errno not in (errno.ENODEV, errno.ENXIO) or self.links is None:
                raise
            self._waiting.add(ifname)
            self._absent_at_start.append(ifname)

    def _add_port(self, ifname: str) -> _Port:
        if self.nflog is not None:  # the shared NFLOG socket: register the interface's current ifindex/MAC
            return self._add_nflog_port(ifname)
        port = _Port(ifname, self._no_l2_emitter, accept_copies=self.copies is not None)
        self.ports.append(port)
        self.stats.overrun_probes[ifname] = functools.partial(metrics.afpacket_drops, port.capture.sock)
        self.stats.capture_counters[ifname] = port.capture.counters
        if ifname not in self.stats.interfaces:
            self.stats.interfaces.append(ifname)
        return port

    def _add_nflog_port(self, ifname: str) -> _Port:
        """NFLOG mode: a port for the interface now called ``ifname`` in the demux (ifindex → port,
        its MAC for frame rebuilding) and a fresh L2 emitter; the socket and the rules stay."""
        capture = self.nflog.add_interface(ifname)
        try:
            port = _Port(ifname, self._no_l2_emitter, capture=capture)
        except BaseException:
            self.nflog.remove_port(capture)
            raise
        self.ports.append(port)
        return port

    def close(self) -> None:
        if self.links is not None:
            self.links.close()
            self.links = None
        if self.rules is not None:
            manager, self.rules = self.rules, None
            try:
                manager.remove()
                self.log.info("rules_removed", extra={"kv": {"backend": manager.backend.name}})
            except Exception as exc:  # noqa: BLE001 - stopping must go on; the next start replaces them
                self.log.error("rules_remove_failed", extra={"kv": {"backend": manager.backend.name, "error": str(exc)}})
        for port in self.ports:
            port.close()
        self.ports.clear()
        if self.nflog is not None:
            self.nflog.close()
            self.nflog = None
        if self.peering is not None:
            self.peering.close()
            self.peering = None
        if self.confirmer is not None:
            self.confirmer.close()
            self.confirmer = None
        elif self.owner_lookup is not None:
            self.owner_lookup.close()
        self.owner_lookup = None

    def stop(self) -> None:
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()

    # -- the packet path ------------------------------------------------------
    def _on_readable(self, port: _Port) -> None:
        try:
            batch = port.capture.drain()
            if not batch:
                self._idle_wakeup(port)  # cold path: maybe the socket's error (link down) woke us
                return
            now = self.clock()
            started = time.perf_counter()
            handle = self.relay.handle
            emitter = port.emitter
            # Copies go into the emitter's TX ring and leave with one send() per batch
            # (queue() flushes on its own every few copies, see emit/l2.py).
            queue = emitter.queue if emitter is not None else None
            mac = port.mac
            peering = self.peering
            ifname = port.ifname
            counts = self.stats.decisions
            dry_run = self.settings.dry_run
            debug = not dry_run and self.log.isEnabledFor(10)  # once per batch, not per packet
            confirmer = self.confirmer
            confirm: list[Decision] | None = None  # relayed PTBs to look up, after the copies left
            copies: list[bytes] | None = None  # other relays' L2 copies (never relayed)
            for frame, pkttype in batch:
                if pkttype and (pkttype == PACKET_BROADCAST or pkttype == PACKET_MULTICAST) and confirmer is not None:
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
                        err = queue(decision.copy)
                        if err:
                            self._send_error(err, ifname)
                    if peering is not None:
                        peering.fanout(ptb, now)
                    if debug:
                        self.log.debug("relayed", extra={"kv": decision_record(decision, ifname)})
                    if confirmer is not None:
                        if confirm is None:
                            confirm = []
                        confirm.append(decision)
                        continue  # a dry-run line waits for the owner verdict (_confirm)
                if dry_run:
                    self._report(decision, ifname)
            if emitter is not None:
                err = emitter.flush()
                if err:
                    self._send_error(err, ifname)
            # Sources flooding far past their bucket are dropped in the kernel for a while
            # (core/shun.py decides, AF_PACKET captures apply it). NFLOG captures cannot apply
            # it (its firewall rules carry their own in-kernel limit), so it is not decided there.
            blocked = self.relay.kernel_blocklist(now) if self.nflog is None else None
            if blocked is not None:
                self._apply_kernel_holds(blocked)
            self.stats.latency.observe(time.perf_counter() - started)
            if confirm is not None or copies is not None:  # after the copies went out: no added latency
                self._confirm(confirm, copies, now, port)
        except Exception:  # never let one bad frame or a bug kill the daemon
            self.internal_errors += 1
            self.stats.internal_errors += 1
            self._rate_limited_error("packet_path_error", port.ifname)

    # -- delivery confirmation (docs/confirmation.md) ---------------------------------------------
    def _confirm(self, relayed: list[Decision] | None, copies: list[bytes] | None, now: float, port: _Port) -> None:
        """Queue the owner lookups of this batch's relayed PTBs and of the L2 copies that pass the
        same checks and limits as a captured PTB (their own dedup and buckets: a flood of copies
        cannot take tokens from relaying). The lookups run on a later turn of the loop."""
        from pmtud_relay.confirm.verdict import Origin

        confirmer = self.confirmer
        ifname = port.ifname
        dry_run = self.settings.dry_run
        for decision in relayed or ():
            cb = functools.partial(self._report_verdict, decision, ifname, Origin.CAPTURED) if dry_run else None
            confirmer.submit_ptb(decision.ptb, Origin.CAPTURED, now, cb)
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
                    confirmer.submit_ptb(decision.ptb, Origin.L2_COPY, now, cb)
                elif dry_run:
                    self._report(decision, ifname, origin="l2_copy")
            # A source flooding group-MAC PTBs is held in the kernel like one flooding unicast ones.
            drops = inspector.limiter.take_source_drops()
            if drops:
                self.relay.limiter.add_source_drops(drops)

    def _report_verdict(self, decision: Decision, ifname: str, origin, verdict, elapsed: float) -> None:
        self._report(decision, ifname, origin=origin.value, owner=verdict.value, owner_seconds=round(elapsed, 6))

    def _on_owner_verdict(self, origin, verdict, elapsed: float, ptb, pmtu) -> None:
        """Every verdict (the Confirmer's observer): debug log line."""
        if self.log.isEnabledFor(10) and ptb is not None:
            rec = decision_record(Decision(True, Reason.RELAYED, ptb, None))
            if origin.value != "captured":  # another relay's copy or a peer's PTB: looked up, not relayed here
                rec.update(verdict="look_up", reason=origin.value)
            rec.update(origin=origin.value, owner=verdict.value, owner_seconds=round(elapsed, 6), pmtu=pmtu)
            self.log.debug("owner_verdict", extra={"kv": rec})

    # -- kernel holds (core/shun.py) ------------------------------------------------------------
    def _apply_kernel_holds(self, blocked: frozenset[bytes]) -> None:
        """Put the held set into every AF_PACKET capture's filter and arm the expiry timer."""
        samples = self.relay.shunner.samples  # each held source and its 1-in-N sample
        for other in self.ports:
            set_blocked = getattr(other.capture, "set_blocked", None)
            if set_blocked is not None:
                set_blocked(samples)
        self.log.warning("flood_sources_dropped_in_kernel", extra={"kv": {
            "sources": ",".join(sorted(str(ipaddress.ip_address(b)) for b in blocked)) or "none",
            "count": len(blocked),
            "sample": ",".join(f"1/{samples[b]}" for b in sorted(blocked, key=lambda b: str(ipaddress.ip_address(b)))) or "none"}})
        self._arm_hold_timer()

    def _arm_hold_timer(self) -> None:
        """Wake up when the earliest hold ends. A held source's frames mostly never reach
        userspace, so on a quiet host no batch would ever come to end its hold: the timer does."""
        expiry = self.relay.shunner.next_expiry
        if expiry == self._hold_timer_at:
            return
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        self._hold_timer_at = expiry
        if expiry is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving (a unit test driving batches by hand): batches expire holds
            self._hold_timer_at = None
            return
        # Relative to self.clock (what the shunner's times are on), not loop.time(); 1 ms late
        # rather than early (uvloop's timers have millisecond resolution).
        self._hold_timer = loop.call_later(max(0.0, expiry - self.clock()) + 0.001, self._on_hold_expiry)

    def _on_hold_expiry(self) -> None:
        self._hold_timer = None
        self._hold_timer_at = None
        try:
            blocked = self.relay.shunner.expire(self.clock())
            if blocked is not None:
                self._apply_kernel_holds(blocked)
            else:  # woke a little early: wait for it again
                self._arm_hold_timer()
        except Exception:  # noqa: BLE001 - a failed filter update is retried by the next batch
            self.internal_errors += 1
            self.stats.internal_errors += 1
            self._rate_limited_error("kernel_hold_expiry_error", "-")

    def _on_nflog_readable(self) -> None:
        """One NFLOG socket serves every port: the first drain reads it, each port gets its share."""
        if not self.ports:  # every interface gone: read (and count as foreign) what is queued, or the reader spins
            try:
                self.nflog.pump()
            except Exception:
                self.internal_errors += 1
                self.stats.internal_errors += 1
                self._rate_limited_error("packet_path_error", "-")
            return
        for port in list(self.ports):
            self._on_readable(port)

    def _report(self, decision: Decision, ifname: str, **extra) -> None:
        rec = decision_record(decision, ifname)
        if extra:
            if extra.get("origin") == "l2_copy":  # another relay's copy: looked up, never relayed
                rec["verdict"] = "look_up" if decision.relay else "drop"
                if decision.relay:
                    rec["reason"] = "l2_copy"
            rec.update(extra)
        line = to_json(rec) if self.settings.json_output else logfmt(rec)
        self.out.write(line + "\n")
        self.out.flush()

    def _send_error(self, err: int, ifname: str) -> None:
        name = self.stats.send_error(ifname, err)
        self.send_errors[name] += 1
        now = self.clock()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            self.log.warning("send_failed", extra={"kv": {"interface": ifname, "errno": name, "total": sum(self.send_errors.values())}})

    def _rate_limited_error(self, what: str, ifname: str) -> None:
        now = self.clock()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            self.log.error(what, exc_info=True, extra={"kv": {"interface": ifname, "total": self.internal_errors}})

    # -- interfaces that go away and come back (docs/operations.md) -------------
    def _open_links(self) -> None:
        try:
            self.links = linkwatch.LinkWatcher()
        except OSError as exc:  # no rtnetlink (a very unusual sandbox): run on, without re-binding
            self.log.warning("link_events_unavailable", extra={"kv": {"error": exc.strerror or str(exc)}})

    def _on_link_events(self) -> None:
        """Link events, in order: let go of a port whose interface went down, was deleted or
        renamed away; then bind every configured name that is (back) up."""
        try:
            events, overrun = self.links.read()
            touched: set[str] = set()
            for ev in events:
                for port in list(self.ports):
                    if ev.index != port.capture.ifindex:
                        continue
                    if ev.deleted or not ev.up or ev.name != port.ifname:
                        why = "deleted" if ev.deleted else ("down" if not ev.up else f"renamed to {ev.name}")
                        self._drop_port(port, why)
                    elif port.emitter is not None:  # an MTU change is one of these events
                        port.emitter.refresh_mtu()
                if ev.name is not None and ev.name in self._waiting:
                    touched.add(ev.name)
            if overrun:  # events were lost (a flap among them may have cost a port its reader): re-open all
                for port in list(self.ports):
                    self._drop_port(port, "link events lost")
                touched.update(self._waiting)
            for ifname in sorted(touched):
                self._reconcile(ifname)
            if events or overrun or self.links.addresses_changed:
                self.links.addresses_changed = False
                self._vips_may_have_changed()
        except Exception:
            self.internal_errors += 1
            self.stats.internal_errors += 1
            self._rate_limited_error("link_event_error", "-")

    def _idle_wakeup(self, port: _Port) -> None:
        """A wake-up with no frame. When the interface went down the kernel flags the capture
        socket with ENETDOWN (the event loop sees an error, not data): read and clear it, let go
        of the port and bind again as soon as the name is up (right away if it already is)."""
        if self.links is None or port not in self.ports or self.nflog is not None:
            return  # NFLOG: one shared socket, an empty share is normal; link events do the work
        try:
            err = port.capture.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as exc:
            err = exc.errno or errno.EBADF
        if err:
            self._drop_port(port, errno.errorcode.get(err, str(err)))
            self._reconcile(port.ifname)

    def _forget_capture_stats(self, ifname: str) -> None:
        """An AF_PACKET capture is closing: stop polling its kernel drops, keep its own counts."""
        self.stats.overrun_probes.pop(ifname, None)
        self.stats.retire_capture(ifname)

    def _drop_port(self, port: _Port, why: str) -> None:
        if self.nflog is not None:  # the shared socket stays read; its old ifindex is no longer accepted
            self.nflog.remove_port(port.capture)
        else:
            loop = asyncio.get_running_loop()
            try:
                loop.remove_reader(port.capture.fileno())
            except (OSError, ValueError):
                pass
            self._forget_capture_stats(port.ifname)
        self.ports.remove(port)
        port.close()
        self._waiting.add(port.ifname)
        self.log.warning("interface_lost", extra={"kv": {"interface": port.ifname, "reason": why}})
        self._notify_status()

    def _reconcile(self, ifname: str) -> None:
        """Bind ``ifname`` if an interface of that name is up and no port serves it."""
        if ifname not in self._waiting or any(p.ifname == ifname for p in self.ports):
            return
        state = self.links.state(ifname)
        if state is None or not state[1]:
            return
        try:
            port = self._add_port(ifname)
        except OSError as exc:  # gone again, or no longer permitted: the next event retries
            self.log.warning("interface_bind_failed", extra={"kv": {"interface": ifname, "error": exc.strerror or str(exc)}})
            return
        self._waiting.discard(ifname)
        held = self.relay.shunner.samples
        set_blocked = getattr(port.capture, "set_blocked", None)
        if held and set_blocked is not None:  # a new socket starts with no kernel drops: re-apply them
            set_blocked(held)
        if self.nflog is None:  # NFLOG: the shared socket's reader serves every port already
            asyncio.get_running_loop().add_reader(port.capture.fileno(), self._on_readable, port)
        self.log.info("interface_bound", extra={"kv": {"interface": ifname, "ifindex": port.capture.ifindex}})
        self._notify_status()

    def _status_text(self) -> str:
        bound = ",".join(p.ifname for p in self.ports)
        text = f"relaying on {bound}" if bound else "not relaying"
        if self._waiting:
            text += f"; waiting for interface {','.join(sorted(self._waiting))} (absent or down)"
        return text

    def _notify_status(self) -> None:
        if self.stats.ready:  # before READY=1 the start-up sends its own STATUS
            self.notifier.notify(f"STATUS={self._status_text()}")

    async def _waiting_loop(self, stop: asyncio.Event, interval: float = 60.0) -> None:
        """A configured interface that never appears (a typo, a NIC that is not there) stays
        visible: one warning a minute while any is waited for (and the interfaces_waiting gauge)."""
        since: dict[str, float] = {}
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass
            else:
                break
            now = self.clock()
            for name in list(since):
                if name not in self._waiting:
                    del since[name]
            for name in self._waiting:
                since.setdefault(name, now - interval)
            if self._waiting:
                self.log.warning("interfaces_waiting", extra={"kv": {
                    "interfaces": ",".join(sorted(self._waiting)),
                    "seconds": int(now - min(since.values())),
                    "hint": "no such interface, or down; it is bound as soon as it is up (check -i/interfaces)"}})

    # -- reload (SIGHUP) -------------------------------------------------------
    def reload(self) -> bool:
        """Load the configuration again and apply what can change live, between two batches
        (nothing in flight is dropped). An invalid configuration, or an interface that cannot
        be opened, is logged and counted and the running configuration stays. True if applied."""
        from pmtud_relay import config

        if self.reloader is None or self.config is None:
            return False
        try:
            new = self.reloader().settings
        except config.ConfigError as exc:
            return self._reload_failed(str(exc))
        old = self.config
        live, restart = config.changes(old, new)
        if "interfaces" in live and self.settings.capture != "afpacket":
            live.remove("interfaces")  # one NFLOG socket and its rules: a restart applies it
            restart.append("interfaces")
        new = replace(new, **{k: getattr(old, k) for k in restart})
        if "interfaces" in live and new.interfaces:  # empty: keep the default-route ports open
            error = self._apply_interfaces(new.interfaces)
            if error:
                return self._reload_failed(f"interfaces: {error}")
        if restart:
            self.log.warning("config_restart_needed", extra={"kv": {"keys": ",".join(restart)}})
        discover = config.discover_vips(new)
        relay_config = config.relay_config(new, vips=self.relay.policy.vips if discover else None)
        self.relay.reconfigure(relay_config, self.clock())
        self.settings = replace(self.settings, relay=relay_config, discover_vips=discover,
                                vip_refresh=new.vip_refresh, summary_interval=new.summary_interval,
                                vip_interfaces=tuple(new.vip_interfaces),
                                interfaces=tuple(p.ifname for p in self.ports) + tuple(sorted(self._waiting)))
        if new.log_format != old.log_format:
            logs.setup(new.log_level, new.log_format)
        elif new.log_level != old.log_level:
            logs.set_level(new.log_level)
        self.config = new
        self.stats.reloaded(True)
        self.log.info("config_reloaded", extra={"kv": {"changed": ",".join(live) or "none"}})
        wide = config.wide_vips(new)
        if wide and "vips" in live:  # only loaded with allow_any_vip: meant, but say so
            self.log.warning("vip_prefix_allows_any", extra={"kv": {
                "prefixes": ",".join(wide), "effect": "nearly every quoted source passes the VIP check"}})
        if discover and (not config.discover_vips(old) or new.vip_interfaces != old.vip_interfaces):
            self._vip_task = asyncio.get_running_loop().create_task(self._refresh_vips_logged())
        return True

    def _reload_failed(self, error: str) -> bool:
        self.stats.reloaded(False)
        self.log.error("config_reload_failed", extra={"kv": {"error": error}})
        return False

    def _apply_interfaces(self, wanted: tuple[str, ...]) -> str | None:
        """Open ports for new interfaces first (all or nothing), then close the removed ones.
        Returns None, or the error that left everything as it was."""
        loop = asyncio.get_running_loop()
        current = {p.ifname: p for p in self.ports}
        added = []
        absent = []  # no such interface (yet): waited for, like at start
        try:
            for ifname in wanted:
                if ifname not in current and ifname not in self._waiting:
                    try:
                        added.append(self._add_port(ifname))
                    except OSError as exc:
                        if exc.errno not in (errno.ENODEV, errno.ENXIO) or self.links is None:
                            raise
                        absent.append(ifname)
        except OSError as exc:
            for port in added:
                self.ports.remove(port)
                self._forget_capture_stats(port.ifname)
                port.close()
            return f"{ifname}: {exc.strerror or exc}"
        for port in added:
            loop.add_reader(port.capture.fileno(), self._on_readable, port)
        self._waiting &= set(wanted)
        self._waiting.update(absent)
        if absent:
            self.log.warning("interfaces_waiting", extra={"kv": {
                "interfaces": ",".join(absent), "reason": "no such interface",
                "hint": "bound as soon as an interface of that name is up (check -i/interfaces)"}})
        for ifname, port in current.items():
            if ifname not in wanted:
                loop.remove_reader(port.capture.fileno())
                self._forget_capture_stats(ifname)
                self.ports.remove(port)
                port.close()
        return None

    # -- service addresses ----------------------------------------------------
    def apply_vips(self, vips: VipSet, initial: bool = False) -> bool:
        """Apply a discovered set of service addresses if it changed (logged with the
        addresses; at start always). With none, every PTB is dropped: a warning says so."""
        policy = self.relay.policy
        if vips == policy.vips and not initial:
            return False
        if vips != policy.vips:
            self.relay.reconfigure(self.relay.config.with_policy(replace(policy, vips=vips)), self.clock())
        self.log.info("vips_changed", extra={"kv": {"vips": _vip_text(vips), "count": len(vips),
                                                    "interfaces": ",".join(self.settings.vip_interfaces)}})
        if not len(vips):
            self.log.warning("no_vips", extra={"kv": {
                "looked_on": ",".join(self.settings.vip_interfaces),
                "hint": "no service address found: every PTB will be dropped (not_vip); put the VIPs there, "
                        "set vip_interfaces to where they are, or list them in vips (docs/deployment.md)"}})
        return True

    async def refresh_vips(self, initial: bool = False) -> bool:
        """Re-discover service addresses (two rtnetlink dumps, on the loop: no thread) and apply them."""
        return self.apply_vips(VipSet(hostinfo.discover_vips(self.settings.vip_interfaces)), initial)

    def _vips_may_have_changed(self) -> None:
        """An address or link event: re-read the service addresses once the burst is over."""
        if not self.settings.discover_vips or self._vip_refresh_pending:
            return
        self._vip_refresh_pending = True

        def later() -> None:
            self._vip_refresh_pending = False
            self._vip_task = asyncio.ensure_future(self._refresh_vips_logged())

        asyncio.get_running_loop().call_later(VIP_EVENT_DELAY, later)

    async def _refresh_vips_logged(self) -> None:
        try:
            await self.refresh_vips()
        except Exception:
            self._rate_limited_error("vip_discovery_failed", "-")

    async def _vip_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.settings.vip_refresh)
            except asyncio.TimeoutError:
                pass
            else:
                break
            if not self.settings.discover_vips:
                continue
            await self._refresh_vips_logged()

    async def _summary_loop(self, stop: asyncio.Event) -> None:
        last = dict(self.relay.counts)
        last_owner: dict[str, int] = {}
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.settings.summary_interval)
            except asyncio.TimeoutError:
                pass
            now_counts = dict(self.relay.counts)
            delta = {r.value: now_counts[r] - last[r] for r in Reason if now_counts[r] - last[r]}
            last = now_counts
            relayed = delta.pop(Reason.RELAYED.value, 0)
            kv = {"relayed": relayed, "dropped": sum(delta.values())}
            kv.update({f"drop_{k}": v for k, v in sorted(delta.items())})
            kv["send_errors"] = sum(self.send_errors.values())
            kv["dedup_keys"] = len(self.relay.dedup)
            kv["rate_sources"] = len(self.relay.limiter)
            kv.update(self._capture_faults())
            if self.relay.shunner:  # sources the capture filter drops now (AF_PACKET only)
                kv["kernel_held_sources"] = len(self.relay.shunner)
            if self.nflog is not None:
                kv.update(self.nflog.stats())
            if self.peering is not None:
                kv.update(self.peering.stats())
            if self.confirmer is not None:  # owner verdicts in the interval (docs/confirmation.md)
                owner: dict[str, int] = {}
                for (_origin, verdict), n in self.confirmer.verdicts.items():
                    owner["owner_" + verdict.value] = owner.get("owner_" + verdict.value, 0) + n
                kv.update({k: n - last_owner.get(k, 0) for k, n in sorted(owner.items()) if n - last_owner.get(k, 0)})
                last_owner = owner
            self.log.info("summary", extra={"kv": kv})
            self.notifier.notify(f"STATUS={self._status_text()}; relayed {self.relay.counts[Reason.RELAYED]} "
                                 "PTBs since start")

    def _capture_faults(self) -> dict[str, int]:
        """Capture events since start, over every interface, that happened at all:
        ``capture_truncated``, ``capture_ring_resync`` (for the summary and stopped lines)."""
        faults: dict[str, int] = {}
        for (_ifname, kind), n in self.stats.capture_totals().items():
            faults[kind] = faults.get(kind, 0) + n
        return {f"capture_{kind}": n for kind, n in sorted(faults.items()) if n}

    async def _watchdog_loop(self, stop: asyncio.Event, interval: float) -> None:
        while not stop.is_set():
            self.notifier.notify("WATCHDOG=1")
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass

    # -- main -----------------------------------------------------------------
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
            from pmtud_relay.confirm.service import Confirmer

            self.confirmer = Confirmer(loop, self.owner_lookup, enabled=self.owner_lookup is not None,
                                       clock=self.clock, observer=self._on_owner_verdict)
        if self.metrics_sock is not None:
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
            await server.start(self.metrics_sock)
        tasks = []
        if self.settings.discover_vips:
            await self.refresh_vips(initial=True)
        tasks.append(asyncio.create_task(self._vip_loop(stop)))
        if self.nflog is not None:
            loop.add_reader(self.nflog.fileno(), self._on_nflog_readable)
        else:
            for port in self.ports:
                loop.add_reader(port.capture.fileno(), self._on_readable, port)
        if self.links is not None:
            loop.add_reader(self.links.fileno(), self._on_link_events)
            for port in list(self.ports):  # bound while down: its socket carries ENETDOWN until up
                if self.links.state(port.ifname) != (port.capture.ifindex, True):
                    self._drop_port(port, "down")
            for ifname in self._absent_at_start:  # appeared since open() (its event may be queued too)
                self._reconcile(ifname)
        tasks.append(asyncio.create_task(self._summary_loop(stop)))
        tasks.append(asyncio.create_task(self._waiting_loop(stop)))
        if self.notifier.watchdog_interval:
            tasks.append(asyncio.create_task(self._watchdog_loop(stop, self.notifier.watchdog_interval)))
        if self.peering is not None:
            self.peering.confirmer = self.confirmer  # owner verdicts for peers' PTBs: acks (docs/peers.md)
            await self.peering.start()
        absent = [n for n in self._absent_at_start if n in self._waiting]
        if absent:
            self.log.warning("interfaces_waiting", extra={"kv": {
                "interfaces": ",".join(absent), "reason": "no such interface",
                "hint": "bound as soon as an interface of that name is up (check -i/interfaces)"}})
        self.log.info(
            "ready",
            extra={
                "kv": {
                    "interfaces": ",".join(p.ifname for p in self.ports),
                    **({"waiting": ",".join(sorted(self._waiting))} if self._waiting else {}),
                    "mode": "dry-run" if self.settings.dry_run else (self.settings.peers.fanout if self.settings.peers else "l2"),
                    "capture": self.settings.capture if self.nflog is None else f"nflog:{self.nflog.group}",
                    "vips": _vip_text(self.relay.policy.vips),
                    **(self.peering.describe() if self.peering is not None else {}),
                }
            },
        )
        self.stats.ready = True
        # READY=1 even while waiting for an interface: the service is up (a late interface is a
        # state, not a failed start); STATUS and /readyz say what it waits for.
        self.notifier.notify("READY=1", f"STATUS={self._status_text()}")
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
            if self.nflog is not None:
                loop.remove_reader(self.nflog.fileno())
            else:
                for port in self.ports:
                    loop.remove_reader(port.capture.fileno())
            if self.links is not None:
                loop.remove_reader(self.links.fileno())
            if self._hold_timer is not None:
                self._hold_timer.cancel()
                self._hold_timer = self._hold_timer_at = None
            if self._vip_task is not None:
                tasks.append(self._vip_task)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
                # A second signal during shutdown must not kill us before managed rules are
                # removed (systemd's TimeoutStopSec/SIGKILL still bounds a hung stop).
                signal.signal(sig, signal.SIG_IGN)
            counts = {r.value: n for r, n in self.relay.counts.items() if n}
            if self.relay.limiter.reserve_relayed:  # of "relayed", those with a reserve token
                counts["relayed_from_reserve"] = self.relay.limiter.reserve_relayed
            counts.update(self._capture_faults())
            if self.peering is not None:
                counts.update(self.peering.stats())
            self.log.info("stopped", extra={"kv": counts})
            self.notifier.close()


VIP_EVENT_DELAY = 0.05  # seconds from an address event to the re-read (a burst gives one)
VIP_LOG_MAX = 32  # addresses named in a log line (kube-ipvs0 may hold thousands)


def _vip_text(vips: VipSet) -> str:
    nets = vips.networks
    text = ",".join(str(n) for n in nets[:VIP_LOG_MAX]) or "none"
    if len(nets) > VIP_LOG_MAX:
        text += f",…+{len(nets) - VIP_LOG_MAX}"
    return text


def run_event_loop(coro_factory) -> None:
    """Run with uvloop when it is installed, else the stdlib loop.

    The uvloop loop is made for this thread only, never through the global event loop policy:
    pyroute2 0.8+ makes asyncio loops of its own in worker threads, for netlink sockets, which
    uvloop cannot open."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro_factory())
        return
    if hasattr(uvloop, "run"):  # uvloop 0.18+
        uvloop.run(coro_factory())
        return
    # uvloop 0.17 (Debian 12): what asyncio.run does, with a uvloop loop
    loop = uvloop.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(coro_factory())
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def parse_vips(values) -> VipSet:
    return VipSet(ipaddress.ip_network(v, strict=False) for v in values)

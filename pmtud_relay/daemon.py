"""The asyncio daemon: capture sockets → sans-IO relay → emitters.

All I/O and the clock live here; decisions come from :class:`pmtud_relay.core.Relay`.
Each capture socket is registered with the event loop; on every wake-up the daemon
drains every queued frame (one clock read per batch), decides, and sends the copies
out of the interface the PTB came in on.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable, TextIO

from pmtud_relay import hostinfo, logs
from pmtud_relay.sdnotify import Notifier
from pmtud_relay.capture.afpacket import PacketCapture
from pmtud_relay.core.policy import VipSet
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Decision, Relay, RelayConfig
from pmtud_relay.emit.l2 import L2Emitter
from pmtud_relay.report import decision_record, logfmt, to_json


@dataclass(frozen=True)
class DaemonSettings:
    interfaces: tuple[str, ...]
    relay: RelayConfig
    discover_vips: bool = True  # False: relay.policy.vips is the configured set
    dry_run: bool = False
    json_output: bool = False  # dry-run decision lines as JSON
    vip_refresh: float = 5.0  # seconds between service-address re-discovery
    summary_interval: float = 60.0


class _Port:
    """One interface: its capture socket and (unless dry-run) its emitter."""

    __slots__ = ("ifname", "capture", "emitter", "mac")

    def __init__(self, ifname: str, dry_run: bool):
        self.ifname = ifname
        self.capture = PacketCapture(ifname)
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
        self._stop = asyncio.Event()
        self.notifier = Notifier()

    # -- set-up ---------------------------------------------------------------
    def open(self) -> None:
        """Open every capture and emit socket; raises OSError (e.g. EPERM) to the CLI."""
        try:
            for ifname in self.settings.interfaces:
                self.ports.append(_Port(ifname, self.settings.dry_run))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for port in self.ports:
            port.close()
        self.ports.clear()

    def stop(self) -> None:
        self._stop.set()

    # -- the packet path ------------------------------------------------------
    def _on_readable(self, port: _Port) -> None:
        try:
            batch = port.capture.drain()
            if not batch:
                return
            now = self.clock()
            handle = self.relay.handle
            emitter = port.emitter
            mac = port.mac
            for frame, pkttype in batch:
                decision = handle(frame, now, mac, pkttype)
                if decision.relay and emitter is not None:
                    err = emitter.send(decision.copy)
                    if err:
                        self._send_error(err, port.ifname)
                if self.settings.dry_run:
                    self._report(decision, port.ifname)
                elif decision.relay and self.log.isEnabledFor(10):
                    self.log.debug("relayed", extra={"kv": decision_record(decision, port.ifname)})
        except Exception:  # never let one bad frame or a bug kill the daemon
            self.internal_errors += 1
            self._rate_limited_error("packet_path_error", port.ifname)

    def _report(self, decision: Decision, ifname: str) -> None:
        rec = decision_record(decision, ifname)
        line = to_json(rec) if self.settings.json_output else logfmt(rec)
        self.out.write(line + "\n")
        self.out.flush()

    def _send_error(self, err: int, ifname: str) -> None:
        name = errno.errorcode.get(err, str(err))
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

    # -- service addresses ----------------------------------------------------
    def apply_vips(self, vips: VipSet) -> bool:
        """Apply a discovered set of service addresses if it changed. True if changed."""
        policy = self.relay.policy
        if vips == policy.vips:
            return False
        self.relay.reconfigure(self.relay.config.with_policy(replace(policy, vips=vips)), self.clock())
        self.log.info("vips_changed", extra={"kv": {"vips": _vip_text(vips), "count": len(vips)}})
        if not len(vips):
            self.log.warning(
                "no_vips",
                extra={"kv": {"hint": "no address on lo or a dummy interface besides loopback; set --vip"}},
            )
        return True

    async def refresh_vips(self) -> bool:
        """Re-discover service addresses (netlink dump in a worker thread: pyroute2's
        synchronous API runs an event loop of its own) and apply them."""
        networks = await asyncio.get_running_loop().run_in_executor(None, hostinfo.discover_vips)
        return self.apply_vips(VipSet(networks))

    async def _vip_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.vip_refresh)
            except asyncio.TimeoutError:
                pass
            else:
                break
            try:
                await self.refresh_vips()
            except Exception:
                self._rate_limited_error("vip_discovery_failed", "-")

    async def _summary_loop(self) -> None:
        last = dict(self.relay.counts)
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.summary_interval)
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
            self.log.info("summary", extra={"kv": kv})
            self.notifier.notify(f"STATUS=relayed {self.relay.counts[Reason.RELAYED]} PTBs since start")

    async def _watchdog_loop(self, interval: float) -> None:
        while not self._stop.is_set():
            self.notifier.notify("WATCHDOG=1")
            try:
                await asyncio.wait_for(self._stop.wait(), interval)
            except asyncio.TimeoutError:
                pass

    # -- main -----------------------------------------------------------------
    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        tasks = []
        if self.settings.discover_vips:
            await self.refresh_vips()
            tasks.append(asyncio.create_task(self._vip_loop()))
        for port in self.ports:
            loop.add_reader(port.capture.fileno(), self._on_readable, port)
        tasks.append(asyncio.create_task(self._summary_loop()))
        if self.notifier.watchdog_interval:
            tasks.append(asyncio.create_task(self._watchdog_loop(self.notifier.watchdog_interval)))
        self.log.info(
            "ready",
            extra={
                "kv": {
                    "interfaces": ",".join(p.ifname for p in self.ports),
                    "mode": "dry-run" if self.settings.dry_run else "l2",
                    "vips": _vip_text(self.relay.policy.vips),
                }
            },
        )
        self.notifier.notify("READY=1", f"STATUS=relaying on {','.join(p.ifname for p in self.ports)}")
        try:
            await self._stop.wait()
        finally:
            self.notifier.notify("STOPPING=1")
            for port in self.ports:
                loop.remove_reader(port.capture.fileno())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            counts = {r.value: n for r, n in self.relay.counts.items() if n}
            self.log.info("stopped", extra={"kv": counts})
            self.notifier.close()


def _vip_text(vips: VipSet) -> str:
    return ",".join(str(n) for n in vips.networks) or "none"


def run_event_loop(coro_factory) -> None:
    """Run with uvloop when it is installed, else the stdlib loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro_factory())
    else:
        uvloop.run(coro_factory())


def parse_vips(values) -> VipSet:
    return VipSet(ipaddress.ip_network(v, strict=False) for v in values)

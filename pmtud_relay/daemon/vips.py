"""Service addresses (VIPs): discovered on this host, re-read on address and link events (once a
burst is over) and every ``vip_refresh`` seconds, and put into the relay's policy when they
change. With none, every PTB is dropped (not_vip): a warning says so.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

from pmtud_relay import hostinfo
from pmtud_relay.core.policy import VipSet
from pmtud_relay.core.relay import Relay

if TYPE_CHECKING:
    from pmtud_relay.config.records import DaemonSettings
    from pmtud_relay.daemon.faults import Faults

EVENT_DELAY = 0.05  # seconds from an address event to the re-read (a burst gives one)
LOG_MAX = 32  # addresses named in a log line (kube-ipvs0 may hold thousands)


def parse_vips(values: Iterable[str]) -> VipSet:
    return VipSet(ipaddress.ip_network(v, strict=False) for v in values)


def vip_text(vips: VipSet) -> str:
    nets = vips.networks
    text = ",".join(str(n) for n in nets[:LOG_MAX]) or "none"
    if len(nets) > LOG_MAX:
        text += f",…+{len(nets) - LOG_MAX}"
    return text


class Vips:
    """``settings``: the daemon's settings in force (reload replaces them): discover_vips,
    vip_interfaces and vip_refresh are read from there each time."""

    def __init__(self, relay: Relay, settings: Callable[[], DaemonSettings], clock: Callable[[], float],
                 log: logging.Logger, faults: Faults):
        self.relay = relay
        self.settings = settings
        self.clock = clock
        self.log = log
        self.faults = faults
        self._pending = False
        self.task: asyncio.Future[None] | None = None  # the latest re-read started outside the loop

    def apply(self, vips: VipSet, initial: bool = False) -> bool:
        """Apply a discovered set of service addresses if it changed (logged with the
        addresses; at start always)."""
        policy = self.relay.policy
        if vips == policy.vips and not initial:
            return False
        if vips != policy.vips:
            self.relay.reconfigure(self.relay.config.with_policy(replace(policy, vips=vips)), self.clock())
        where = self.settings().vip_interfaces
        self.log.info("vips_changed", extra={"kv": {"vips": vip_text(vips), "count": len(vips),
                                                    "interfaces": ",".join(where)}})
        if not len(vips):
            self.log.warning("no_vips", extra={"kv": {
                "looked_on": ",".join(where),
                "hint": "no service address found: every PTB will be dropped (not_vip); put the VIPs there, "
                        "set vip_interfaces to where they are, or list them in vips (docs/deployment.md)"}})
        return True

    async def refresh(self, initial: bool = False) -> bool:
        """Re-discover service addresses (two rtnetlink dumps, on the loop: no thread) and apply them."""
        return self.apply(VipSet(hostinfo.discover_vips(self.settings().vip_interfaces)), initial)

    async def refresh_logged(self) -> None:
        try:
            await self.refresh()
        except Exception:
            self.faults.log_error("vip_discovery_failed", "-")

    def refresh_soon(self) -> None:
        """Re-read now, on the loop (a reload changed where they are looked for)."""
        self.task = asyncio.get_running_loop().create_task(self.refresh_logged())

    def may_have_changed(self) -> None:
        """An address or link event: re-read the service addresses once the burst is over."""
        if not self.settings().discover_vips or self._pending:
            return
        self._pending = True

        def later() -> None:
            self._pending = False
            self.task = asyncio.ensure_future(self.refresh_logged())

        asyncio.get_running_loop().call_later(EVENT_DELAY, later)

    async def loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.settings().vip_refresh)
            except asyncio.TimeoutError:
                pass
            else:
                break
            if not self.settings().discover_vips:
                continue
            await self.refresh_logged()

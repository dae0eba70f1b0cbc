"""Kernel holds (core/shun.py): sources flooding far past their bucket are dropped in the capture
filter for a while. The core decides who is held and until when; this puts the held set into
every capture that can hold sources (``Capture.holds_sources``) and ends holds on time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import TYPE_CHECKING, Callable

from pmtud_relay.core.relay import Relay

if TYPE_CHECKING:
    from pmtud_relay.daemon.faults import Faults
    from pmtud_relay.daemon.port import Port


def _ip(source: bytes) -> str:
    return str(ipaddress.ip_address(source))


class KernelHolds:
    def __init__(self, relay: Relay, ports: list[Port], clock: Callable[[], float], log: logging.Logger,
                 faults: Faults):
        self.relay = relay
        self.ports = ports
        self.clock = clock
        self.log = log
        self.faults = faults
        self._timer: asyncio.TimerHandle | None = None  # ends kernel holds on time
        self._timer_at: float | None = None

    def apply(self, blocked: frozenset[bytes]) -> None:
        """Put the held set into every capture that can hold sources and arm the expiry timer."""
        samples = self.relay.shunner.samples  # each held source and its 1-in-N sample
        for port in self.ports:
            if port.capture.holds_sources:
                port.capture.set_blocked(samples)
        by_address = sorted(blocked, key=_ip)
        self.log.warning("flood_sources_dropped_in_kernel", extra={"kv": {
            "sources": ",".join(sorted(_ip(b) for b in blocked)) or "none",
            "count": len(blocked),
            "sample": ",".join(f"1/{samples[b]}" for b in by_address) or "none"}})
        self.arm()

    def arm(self) -> None:
        """Wake up when the earliest hold ends. A held source's frames mostly never reach
        userspace, so on a quiet host no batch would ever come to end its hold: the timer does."""
        expiry = self.relay.shunner.next_expiry
        if expiry == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = expiry
        if expiry is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving (a unit test driving batches by hand): batches expire holds
            self._timer_at = None
            return
        # Relative to self.clock (what the shunner's times are on), not loop.time(); 1 ms late
        # rather than early (uvloop's timers have millisecond resolution).
        self._timer = loop.call_later(max(0.0, expiry - self.clock()) + 0.001, self.on_expiry)

    def on_expiry(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            blocked = self.relay.shunner.expire(self.clock())
            if blocked is not None:
                self.apply(blocked)
            else:  # woke a little early: wait for it again
                self.arm()
        except Exception:  # noqa: BLE001 - a failed filter update is retried by the next batch
            self.faults.internal("kernel_hold_expiry_error", "-")

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None

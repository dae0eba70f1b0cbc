"""Interfaces that come and go (docs/operations.md): the ports the daemon serves and the names
it waits for.

A port is one configured interface that is up: its capture and (unless no L2 copy is sent) its
emitter. A configured name with no port (absent at start, down, deleted, renamed away) is
*waited for* and bound again as soon as an interface of that name is up, on a link event or
on a frameless wake-up of its capture (ENETDOWN). :class:`Interfaces` does all of that through
a :class:`~pmtud_relay.daemon.capture_modes.CaptureMode` and a link watcher; both can be fakes,
so the whole lifecycle runs in a test without a kernel.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import TYPE_CHECKING, Callable, Protocol

from pmtud_relay.capture.base import HeldSources
from pmtud_relay.daemon.port import Emitter, Port

if TYPE_CHECKING:
    from pmtud_relay.daemon.capture_modes import CaptureMode, OnReadable
    from pmtud_relay.daemon.faults import Faults
    from pmtud_relay.netlink.linkwatch import LinkEvent


class Links(Protocol):
    """What the lifecycle needs of the link watcher (pmtud_relay.netlink.linkwatch.LinkWatcher)."""

    addresses_changed: bool

    def fileno(self) -> int: ...
    def read(self) -> tuple[list[LinkEvent], bool]: ...
    def state(self, name: str) -> tuple[int, bool] | None: ...
    def close(self) -> None: ...


ABSENT = (errno.ENODEV, errno.ENXIO)  # no interface of that name (yet)
WAITING_HINT = "bound as soon as an interface of that name is up (check -i/interfaces)"


class Interfaces:
    """The ports served and the configured names waited for.

    ``emitter``: makes a port's emitter (None: no L2 copy is sent: dry-run, or peers only).
    ``links``: the link watcher; None where rtnetlink is unavailable (then nothing re-binds and
    an absent interface at start is an error). ``held``: the sources held in the kernel now,
    put into every new capture that can hold them. ``on_change``: ports or waited-for names
    changed (systemd STATUS). ``on_link_event``: any link or address event (VIPs re-read).
    """

    def __init__(
        self,
        mode: CaptureMode,
        waiting: set[str],
        faults: Faults,
        log: logging.Logger,
        emitter: Callable[[str], Emitter] | None = None,
        links: Links | None = None,
        held: Callable[[], HeldSources] = dict,
        on_change: Callable[[], None] = lambda: None,
        on_link_event: Callable[[], None] = lambda: None,
    ):
        self.mode = mode
        self.ports: list[Port] = []
        self.waiting = waiting  # the same set as metrics.Stats.waiting (gauge, /readyz)
        self.absent_at_start: list[str] = []
        self.faults = faults
        self.log = log
        self.emitter = emitter
        self.links = links
        self.held = held
        self.on_change = on_change
        self.on_link_event = on_link_event
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- opening ------------------------------------------------------------------------------------
    def open_or_wait(self, ifname: str) -> None:
        """Open the port of a configured interface at start; one that does not exist (yet) is a
        state, not an error: it is waited for and bound when it appears (link events). Without
        link events nothing would ever bind it, so then the error goes to the CLI (exit 2)."""
        try:
            self.add(ifname)
        except OSError as exc:
            if exc.errno not in ABSENT or self.links is None:
                raise
            self.waiting.add(ifname)
            self.absent_at_start.append(ifname)

    def add(self, ifname: str) -> Port:
        """Open a port for the interface now called ``ifname`` (not served by the loop yet)."""
        capture = self.mode.open(ifname)
        try:
            port = Port(ifname, capture, self.emitter(ifname) if self.emitter is not None else None)
        except BaseException:
            self.mode.release(capture)
            capture.close()
            raise
        self.mode.adopt(capture)
        self.ports.append(port)
        return port

    def remove(self, port: Port) -> None:
        """Stop serving ``port`` and close it (its name is not waited for: see :meth:`drop`)."""
        self.mode.unserve(port)
        self.mode.release(port.capture)
        self.ports.remove(port)
        port.close()

    # -- serving ------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop, on_readable: OnReadable) -> None:
        """Serving begins: every port wakes ``on_readable``; link events are read; a port bound
        while down is let go of (its socket carries ENETDOWN until up); a name absent at open()
        that appeared since is bound (its event may be queued too)."""
        self.loop = loop
        self.mode.start(loop, self.ports, on_readable)
        links = self.links
        if links is None:
            return
        loop.add_reader(links.fileno(), self.on_link_events)
        for port in list(self.ports):
            if links.state(port.ifname) != (port.capture.ifindex, True):
                self.drop(port, "down")
        for ifname in self.absent_at_start:
            self.reconcile(ifname)

    def stop(self) -> None:
        loop, self.loop = self.loop, None
        self.mode.stop()
        if loop is not None and self.links is not None:
            loop.remove_reader(self.links.fileno())

    def close(self) -> None:
        """Close every port, the capture mode and the link watcher (idempotent)."""
        if self.links is not None:
            self.links.close()
            self.links = None
        for port in self.ports:
            port.close()
        self.ports.clear()
        self.mode.close()

    # -- interfaces that go away and come back ----------------------------------------------------
    def on_link_events(self) -> None:
        """Link events, in order: let go of a port whose interface went down, was deleted or
        renamed away; then bind every configured name that is (back) up."""
        links = self.links
        try:
            assert links is not None
            events, overrun = links.read()
            touched: set[str] = set()
            for ev in events:
                for port in list(self.ports):
                    if ev.index != port.capture.ifindex:
                        continue
                    if ev.deleted or not ev.up or ev.name != port.ifname:
                        why = "deleted" if ev.deleted else ("down" if not ev.up else f"renamed to {ev.name}")
                        self.drop(port, why)
                    elif port.emitter is not None:  # an MTU change is one of these events
                        port.emitter.refresh_mtu()
                if ev.name is not None and ev.name in self.waiting:
                    touched.add(ev.name)
            if overrun:  # events were lost (a flap among them may have cost a port its reader): re-open all
                for port in list(self.ports):
                    self.drop(port, "link events lost")
                touched.update(self.waiting)
            for ifname in sorted(touched):
                self.reconcile(ifname)
            if events or overrun or links.addresses_changed:
                links.addresses_changed = False
                self.on_link_event()
        except Exception:
            self.faults.internal("link_event_error", "-")

    def idle_wakeup(self, port: Port) -> None:
        """A wake-up with no frame. When the interface went down the kernel flags the capture
        socket with ENETDOWN (the event loop sees an error, not data): read and clear it, let go
        of the port and bind again as soon as the name is up (right away if it already is)."""
        if self.links is None or port not in self.ports:
            return
        err = port.capture.pending_error()  # NFLOG: always 0, link events do the work
        if err:
            self.drop(port, errno.errorcode.get(err, str(err)))
            self.reconcile(port.ifname)

    def drop(self, port: Port, why: str) -> None:
        """Let go of ``port`` and wait for its name."""
        self.remove(port)
        self.waiting.add(port.ifname)
        self.log.warning("interface_lost", extra={"kv": {"interface": port.ifname, "reason": why}})
        self.on_change()

    def reconcile(self, ifname: str) -> None:
        """Bind ``ifname`` if an interface of that name is up and no port serves it."""
        if ifname not in self.waiting or any(p.ifname == ifname for p in self.ports):
            return
        state = self.links.state(ifname) if self.links is not None else None
        if state is None or not state[1]:
            return
        try:
            port = self.add(ifname)
        except OSError as exc:  # gone again, or no longer permitted: the next event retries
            self.log.warning("interface_bind_failed", extra={"kv": {"interface": ifname,
                                                                    "error": exc.strerror or str(exc)}})
            return
        self.waiting.discard(ifname)
        held = self.held()
        if held and port.capture.holds_sources:  # a new socket starts with no kernel drops: re-apply them
            port.capture.set_blocked(held)
        self.mode.serve(port)
        self.log.info("interface_bound", extra={"kv": {"interface": ifname, "ifindex": port.capture.ifindex}})
        self.on_change()

    # -- reload -------------------------------------------------------------------------------------
    def apply(self, wanted: tuple[str, ...]) -> str | None:
        """Open ports for new interfaces first (all or nothing), then close the removed ones.
        Returns None, or the error that left everything as it was."""
        current = {p.ifname: p for p in self.ports}
        added: list[Port] = []
        absent = []  # no such interface (yet): waited for, like at start
        try:
            for ifname in wanted:
                if ifname not in current and ifname not in self.waiting:
                    try:
                        added.append(self.add(ifname))
                    except OSError as exc:
                        if exc.errno not in ABSENT or self.links is None:
                            raise
                        absent.append(ifname)
        except OSError as exc:
            for port in added:
                self.remove(port)
            return f"{ifname}: {exc.strerror or exc}"
        for port in added:
            self.mode.serve(port)
        self.waiting &= set(wanted)
        self.waiting.update(absent)
        if absent:
            self.log.warning("interfaces_waiting", extra={"kv": {
                "interfaces": ",".join(absent), "reason": "no such interface", "hint": WAITING_HINT}})
        for ifname, port in current.items():
            if ifname not in wanted:
                self.remove(port)
        return None

    # -- what is waited for -------------------------------------------------------------------------
    def status_text(self) -> str:
        bound = ",".join(p.ifname for p in self.ports)
        text = f"relaying on {bound}" if bound else "not relaying"
        if self.waiting:
            text += f"; waiting for interface {','.join(sorted(self.waiting))} (absent or down)"
        return text

    async def waiting_loop(self, stop: asyncio.Event, clock: Callable[[], float], interval: float = 60.0) -> None:
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
            now = clock()
            for name in list(since):
                if name not in self.waiting:
                    del since[name]
            for name in self.waiting:
                since.setdefault(name, now - interval)
            if self.waiting:
                self.log.warning("interfaces_waiting", extra={"kv": {
                    "interfaces": ",".join(sorted(self.waiting)),
                    "seconds": int(now - min(since.values())),
                    "hint": "no such interface, or down; it is bound as soon as it is up (check -i/interfaces)"}})

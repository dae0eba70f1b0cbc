"""How each capture kind is opened, read and let go of: chosen once, when the daemon opens.

AF_PACKET: one socket per interface, each with its own event-loop reader, kernel-drop probe
and capture counters. NFLOG: one netlink socket for the whole group (and its firewall rules);
an interface is a share of it (an ifindex in its demux), and one reader serves every share.
The daemon and :class:`pmtud_relay.daemon.ports.Interfaces` call the same methods on either,
so neither asks which kind it runs.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Callable, Protocol

from pmtud_relay import metrics
from pmtud_relay.capture.base import Capture

if TYPE_CHECKING:
    from pmtud_relay.config.records import DaemonSettings
    from pmtud_relay.daemon.faults import Faults
    from pmtud_relay.daemon.port import Port
    from pmtud_relay.nflog.capture import NflogCapture

OnReadable = Callable[["Port"], None]


class CaptureMode(Protocol):
    #: The capture as the ready line names it: "afpacket", "nflog:<group>".
    label: str
    #: Whether a reload may change the interface list (NFLOG: one socket and its rules; a
    #: restart applies it).
    live_interfaces: bool

    def bind(self) -> None:
        """Open what the kind shares between interfaces, before any port (NFLOG: the group)."""
        ...

    def open(self, ifname: str) -> Capture:
        """The capture of the interface now called ``ifname``; OSError (ENODEV/ENXIO) if none."""
        ...

    def adopt(self, capture: Capture) -> None:
        """``capture`` serves a port from now on: account for it (metrics)."""
        ...

    def release(self, capture: Capture) -> None:
        """``capture`` serves no port any more (closed next): stop accounting for it."""
        ...

    def start(self, loop: asyncio.AbstractEventLoop, ports: list[Port], on_readable: OnReadable) -> None:
        """Serving begins: make ``ports`` (and any port served later) wake ``on_readable``."""
        ...

    def serve(self, port: Port) -> None:
        """A port opened while serving: wake the packet path for it."""
        ...

    def unserve(self, port: Port) -> None:
        """Stop waking the packet path for ``port`` (before it is released and closed)."""
        ...

    def stop(self) -> None:
        """Serving ends: no reader is left on the loop."""
        ...

    def summary(self) -> dict[str, int]:
        """Counts of the capture kind for the summary line ({} when it has none of its own)."""
        ...

    def close(self) -> None:
        ...


class AfpacketMode:
    """One AF_PACKET socket (PTB filter, RX ring) per interface, each read on its own."""

    label = "afpacket"
    live_interfaces = True

    def __init__(self, stats: metrics.Stats, accept_copies: bool = False):
        self.stats = stats
        self.accept_copies = accept_copies  # other relays' L2 copies pass the filter (confirmation)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ports: list[Port] = []
        self.on_readable: OnReadable | None = None

    def bind(self) -> None:
        pass  # nothing shared: every interface has a socket of its own

    def open(self, ifname: str) -> Capture:
        from pmtud_relay.capture import bpf
        from pmtud_relay.capture.afpacket import PacketCapture

        return PacketCapture(ifname, program=bpf.ptb_filter(self.accept_copies))

    def adopt(self, capture: Capture) -> None:
        ifname, stats = capture.ifname, self.stats
        sock = capture.sock  # type: ignore[attr-defined]  # this mode opened it: a PacketCapture
        stats.overrun_probes[ifname] = functools.partial(metrics.afpacket_drops, sock)
        stats.capture_counters[ifname] = capture.counters
        if ifname not in stats.interfaces:
            stats.interfaces.append(ifname)

    def release(self, capture: Capture) -> None:
        """Stop polling its kernel drops; keep what it counted (metrics.Stats.retire_capture)."""
        self.stats.overrun_probes.pop(capture.ifname, None)
        self.stats.retire_capture(capture.ifname)

    def start(self, loop: asyncio.AbstractEventLoop, ports: list[Port], on_readable: OnReadable) -> None:
        self.loop, self.ports, self.on_readable = loop, ports, on_readable
        for port in ports:
            loop.add_reader(port.capture.fileno(), on_readable, port)

    def serve(self, port: Port) -> None:
        if self.loop is not None and self.on_readable is not None:
            self.loop.add_reader(port.capture.fileno(), self.on_readable, port)

    def unserve(self, port: Port) -> None:
        loop = self.loop
        if loop is None:
            return
        try:
            loop.remove_reader(port.capture.fileno())
        except (OSError, ValueError):  # already closed
            pass

    def stop(self) -> None:
        loop, self.loop = self.loop, None
        if loop is not None:
            for port in self.ports:
                try:
                    loop.remove_reader(port.capture.fileno())
                except (OSError, ValueError):
                    pass

    def summary(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass  # every socket belongs to a port: closed with it


class NflogMode:
    """One NFLOG group socket; each interface is an ifindex in its demux (nflog/capture.py)."""

    live_interfaces = False

    def __init__(self, group: int, stats: metrics.Stats, faults: Faults, clock: Callable[[], float]):
        self.group = group
        self.label = f"nflog:{group}"
        self.stats = stats
        self.faults = faults
        self.clock = clock
        self.nflog: NflogCapture | None = None  # bound by bind()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ports: list[Port] = []
        self.on_readable: OnReadable | None = None

    def bind(self) -> None:
        """Bind the group (NflogError to the CLI). NETLINK_NO_ENOBUFS: on overrun the kernel would
        flag a socket error, which libuv (uvloop) reports as fatal for the watcher: capture would
        stop for good; losses are still counted exactly from the NFLOG sequence numbers. The tuner
        keeps QTHRESH 1 (each PTB delivered at once) unless PTBs are frequent or the reader lags."""
        from pmtud_relay.nflog.batching import BatchTuner
        from pmtud_relay.nflog.capture import NflogCapture

        nflog = NflogCapture(self.group, (), no_enobufs=True, tuner=BatchTuner(now=self.clock()))
        self.nflog = nflog
        self.stats.overrun_probes["nflog"] = metrics.delta_probe(lambda: nflog.overruns + nflog.lost)

    def _bound(self) -> NflogCapture:
        if self.nflog is None:
            raise RuntimeError("the NFLOG group is not bound (bind() first)")
        return self.nflog

    def open(self, ifname: str) -> Capture:
        """Register the interface's current ifindex/MAC on the shared socket; it and the rules stay."""
        return self._bound().add_interface(ifname)

    def adopt(self, capture: Capture) -> None:
        pass  # the group's counts are the socket's (summary(), the nflog overrun probe)

    def release(self, capture: Capture) -> None:
        """Its ifindex is no longer accepted (its packets count as foreign); the socket stays read."""
        self._bound().remove_port(capture)  # type: ignore[arg-type]  # this mode opened it: an NflogPort

    def start(self, loop: asyncio.AbstractEventLoop, ports: list[Port], on_readable: OnReadable) -> None:
        self.loop, self.ports, self.on_readable = loop, ports, on_readable
        loop.add_reader(self._bound().fileno(), self._on_readable)

    def _on_readable(self) -> None:
        """One socket serves every port: the first drain reads it, each port gets its share."""
        ports = self.ports
        if not ports:  # every interface gone: read (and count as foreign) what is queued, or the reader spins
            try:
                self._bound().pump()
            except Exception:
                self.faults.internal("packet_path_error", "-")
            return
        on_readable = self.on_readable
        assert on_readable is not None
        for port in list(ports):
            on_readable(port)

    def serve(self, port: Port) -> None:
        pass  # the shared socket's reader serves every port already

    def unserve(self, port: Port) -> None:
        pass

    def stop(self) -> None:
        loop, self.loop = self.loop, None
        if loop is not None:
            loop.remove_reader(self._bound().fileno())

    def summary(self) -> dict[str, int]:
        return self.nflog.stats() if self.nflog is not None else {}

    def close(self) -> None:
        if self.nflog is not None:
            self.nflog.close()
            self.nflog = None


def capture_mode(settings: DaemonSettings, stats: metrics.Stats, faults: Faults,
                 clock: Callable[[], float]) -> CaptureMode:
    """The one place the capture kind is chosen (settings.capture, validated by the config)."""
    if settings.capture == "nflog":
        return NflogMode(settings.nflog_group, stats, faults, clock)
    return AfpacketMode(stats, accept_copies=settings.confirm_owner)

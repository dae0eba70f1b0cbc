"""A port: one configured interface that is up, with its capture and (unless no L2 copy is
sent) its emitter. Its own module so that the lifecycle (ports.py) and the capture modes
(capture_modes.py) can both name it without importing each other."""

from __future__ import annotations

from typing import Protocol

from pmtud_relay.capture.base import Capture


class Emitter(Protocol):
    """What a port needs of its L2 emitter (pmtud_relay.emit.l2.L2Emitter)."""

    def queue(self, frame: bytes) -> int: ...
    def flush(self) -> int: ...
    def refresh_mtu(self) -> None: ...
    def close(self) -> None: ...


class Port:
    """One interface: its capture and (unless no L2 copy is sent) its emitter."""

    __slots__ = ("ifname", "capture", "emitter", "mac")

    def __init__(self, ifname: str, capture: Capture, emitter: Emitter | None = None):
        self.ifname = ifname
        self.capture = capture
        self.emitter = emitter
        self.mac = capture.mac

    def close(self) -> None:
        self.capture.close()
        if self.emitter is not None:
            self.emitter.close()

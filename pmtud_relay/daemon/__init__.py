"""The asyncio daemon: capture sockets → sans-IO relay → emitters.

All I/O and the clock live here; decisions come from :class:`pmtud_relay.core.Relay`.
Each capture wakes the event loop; on every wake-up the packet path drains every queued
frame (one clock read per batch), decides, and sends the copies out of the interface the
PTB came in on. The modules, by concern:

- service.py: :class:`RelayDaemon`, opening, serving and closing its parts;
- capture_modes.py: AF_PACKET or NFLOG, chosen once (the captures: pmtud_relay/capture/base.py);
- port.py: one served interface (its capture and emitter);
- ports.py: interfaces that go away and come back, the names waited for, reload's new list;
- packet_path.py: a readable capture's frames through the core to the emitter and the peers;
- holds.py: flooding sources held in the kernel filter, and the timer that ends the holds;
- confirmation.py: owner lookups after the copies left (docs/confirmation.md);
- vips.py: service addresses, discovered and re-read; reload.py: SIGHUP;
- summary.py: the summary line and systemd status; loop.py: the event loop (uvloop);
- faults.py: errors counted and logged, never fatal.

Its settings, :class:`DaemonSettings`, are built by pmtud_relay.config (config/records.py).
"""

from __future__ import annotations

from pmtud_relay.config.records import DaemonSettings
from pmtud_relay.daemon.loop import run_event_loop
from pmtud_relay.daemon.port import Port
from pmtud_relay.daemon.ports import Interfaces
from pmtud_relay.daemon.service import RelayDaemon
from pmtud_relay.daemon.vips import parse_vips

__all__ = ["DaemonSettings", "Interfaces", "Port", "RelayDaemon", "parse_vips", "run_event_loop"]

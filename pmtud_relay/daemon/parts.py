"""What reload (reload.py) and the summary (summary.py) read and change of the daemon.

:class:`pmtud_relay.daemon.service.RelayDaemon` has these attributes; the two modules name this
protocol instead of the class, so the service imports them and they never import the service.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from pmtud_relay import metrics
    from pmtud_relay.config import Loaded
    from pmtud_relay.config.records import DaemonSettings
    from pmtud_relay.confirm.service import Confirmer
    from pmtud_relay.core.relay import Relay
    from pmtud_relay.daemon.port import Port
    from pmtud_relay.daemon.ports import Interfaces
    from pmtud_relay.daemon.sdnotify import Notifier
    from pmtud_relay.daemon.vips import Vips
    from pmtud_relay.peers.service import PeerService


class DaemonParts(Protocol):
    settings: DaemonSettings
    config: Any  # the config.Settings in force
    reloader: Callable[[], Loaded] | None
    clock: Callable[[], float]
    log: logging.Logger
    relay: Relay
    stats: metrics.Stats
    interfaces: Interfaces
    ports: list[Port]
    vips: Vips
    notifier: Notifier
    peering: PeerService | None
    confirmer: Confirmer | None
    send_errors: Counter[str]  # errno name -> copies refused

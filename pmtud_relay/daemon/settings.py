"""The daemon's settings, made by pmtud_relay.config from the file, flags and environment."""

# The class body is kept as it was while it moves to pmtud_relay/config: its quoted annotation too.
# ruff: noqa: UP037
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pmtud_relay import hostinfo
from pmtud_relay.core.relay import RelayConfig
from pmtud_relay.nflog.capture import DEFAULT_GROUP as NFLOG_DEFAULT_GROUP

if TYPE_CHECKING:
    from pmtud_relay.peers.service import PeerSettings


@dataclass(frozen=True)
class DaemonSettings:
    interfaces: tuple[str, ...]
    relay: RelayConfig
    discover_vips: bool = True  # False: relay.policy.vips is the configured set
    dry_run: bool = False
    json_output: bool = False  # dry-run decision lines as JSON
    vip_refresh: float = 60.0  # seconds between service-address re-reads besides the address events
    vip_interfaces: tuple[str, ...] = hostinfo.DEFAULT_VIP_INTERFACES  # where discovery looks
    summary_interval: float = 60.0
    capture: str = "afpacket"  # or "nflog"
    nflog_group: int = NFLOG_DEFAULT_GROUP
    manage_rules: bool = False  # install the NFLOG rules at start, remove them at stop
    rules_backend: str = "auto"  # auto, nft or iptables
    peers: "PeerSettings | None" = None  # peer relay across L3 (pmtud_relay.peers.service); None: off
    confirm_owner: bool = False  # delivery confirmation (docs/confirmation.md); the config's default is on

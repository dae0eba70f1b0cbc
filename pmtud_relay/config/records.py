"""The records the components take, each derived from the effective :class:`Settings` in one
place: the core's :class:`Policy` and :class:`RelayConfig`, the peer relay's ``PeerSettings``
and the daemon's :class:`DaemonSettings`. Values were validated when loaded (.sources)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pmtud_relay.config.schema import KEYS
from pmtud_relay.core import policy as _pol
from pmtud_relay.core.policy import Policy, VipSet
from pmtud_relay.core.relay import RelayConfig
from pmtud_relay.peers import service as _peering

if TYPE_CHECKING:
    from pmtud_relay.peers.service import PeerSettings


@dataclass(frozen=True)
class DaemonSettings:
    """What the daemon runs with: the core's configuration and the daemon's own settings.
    Built by :func:`daemon_settings`; tests build it directly with the defaults below."""

    interfaces: tuple[str, ...]
    relay: RelayConfig
    discover_vips: bool = True  # False: relay.policy.vips is the configured set
    dry_run: bool = False
    json_output: bool = False  # dry-run decision lines as JSON
    vip_refresh: float = KEYS["vip_refresh"].default  # seconds between service-address re-reads
    vip_interfaces: tuple[str, ...] = KEYS["vip_interfaces"].default  # where discovery looks
    summary_interval: float = KEYS["summary_interval"].default
    capture: str = KEYS["capture"].default  # afpacket or nflog
    nflog_group: int = KEYS["nflog_group"].default
    manage_rules: bool = False  # install the NFLOG rules at start, remove them at stop
    rules_backend: str = KEYS["rules_backend"].default  # auto, nft or iptables
    peers: PeerSettings | None = None  # peer relay across L3 (pmtud_relay.peers.service); None: off
    confirm_owner: bool = False  # delivery confirmation (docs/confirmation.md); the config's default is on


def policy(settings: Any, vips: VipSet | None = None) -> Policy:
    """The core Policy; ``vips`` (discovered addresses) is used when ``settings.vips`` is empty."""
    return Policy(
        vips=VipSet(settings.vips) if settings.vips else (vips if vips is not None else VipSet()),
        floor_v4=settings.floor_v4,
        floor_v6=settings.floor_v6,
        protocols=_pol.protocol_numbers(settings.protocols) if settings.protocols else None,
        ports=frozenset(settings.ports) if settings.ports else None,
    )


def relay_config(settings: Any, vips: VipSet | None = None) -> RelayConfig:
    """The core RelayConfig for ``settings`` (values were validated when loaded)."""
    return RelayConfig(
        policy=policy(settings, vips),
        dedup_window=settings.dedup_window,
        dedup_capacity=settings.dedup_capacity,
        source_rate=settings.source_rate,
        source_burst=settings.source_burst,
        global_rate=settings.global_rate,
        global_burst=settings.global_burst,
        source_capacity=settings.source_capacity,
        global_reserve=settings.global_reserve,
        known_source_capacity=settings.known_source_capacity,
        known_source_expiry=settings.known_source_expiry,
        shun_min_rate=settings.shun_min_rate,
        shun_max_sources=settings.shun_max_sources,
        v6_broadcast=settings.v6_broadcast,
    )


def discover_vips(settings: Any) -> bool:
    """True when service addresses come from discovery (no ``vips`` configured)."""
    return not settings.vips


#: The keys the peer relay's settings are made of (a bad combination names them all).
PEER_KEYS = ("fanout", "peers", "peers_files", "peers_dns", "peers_dns_interval", "peers_refresh",
             "peer_listen", "peer_key_file", "peer_rate", "peer_burst", "peer_max_age", "peer_acks",
             "peer_ack_rate")


def build_peer_settings(values: Mapping[str, Any], check_key_file: bool = True) -> PeerSettings | None:
    """peering.PeerSettings from key → value (ValueError when the peer keys do not fit)."""
    return _peering.build_settings(
        fanout=values["fanout"],
        peers=values["peers"],
        peers_files=values["peers_files"],
        peers_dns=values["peers_dns"],
        listen=list(values["peer_listen"]) or None,
        key_file=values["peer_key_file"] or None,
        rate=values["peer_rate"],
        burst=values["peer_burst"],
        max_age=values["peer_max_age"],
        dns_interval=values["peers_dns_interval"],
        refresh=values["peers_refresh"],
        acks=values["peer_acks"],
        ack_rate=values["peer_ack_rate"],
        dedup_window=values.get("dedup_window", KEYS["dedup_window"].default),
        dedup_capacity=values.get("dedup_capacity", KEYS["dedup_capacity"].default),
        check_key_file=check_key_file,
    )


def peer_settings(settings: Any) -> PeerSettings | None:
    """The peering.PeerSettings for ``settings`` (None: the peer relay is off)."""
    return build_peer_settings({k: getattr(settings, k) for k in PEER_KEYS + ("dedup_window", "dedup_capacity")})


def daemon_settings(settings: Any, interfaces: tuple[str, ...], *, dry_run: bool = False,
                    json_output: bool = False) -> DaemonSettings:
    """The daemon's settings for ``settings``; ``interfaces`` is ``settings.interfaces`` or,
    when that is empty, the default-route interface the caller looked up."""
    return DaemonSettings(
        interfaces=tuple(interfaces),
        relay=relay_config(settings),
        discover_vips=discover_vips(settings),
        dry_run=dry_run,
        json_output=json_output,
        vip_refresh=settings.vip_refresh,
        vip_interfaces=tuple(settings.vip_interfaces),
        summary_interval=settings.summary_interval,
        capture=settings.capture,
        nflog_group=settings.nflog_group,
        manage_rules=settings.manage_rules,
        rules_backend=settings.rules_backend,
        peers=peer_settings(settings),
        confirm_owner=settings.confirm_owner,
    )

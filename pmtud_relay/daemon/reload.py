"""Reload (SIGHUP): load the configuration again and apply what can change live, between two
batches (nothing in flight is dropped). An invalid configuration, or an interface that cannot be
opened, is logged and counted and the running configuration stays."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from pmtud_relay import config, logs

if TYPE_CHECKING:
    from pmtud_relay.daemon.parts import DaemonParts


def reload(d: DaemonParts) -> bool:
    """True if the new configuration was applied."""
    if d.reloader is None or d.config is None:
        return False
    try:
        new = d.reloader().settings
    except config.ConfigError as exc:
        return _failed(d, str(exc))
    old = d.config
    live, restart = config.changes(old, new)
    if "interfaces" in live and not d.interfaces.mode.live_interfaces:
        live.remove("interfaces")  # one NFLOG socket and its rules: a restart applies it
        restart.append("interfaces")
    new = replace(new, **{k: getattr(old, k) for k in restart})
    if "interfaces" in live and new.interfaces:  # empty: keep the default-route ports open
        error = d.interfaces.apply(new.interfaces)
        if error:
            return _failed(d, f"interfaces: {error}")
    if restart:
        d.log.warning("config_restart_needed", extra={"kv": {"keys": ",".join(restart)}})
    discover = config.discover_vips(new)
    relay_config = config.relay_config(new, vips=d.relay.policy.vips if discover else None)
    d.relay.reconfigure(relay_config, d.clock())
    if d.peering is not None:  # the peer receiver dedups over the same window and capacity
        d.peering.set_dedup(relay_config.dedup_window, relay_config.dedup_capacity)
    d.settings = replace(d.settings, relay=relay_config, discover_vips=discover,
                         vip_refresh=new.vip_refresh, summary_interval=new.summary_interval,
                         vip_interfaces=tuple(new.vip_interfaces),
                         interfaces=tuple(p.ifname for p in d.ports) + tuple(sorted(d.interfaces.waiting)))
    if new.log_format != old.log_format:
        logs.setup(new.log_level, new.log_format)
    elif new.log_level != old.log_level:
        logs.set_level(new.log_level)
    d.config = new
    d.stats.reloaded(True)
    d.log.info("config_reloaded", extra={"kv": {"changed": ",".join(live) or "none"}})
    wide = config.wide_vips(new)
    if wide and "vips" in live:  # only loaded with allow_any_vip: meant, but say so
        d.log.warning("vip_prefix_allows_any", extra={"kv": {
            "prefixes": ",".join(wide), "effect": "nearly every quoted source passes the VIP check"}})
    if discover and (not config.discover_vips(old) or new.vip_interfaces != old.vip_interfaces):
        d.vips.refresh_soon()
    return True


def _failed(d: DaemonParts, error: str) -> bool:
    d.stats.reloaded(False)
    d.log.error("config_reload_failed", extra={"kv": {"error": error}})
    return False

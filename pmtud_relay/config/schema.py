"""The configuration schema: every setting once, with its type, default, bounds, help and how
SIGHUP treats it (:data:`SCHEMA`). Everything else is derived from this table: the flags of
every command (:mod:`.options`), the environment variables and file keys (:mod:`.sources`),
the :class:`Settings` record and the records the components take (:mod:`.records`), the
example file and the reference table in docs/configuration.md (:mod:`.render`).

Module size: the table itself is most of this file (one entry per key, ~45 keys).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from pmtud_relay import hostinfo as _hostinfo
from pmtud_relay.config.parsers import (
    check_ifname,
    check_listen,
    check_metrics_address,
    check_path,
    check_peer,
    check_peer_name,
    check_port,
    check_protocol,
    check_vip_interface,
    choice,
    in_range,
    parse_bool,
    parse_float,
    parse_int,
    parse_port,
    parse_prefix,
    parse_str,
)
from pmtud_relay.core import dedup as _dedup
from pmtud_relay.core import policy as _pol
from pmtud_relay.core import ratelimit as _rl
from pmtud_relay.core.relay import RelayConfig
from pmtud_relay.core.slots import slotted as _slotted
from pmtud_relay.nflog.capture import DEFAULT_GROUP as _NFLOG_DEFAULT_GROUP
from pmtud_relay.peers import inbox as _peers
from pmtud_relay.peers import service as _peering
from pmtud_relay.rules import BACKENDS as _RULES_BACKENDS

DEFAULT_PATH = "/etc/pmtud-relay/config.toml"
ENV_PREFIX = "PMTUD_RELAY_"
ENV_CONFIG = ENV_PREFIX + "CONFIG"  # names the TOML file, like --config
#: Largest config file read (bytes): the full reference with comments is ~10 KiB.
MAX_CONFIG_FILE = 1 << 20

#: Default Prometheus listener. Loopback only; 9781 is this project's choice (the exporter
#: range 9100-9999 of Prometheus' port-allocation list is full, so it is not registered there).
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9781"

#: Capture back ends, and the packet-filter back ends that ``manage_rules`` may use.
CAPTURE_BACKENDS = ("afpacket", "nflog")
RULES_BACKENDS = ("auto",) + _RULES_BACKENDS

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("logfmt", "json")

#: Seconds between service-address re-reads, and between summary log lines.
DEFAULT_VIP_REFRESH = 60.0
DEFAULT_SUMMARY_INTERVAL = 60.0


class ConfigError(ValueError):
    """A bad setting. The message names the source (file, env var or flag) and the key."""


def _field_default(cls: Any, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.default
    raise KeyError(name)


#: Dedup keys / tracked sources: 4x the default. bench/scale.py measured 73 MiB of growth with
#: both tables full at 65 536 entries each, so both at this maximum stay near 300 MiB.
MAX_TABLE = 262144
#: Sources dropped in the kernel at once: every captured frame walks the blocklist prefix (9
#: instructions per IPv6 source), so 256 keep the whole filter near 2 400 of the kernel's 4 096
#: (BPF_MAXINSNS) and the per-frame walk short.
MAX_SHUN_SOURCES = 256
#: Known sources for the global reserve: 16x the default; an entry is a source address and two
#: floats in an ordered dict (about 250 bytes), so a full table at this maximum is near 16 MiB.
MAX_KNOWN_SOURCES = 65536
#: Known-source expiry: a day. Longer keeps sources an attacker primed usable for longer.
MAX_KNOWN_EXPIRY = 86400.0
#: Rates (PTB/s, datagrams/s) and bursts (tokens): far above what the relay can process
#: (docs/performance.md), low enough that a typo with extra zeros is caught.
MAX_RATE = 1_000_000
MAX_BURST = 1_000_000
#: A VIP prefix shorter than this covers address space no single operator holds: nearly every
#: quoted source would pass the VIP check (allow_any_vip says it is meant).
MIN_VIP_PREFIX = {4: 8, 6: 16}



# -- the schema ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One setting. ``kind`` is int, float, bool, str or list (of ``item`` strings parsed by
    ``parse``). ``reload`` says whether SIGHUP applies it ("live") or it needs a restart."""

    name: str
    kind: type
    default: Any
    help: str
    group: str
    parse: Callable[[str], Any]
    check: Callable[[Any], None] | None = None  # applied to the value (each item for lists)
    metavar: str | None = None
    aliases: tuple[str, ...] = ()  # extra CLI spellings kept for compatibility
    reload: str = "live"
    item: type | None = None  # Python type of one list item after parsing (lists only)
    toml_item: tuple[type, ...] = (str,)  # TOML types accepted for list items
    doc_default: str | None = None  # how the docs show the default, when not the literal
    env_sep: str | None = ","  # list separator in environment variables (None: blanks)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def maximum(self) -> float | None:
        """The largest value accepted (None: no maximum, or not a number)."""
        return getattr(self.check, "hi", None)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def _k(name, kind, default, help, group, parse, check=None, **kw) -> Key:
    return Key(name, kind, default, help, group, parse, check, **kw)


SCHEMA: tuple[Key, ...] = (
    # capture
    _k("interfaces", list, (), "interfaces to capture PTBs on and send copies out of "
       "(empty: the interface holding the default route)", "capture", parse_str, check_ifname,
       metavar="IFNAME", aliases=("-i", "--interface"), item=str,
       doc_default="default-route interface"),
    _k("capture", str, "afpacket", "how PTBs are captured: afpacket (an AF_PACKET socket with a "
       "BPF filter per interface) or nflog (an NFLOG group fed by nftables/iptables rules)",
       "capture", parse_str, choice(CAPTURE_BACKENDS), metavar="|".join(CAPTURE_BACKENDS),
       reload="restart"),
    _k("nflog_group", int, _NFLOG_DEFAULT_GROUP, "NFLOG group to read PTBs from (capture = nflog)",
       "capture", parse_int, in_range(0, 65535), metavar="N", reload="restart"),
    _k("manage_rules", bool, False, "install the NFLOG rules at start and remove them at exit "
       "(capture = nflog)", "capture", parse_bool, reload="restart"),
    _k("rules_backend", str, "auto", "packet-filter back end for managed rules: auto, nft or "
       "iptables", "capture", parse_str, choice(RULES_BACKENDS),
       metavar="|".join(RULES_BACKENDS), reload="restart"),
    # policy
    _k("vips", list, (), "service addresses or prefixes; when set, replaces discovery from "
       "addresses on lo and dummy interfaces", "policy", parse_prefix,
       metavar="PREFIX", aliases=("--vip",),
       doc_default="discovered"),
    _k("vip_interfaces", list, _hostinfo.DEFAULT_VIP_INTERFACES, "where discovery looks for service "
       "addresses (when vips is empty): interface names, shell-style patterns (vip*) or @KIND for every "
       "interface of that kind; @dummy includes kube-ipvs0 (kube-proxy IPVS). On lo the whole prefix "
       "counts, elsewhere the address only", "policy", parse_str, check_vip_interface,
       metavar="IFNAME", aliases=("--vip-interface",), item=str, doc_default="`lo`, `@dummy`"),
    _k("floor_v4", int, _pol.DEFAULT_FLOOR_V4, "lowest IPv4 MTU relayed (the kernel's "
       "net.ipv4.route.min_pmtu)", "policy", parse_int, in_range(68, 65535), metavar="BYTES"),
    _k("floor_v6", int, _pol.DEFAULT_FLOOR_V6, "lowest IPv6 MTU relayed (the IPv6 minimum "
       "link MTU)", "policy", parse_int, in_range(1280, 65535), metavar="BYTES"),
    _k("protocols", list, (), "relay only PTBs quoting these protocols: "
       + ", ".join(_pol.PROTOCOL_NAMES) + " or a number 0-255 (empty: any)", "policy",
       parse_str, check_protocol, metavar="NAME", aliases=("--protocol",), item=str,
       toml_item=(str, int), doc_default="any"),
    _k("ports", list, (), "relay only PTBs quoting one of these source (service) ports "
       "(empty: any)", "policy", parse_port, check_port, metavar="PORT",
       aliases=("--port",), item=int, toml_item=(int,), doc_default="any"),
    _k("allow_any_vip", bool, False, "accept a VIP prefix shorter than /"
       f"{MIN_VIP_PREFIX[4]} (IPv4) or /{MIN_VIP_PREFIX[6]} (IPv6), such as 0.0.0.0/0: nearly every "
       "address is then a VIP and the quoted-source check passes almost anything (logged as a "
       "warning at start)", "policy", parse_bool),
    # dedup and rate limits
    _k("dedup_window", float, _dedup.DEFAULT_WINDOW, "seconds during which the same PTB (router, "
       "flow, MTU, quoted TCP sequence) is relayed once", "limits", parse_float, in_range(0), metavar="SECONDS"),
    _k("dedup_capacity", int, _dedup.DEFAULT_CAPACITY, "dedup table size (keys)", "limits",
       parse_int, in_range(1, at_most=MAX_TABLE), metavar="KEYS"),
    _k("source_rate", float, _rl.DEFAULT_SOURCE_RATE, "PTBs per second relayed per sending "
       "router (outer source)", "limits", parse_float, in_range(gt=0, at_most=MAX_RATE), metavar="PPS"),
    _k("source_burst", float, _rl.DEFAULT_SOURCE_BURST, "per-source burst (tokens)", "limits",
       parse_float, in_range(1, at_most=MAX_BURST), metavar="N"),
    _k("global_rate", float, _rl.DEFAULT_GLOBAL_RATE, "PTBs per second relayed in total",
       "limits", parse_float, in_range(gt=0, at_most=MAX_RATE), metavar="PPS"),
    _k("global_burst", float, _rl.DEFAULT_GLOBAL_BURST, "global burst (tokens)", "limits",
       parse_float, in_range(1, at_most=MAX_BURST), metavar="N"),
    _k("source_capacity", int, _rl.DEFAULT_SOURCE_CAPACITY, "sending routers tracked by the "
       "per-source limiter (oldest evicted)", "limits", parse_int, in_range(1, at_most=MAX_TABLE), metavar="N"),
    _k("global_reserve", float, _rl.DEFAULT_RESERVE, "share of global_rate and global_burst kept "
       "for sources that had a PTB relayed before the current flood episode began: taken only when "
       "the rest is empty (0 turns the reserve off; docs/rate-limits.md)", "limits", parse_float,
       in_range(0, _rl.MAX_RESERVE), metavar="SHARE"),
    _k("known_source_capacity", int, _rl.DEFAULT_KNOWN_CAPACITY, "sending routers remembered as "
       "known for the reserve (least recently relayed evicted)", "limits", parse_int,
       in_range(1, at_most=MAX_KNOWN_SOURCES), metavar="N"),
    _k("known_source_expiry", float, _rl.DEFAULT_KNOWN_EXPIRY, "seconds after its last relayed PTB "
       "that a sending router stops being known for the reserve", "limits", parse_float,
       in_range(gt=0, at_most=MAX_KNOWN_EXPIRY), metavar="SECONDS"),
    _k("shun_min_rate", float, _field_default(RelayConfig, "shun_min_rate"), "a source whose own "
       "bucket drops more than this many PTBs per second is dropped in the kernel for a while "
       "(AF_PACKET capture; docs/rate-limits.md)", "limits", parse_float, in_range(gt=0, at_most=MAX_RATE),
       metavar="PPS"),
    _k("shun_max_sources", int, _field_default(RelayConfig, "shun_max_sources"), "sources dropped "
       "in the kernel at once (0 turns the shun list off)", "limits", parse_int, in_range(0, at_most=MAX_SHUN_SOURCES),
       metavar="N"),
    # output
    _k("v6_broadcast", bool, _field_default(RelayConfig, "v6_broadcast"), "send IPv6 copies to "
       "ff:ff:ff:ff:ff:ff instead of 33:33:00:00:00:01", "output", parse_bool),
    _k("confirm_owner", bool, True, "delivery confirmation: after relaying a PTB, and for other "
       "relays' L2 copies received here, ask the local kernel (sock_diag) whether a socket owns the "
       "quoted flow and whether its path MTU dropped; verdicts in metrics, dry-run lines and debug "
       "logs (docs/confirmation.md)", "output", parse_bool, reload="restart"),
    _k("log_level", str, "info", "log level: " + ", ".join(LOG_LEVELS), "output", parse_str,
       choice(LOG_LEVELS), metavar="|".join(LOG_LEVELS)),
    _k("log_format", str, "logfmt", "log format on stderr: logfmt or json", "output", parse_str,
       choice(LOG_FORMATS), metavar="|".join(LOG_FORMATS)),
    _k("vip_refresh", float, DEFAULT_VIP_REFRESH, "seconds between "
       "re-reads of discovered service addresses besides the ones address and link events trigger at once",
       "output", parse_float, in_range(gt=0),
       metavar="SECONDS"),
    _k("summary_interval", float, DEFAULT_SUMMARY_INTERVAL,
       "seconds between info-level summary log lines", "output", parse_float, in_range(gt=0),
       metavar="SECONDS"),
    _k("metrics_address", str, DEFAULT_METRICS_ADDRESS, "HOST:PORT of the Prometheus /metrics, "
       "/healthz and /readyz listener ([ADDR]:PORT for IPv6; empty disables)", "output",
       parse_str, check_metrics_address, metavar="HOST:PORT", reload="restart"),
    # peer relay across L3 (docs/peers.md)
    _k("fanout", str, "l2", "where accepted PTBs go: l2 (broadcast on the segment), peers (signed "
       "UDP to the peers serving the VIP) or both", "peers", parse_str,
       choice(_peering.FANOUT_MODES), metavar="|".join(_peering.FANOUT_MODES), reload="restart"),
    _k("peers", list, (), "peers as HOST[:PORT][=PREFIX,...] (default port "
       f"{_peers.DEFAULT_PORT})", "peers", parse_str, check_peer,
       metavar="HOST[:PORT][=PREFIX,...]", aliases=("--peer",), item=str, reload="restart",
       doc_default="none", env_sep=None),
    _k("peers_files", list, (), "files with one peer per line (same syntax as peers), re-read "
       "when they change", "peers", parse_str, check_path, metavar="PATH",
       aliases=("--peers-file",), item=str, reload="restart", doc_default="none"),
    _k("peers_dns", list, (), "names whose every A/AAAA record is a peer, as NAME[:PORT][=PREFIX,...]",
       "peers", parse_str, check_peer_name, metavar="NAME[:PORT][=PREFIX,...]", item=str,
       reload="restart", doc_default="none", env_sep=None),
    _k("peers_dns_interval", float, _peering.DEFAULT_DNS_INTERVAL, "seconds between "
       "re-resolutions of peers_dns names that carry no TTL (answered by getaddrinfo, or with no "
       "records); DNS answers are re-resolved at their TTL, clamped to 5..300 s", "peers", parse_float, in_range(gt=0),
       metavar="SECONDS", reload="restart"),
    _k("peers_refresh", float, _peering.DEFAULT_REFRESH, "seconds between checks of the peers "
       "files and the key file for changes", "peers", parse_float, in_range(gt=0),
       metavar="SECONDS", reload="restart"),
    _k("peer_listen", list, (), "ADDR:PORT to receive relayed PTBs on ('none' disables)", "peers",
       parse_str, check_listen, metavar="ADDR:PORT", item=str, reload="restart",
       doc_default=f"[::]:{_peers.DEFAULT_PORT} when sending to peers, else none"),
    _k("peer_key_file", str, "", "file with one or two KEYID:HEXKEY lines (the first signs, all "
       "verify); required for the peer relay", "peers", parse_str, metavar="PATH",
       reload="restart", doc_default="none"),
    _k("peer_rate", float, _peers.DEFAULT_PEER_RATE, "datagrams per second sent to one peer",
       "peers", parse_float, in_range(gt=0, at_most=MAX_RATE), metavar="PPS", reload="restart"),
    _k("peer_burst", float, _peers.DEFAULT_PEER_BURST, "per-peer burst", "peers", parse_float,
       in_range(1, at_most=MAX_BURST), metavar="N", reload="restart"),
    _k("peer_max_age", float, _peering.peerproto.DEFAULT_MAX_AGE, "accept peer messages stamped "
       "within this many seconds of the local clock", "peers", parse_float, in_range(gt=0),
       metavar="SECONDS", reload="restart"),
    _k("peer_acks", bool, True, "delivery acknowledgements: a receiver whose host owns the flow a "
       "peer's PTB quotes answers the sender with one signed ack; a sender counts the acks for the "
       "PTBs it sent", "peers", parse_bool, reload="restart"),
    _k("peer_ack_rate", float, _peering.DEFAULT_ACK_RATE, "acknowledgements per second this host "
       "sends at most (burst: twice that)", "peers", parse_float, in_range(gt=0, at_most=MAX_RATE),
       metavar="PPS", reload="restart"),
)

KEYS: dict[str, Key] = {k.name: k for k in SCHEMA}
ENV_KEYS: dict[str, Key] = {k.env: k for k in SCHEMA}


#: The effective settings: one frozen field per schema key, derived from :data:`SCHEMA`.
Settings: Any = _slotted(dataclasses.make_dataclass(
    "Settings",
    [(k.name, tuple if k.kind is list else k.kind, dataclasses.field(default=k.default)) for k in SCHEMA],
    frozen=True,
))
Settings.__module__ = "pmtud_relay.config"
Settings.__qualname__ = "Settings"
Settings.__doc__ = "Effective settings, one field per key of pmtud_relay.config.SCHEMA."

GROUP_TITLES = {
    "capture": "capture",
    "policy": "policy",
    "limits": "dedup and rate limits",
    "output": "output, logs and metrics",
    "peers": "peer relay across L3 (docs/peers.md)",
}


def default_text(key: Key) -> str:
    """The default as the help, the docs and the example file show it."""
    if key.doc_default is not None:
        return key.doc_default
    if key.kind is bool:
        return "true" if key.default else "false"
    if key.kind is str and key.default == "":
        return '""'
    return str(key.default)

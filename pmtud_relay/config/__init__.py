"""Configuration: one schema table, four sources (flag > environment > TOML file > default).

Every setting is described once, in :data:`SCHEMA`. From that table come

* the command-line options (:func:`add_arguments`): ``--`` + name with ``_`` → ``-``; lists are
  repeatable flags; booleans are ``--x`` / ``--no-x``;
* the environment variables: ``PMTUD_RELAY_`` + NAME in upper case; lists comma-separated;
  booleans ``true``/``false``/``1``/``0``/``yes``/``no``/``on``/``off``;
* the TOML file keys (flat, snake_case) read with :mod:`tomllib` from
  :data:`DEFAULT_PATH` when it exists, or from the file ``--config`` / ``PMTUD_RELAY_CONFIG``
  names (which then must exist; an empty name means "no file");
* the :class:`Settings` dataclass and the reference table in ``docs/configuration.md``
  (:func:`markdown_table`; ``python -m pmtud_relay.config --write-docs docs/configuration.md``).

Every error is a :class:`ConfigError` whose message starts with the source and the key, e.g.
``/etc/pmtud-relay/config.toml: source_rate: must be > 0, got -1`` or
``PMTUD_RELAY_PORTS: 'x' is not a port number``. Loading has no side effects, so a SIGHUP
reload that fails leaves the running configuration untouched (:func:`reload`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import ipaddress
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from pmtud_relay import hostinfo as _hostinfo
from pmtud_relay.peers import service as _peering
from pmtud_relay import safefile as _safefile
from pmtud_relay.nflog.capture import DEFAULT_GROUP as _NFLOG_DEFAULT_GROUP
from pmtud_relay.peers.receiver import parse_listen as _parse_listen
from pmtud_relay.core import dedup as _dedup
from pmtud_relay.core import policy as _pol
from pmtud_relay.peers import inbox as _peers
from pmtud_relay.core import ratelimit as _rl
from pmtud_relay.core.policy import Policy, VipSet
from pmtud_relay.core.relay import RelayConfig
from pmtud_relay.core.slots import slotted as _slotted
from pmtud_relay.rules import BACKENDS as _RULES_BACKENDS
from pmtud_relay.daemon import DaemonSettings as _DaemonSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.9/3.10: the same parser, from PyPI (tomli)
    import tomli as tomllib

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


class ConfigError(ValueError):
    """A bad setting. The message names the source (file, env var or flag) and the key."""


def _field_default(cls, name: str):
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.default
    raise KeyError(name)


# -- value parsers -------------------------------------------------------------------------
#
# A parser turns one *string* (a flag or environment value, or one list item) into a value,
# raising ValueError with a message that reads well after "SOURCE: key: ". A validator checks
# a value of the right Python type (from any source) the same way.


def _parse_int(text: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def _parse_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(text: str) -> bool:
    key = text.strip().lower()
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def _parse_str(text: str) -> str:
    return text.strip()


def _parse_port(text: str) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{text!r} is not a port number") from None
    return value


def _parse_prefix(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or prefix") from None


_IFNAME = re.compile(r"^[^\s/:]{1,15}$")


def _check_ifname(name: str) -> None:
    if not _IFNAME.match(name) or name in (".", ".."):
        raise ValueError(f"{name!r} is not an interface name (1-15 characters, no '/', ':' or blanks)")


def _check_vip_interface(pattern: str) -> None:
    if pattern.startswith("@"):
        if not re.fullmatch(r"@[a-z0-9_-]{1,32}", pattern):
            raise ValueError(f"{pattern!r} is not an interface kind (@dummy, @vlan, …)")
        return
    if not re.fullmatch(r"[^/:\s]{1,15}", pattern) or pattern in (".", ".."):
        raise ValueError(f"{pattern!r} is not an interface name or pattern (1-15 characters, no '/', ':' or "
                         "blanks; * ? [..] match as in the shell), nor @KIND")


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"port must be within 1..65535, got {port}")


def _check_protocol(name: str) -> None:
    _pol.protocol_numbers([name])  # raises ValueError naming the protocol


def _num(value: float) -> str:
    """1.0 → "1", 0.5 → "0.5", 70000 → "70000" (no exponent for ordinary figures)."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _range(lo: float | None = None, hi: float | None = None, *, gt: float | None = None,
           at_most: float | None = None):
    """A numeric check: ``lo``/``hi`` (a range, reported as "within lo..hi"), ``gt`` (strictly
    above), ``at_most`` (a documented maximum for a value otherwise bounded only below)."""

    def check(value):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
        if gt is not None and not value > gt:
            raise ValueError(f"must be > {_num(gt)}, got {_num(value)}")
        if lo is not None and value < lo:
            raise ValueError(f"must be >= {_num(lo)}, got {_num(value)}" if hi is None
                             else f"must be within {_num(lo)}..{_num(hi)}, got {_num(value)}")
        if hi is not None and value > hi:
            raise ValueError(f"must be within {_num(lo)}..{_num(hi)}, got {_num(value)}")
        if at_most is not None and value > at_most:
            raise ValueError(f"must be at most {_num(at_most)}, got {_num(value)}")

    check.hi = hi if at_most is None else at_most  # type: ignore[attr-defined]  # Key.maximum
    return check


# Maxima of the count and size settings (docs/configuration.md shows each; docs/security.md why).
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


def _choice(options: tuple[str, ...]):
    def check(value: str) -> None:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")

    return check


def _check_peer(text: str) -> None:
    _peers.parse_peer_spec(text)


def _check_peer_name(text: str) -> None:
    if _peers.parse_peer_spec(text).is_address:
        raise ValueError(f"{text!r} is an address, not a name (use peers)")


def _check_listen(text: str) -> None:
    if text.strip().lower() not in ("none", "off"):
        _parse_listen(text)


def _check_path(text: str) -> None:
    if not text:
        raise ValueError("empty path")


def split_address(text: str, allow_zero: bool = False) -> tuple[str, int]:
    """``"127.0.0.1:9781"`` / ``"[::1]:9781"`` / ``":9781"`` → (host, port). ValueError if not.
    Port 0 (any free port: tests) only with ``allow_zero``."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.%\w]+)\]:(\d+)|([^\[\]:]*):(\d+)", text)
    if not m:
        raise ValueError(f"{text!r} is not HOST:PORT (IPv6: [ADDR]:PORT; \"\" disables)")
    host = m.group(1) if m.group(1) is not None else m.group(3)
    port = int(m.group(2) or m.group(4))
    if host:
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    if not (0 if allow_zero else 1) <= port < 65536:
        raise ValueError(f"{text!r}: port must be within 1..65535")
    return host, port


def _check_metrics_address(text: str) -> None:
    if text:
        split_address(text)


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
       "(empty: the interface holding the default route)", "capture", _parse_str, _check_ifname,
       metavar="IFNAME", aliases=("-i", "--interface"), item=str,
       doc_default="default-route interface"),
    _k("capture", str, "afpacket", "how PTBs are captured: afpacket (an AF_PACKET socket with a "
       "BPF filter per interface) or nflog (an NFLOG group fed by nftables/iptables rules)",
       "capture", _parse_str, _choice(CAPTURE_BACKENDS), metavar="|".join(CAPTURE_BACKENDS),
       reload="restart"),
    _k("nflog_group", int, _NFLOG_DEFAULT_GROUP, "NFLOG group to read PTBs from (capture = nflog)",
       "capture", _parse_int, _range(0, 65535), metavar="N", reload="restart"),
    _k("manage_rules", bool, False, "install the NFLOG rules at start and remove them at exit "
       "(capture = nflog)", "capture", _parse_bool, reload="restart"),
    _k("rules_backend", str, "auto", "packet-filter back end for managed rules: auto, nft or "
       "iptables", "capture", _parse_str, _choice(RULES_BACKENDS),
       metavar="|".join(RULES_BACKENDS), reload="restart"),
    # policy
    _k("vips", list, (), "service addresses or prefixes; when set, replaces discovery from "
       "addresses on lo and dummy interfaces", "policy", _parse_prefix,
       metavar="PREFIX", aliases=("--vip",),
       doc_default="discovered"),
    _k("vip_interfaces", list, _hostinfo.DEFAULT_VIP_INTERFACES, "where discovery looks for service "
       "addresses (when vips is empty): interface names, shell-style patterns (vip*) or @KIND for every "
       "interface of that kind; @dummy includes kube-ipvs0 (kube-proxy IPVS). On lo the whole prefix "
       "counts, elsewhere the address only", "policy", _parse_str, _check_vip_interface,
       metavar="IFNAME", aliases=("--vip-interface",), item=str, doc_default="`lo`, `@dummy`"),
    _k("floor_v4", int, _pol.DEFAULT_FLOOR_V4, "lowest IPv4 MTU relayed (the kernel's "
       "net.ipv4.route.min_pmtu)", "policy", _parse_int, _range(68, 65535), metavar="BYTES"),
    _k("floor_v6", int, _pol.DEFAULT_FLOOR_V6, "lowest IPv6 MTU relayed (the IPv6 minimum "
       "link MTU)", "policy", _parse_int, _range(1280, 65535), metavar="BYTES"),
    _k("protocols", list, (), "relay only PTBs quoting these protocols: "
       + ", ".join(_pol.PROTOCOL_NAMES) + " or a number 0-255 (empty: any)", "policy",
       _parse_str, _check_protocol, metavar="NAME", aliases=("--protocol",), item=str,
       toml_item=(str, int), doc_default="any"),
    _k("ports", list, (), "relay only PTBs quoting one of these source (service) ports "
       "(empty: any)", "policy", _parse_port, _check_port, metavar="PORT",
       aliases=("--port",), item=int, toml_item=(int,), doc_default="any"),
    _k("allow_any_vip", bool, False, "accept a VIP prefix shorter than /"
       f"{MIN_VIP_PREFIX[4]} (IPv4) or /{MIN_VIP_PREFIX[6]} (IPv6), such as 0.0.0.0/0: nearly every "
       "address is then a VIP and the quoted-source check passes almost anything (logged as a "
       "warning at start)", "policy", _parse_bool),
    # dedup and rate limits
    _k("dedup_window", float, _dedup.DEFAULT_WINDOW, "seconds during which the same PTB (router, "
       "flow, MTU, quoted TCP sequence) is relayed once", "limits", _parse_float, _range(0), metavar="SECONDS"),
    _k("dedup_capacity", int, _dedup.DEFAULT_CAPACITY, "dedup table size (keys)", "limits",
       _parse_int, _range(1, at_most=MAX_TABLE), metavar="KEYS"),
    _k("source_rate", float, _rl.DEFAULT_SOURCE_RATE, "PTBs per second relayed per sending "
       "router (outer source)", "limits", _parse_float, _range(gt=0, at_most=MAX_RATE), metavar="PPS"),
    _k("source_burst", float, _rl.DEFAULT_SOURCE_BURST, "per-source burst (tokens)", "limits",
       _parse_float, _range(1, at_most=MAX_BURST), metavar="N"),
    _k("global_rate", float, _rl.DEFAULT_GLOBAL_RATE, "PTBs per second relayed in total",
       "limits", _parse_float, _range(gt=0, at_most=MAX_RATE), metavar="PPS"),
    _k("global_burst", float, _rl.DEFAULT_GLOBAL_BURST, "global burst (tokens)", "limits",
       _parse_float, _range(1, at_most=MAX_BURST), metavar="N"),
    _k("source_capacity", int, _rl.DEFAULT_SOURCE_CAPACITY, "sending routers tracked by the "
       "per-source limiter (oldest evicted)", "limits", _parse_int, _range(1, at_most=MAX_TABLE), metavar="N"),
    _k("global_reserve", float, _rl.DEFAULT_RESERVE, "share of global_rate and global_burst kept "
       "for sources that had a PTB relayed before the current flood episode began: taken only when "
       "the rest is empty (0 turns the reserve off; docs/rate-limits.md)", "limits", _parse_float,
       _range(0, _rl.MAX_RESERVE), metavar="SHARE"),
    _k("known_source_capacity", int, _rl.DEFAULT_KNOWN_CAPACITY, "sending routers remembered as "
       "known for the reserve (least recently relayed evicted)", "limits", _parse_int,
       _range(1, at_most=MAX_KNOWN_SOURCES), metavar="N"),
    _k("known_source_expiry", float, _rl.DEFAULT_KNOWN_EXPIRY, "seconds after its last relayed PTB "
       "that a sending router stops being known for the reserve", "limits", _parse_float,
       _range(gt=0, at_most=MAX_KNOWN_EXPIRY), metavar="SECONDS"),
    _k("shun_min_rate", float, _field_default(RelayConfig, "shun_min_rate"), "a source whose own "
       "bucket drops more than this many PTBs per second is dropped in the kernel for a while "
       "(AF_PACKET capture; docs/rate-limits.md)", "limits", _parse_float, _range(gt=0, at_most=MAX_RATE),
       metavar="PPS"),
    _k("shun_max_sources", int, _field_default(RelayConfig, "shun_max_sources"), "sources dropped "
       "in the kernel at once (0 turns the shun list off)", "limits", _parse_int, _range(0, at_most=MAX_SHUN_SOURCES),
       metavar="N"),
    # output
    _k("v6_broadcast", bool, _field_default(RelayConfig, "v6_broadcast"), "send IPv6 copies to "
       "ff:ff:ff:ff:ff:ff instead of 33:33:00:00:00:01", "output", _parse_bool),
    _k("confirm_owner", bool, True, "delivery confirmation: after relaying a PTB, and for other "
       "relays' L2 copies received here, ask the local kernel (sock_diag) whether a socket owns the "
       "quoted flow and whether its path MTU dropped; verdicts in metrics, dry-run lines and debug "
       "logs (docs/confirmation.md)", "output", _parse_bool, reload="restart"),
    _k("log_level", str, "info", "log level: " + ", ".join(LOG_LEVELS), "output", _parse_str,
       _choice(LOG_LEVELS), metavar="|".join(LOG_LEVELS)),
    _k("log_format", str, "logfmt", "log format on stderr: logfmt or json", "output", _parse_str,
       _choice(LOG_FORMATS), metavar="|".join(LOG_FORMATS)),
    _k("vip_refresh", float, _field_default(_DaemonSettings, "vip_refresh"), "seconds between "
       "re-reads of discovered service addresses besides the ones address and link events trigger at once",
       "output", _parse_float, _range(gt=0),
       metavar="SECONDS"),
    _k("summary_interval", float, _field_default(_DaemonSettings, "summary_interval"),
       "seconds between info-level summary log lines", "output", _parse_float, _range(gt=0),
       metavar="SECONDS"),
    _k("metrics_address", str, DEFAULT_METRICS_ADDRESS, "HOST:PORT of the Prometheus /metrics, "
       "/healthz and /readyz listener ([ADDR]:PORT for IPv6; empty disables)", "output",
       _parse_str, _check_metrics_address, metavar="HOST:PORT", reload="restart"),
    # peer relay across L3 (docs/peers.md)
    _k("fanout", str, "l2", "where accepted PTBs go: l2 (broadcast on the segment), peers (signed "
       "UDP to the peers serving the VIP) or both", "peers", _parse_str,
       _choice(_peering.FANOUT_MODES), metavar="|".join(_peering.FANOUT_MODES), reload="restart"),
    _k("peers", list, (), "peers as HOST[:PORT][=PREFIX,...] (default port "
       f"{_peers.DEFAULT_PORT})", "peers", _parse_str, _check_peer,
       metavar="HOST[:PORT][=PREFIX,...]", aliases=("--peer",), item=str, reload="restart",
       doc_default="none", env_sep=None),
    _k("peers_files", list, (), "files with one peer per line (same syntax as peers), re-read "
       "when they change", "peers", _parse_str, _check_path, metavar="PATH",
       aliases=("--peers-file",), item=str, reload="restart", doc_default="none"),
    _k("peers_dns", list, (), "names whose every A/AAAA record is a peer, as NAME[:PORT][=PREFIX,...]",
       "peers", _parse_str, _check_peer_name, metavar="NAME[:PORT][=PREFIX,...]", item=str,
       reload="restart", doc_default="none", env_sep=None),
    _k("peers_dns_interval", float, _peering.DEFAULT_DNS_INTERVAL, "seconds between "
       "re-resolutions of peers_dns names that carry no TTL (answered by getaddrinfo, or with no "
       "records); DNS answers are re-resolved at their TTL, clamped to 5..300 s", "peers", _parse_float, _range(gt=0),
       metavar="SECONDS", reload="restart"),
    _k("peers_refresh", float, _peering.DEFAULT_REFRESH, "seconds between checks of the peers "
       "files and the key file for changes", "peers", _parse_float, _range(gt=0),
       metavar="SECONDS", reload="restart"),
    _k("peer_listen", list, (), "ADDR:PORT to receive relayed PTBs on ('none' disables)", "peers",
       _parse_str, _check_listen, metavar="ADDR:PORT", item=str, reload="restart",
       doc_default=f"[::]:{_peers.DEFAULT_PORT} when sending to peers, else none"),
    _k("peer_key_file", str, "", "file with one or two KEYID:HEXKEY lines (the first signs, all "
       "verify); required for the peer relay", "peers", _parse_str, metavar="PATH",
       reload="restart", doc_default="none"),
    _k("peer_rate", float, _peers.DEFAULT_PEER_RATE, "datagrams per second sent to one peer",
       "peers", _parse_float, _range(gt=0, at_most=MAX_RATE), metavar="PPS", reload="restart"),
    _k("peer_burst", float, _peers.DEFAULT_PEER_BURST, "per-peer burst", "peers", _parse_float,
       _range(1, at_most=MAX_BURST), metavar="N", reload="restart"),
    _k("peer_max_age", float, _peering.peerproto.DEFAULT_MAX_AGE, "accept peer messages stamped "
       "within this many seconds of the local clock", "peers", _parse_float, _range(gt=0),
       metavar="SECONDS", reload="restart"),
    _k("peer_acks", bool, True, "delivery acknowledgements: a receiver whose host owns the flow a "
       "peer's PTB quotes answers the sender with one signed ack; a sender counts the acks for the "
       "PTBs it sent", "peers", _parse_bool, reload="restart"),
    _k("peer_ack_rate", float, _peering.DEFAULT_ACK_RATE, "acknowledgements per second this host "
       "sends at most (burst: twice that)", "peers", _parse_float, _range(gt=0, at_most=MAX_RATE),
       metavar="PPS", reload="restart"),
)

KEYS: dict[str, Key] = {k.name: k for k in SCHEMA}
_ENV_KEYS: dict[str, Key] = {k.env: k for k in SCHEMA}

#: The effective settings: one frozen field per schema key, derived from :data:`SCHEMA`.
Settings = _slotted(dataclasses.make_dataclass(
    "Settings",
    [(k.name, tuple if k.kind is list else k.kind, dataclasses.field(default=k.default)) for k in SCHEMA],
    frozen=True,
))
Settings.__module__ = __name__
Settings.__doc__ = "Effective settings, one field per key of pmtud_relay.config.SCHEMA."


@dataclass(frozen=True)
class Loaded:
    """Result of :func:`load`: the settings, where each came from, and the file read (if any)."""

    settings: Any  # Settings
    sources: Mapping[str, str]  # key → "default" | file path | env var name | flag
    path: str | None


# -- typing and validation of one value ----------------------------------------------------


def _validate(key: Key, value: Any) -> Any:
    """Run the key's check on ``value`` (each item for lists); return the value normalised."""
    if key.kind is list:
        items = tuple(value)
        if key.check is not None:
            for item in items:
                key.check(item)
        return tuple(dict.fromkeys(items))  # a repeated entry is harmless: keep the first
    if key.check is not None:
        key.check(value)
    return value


def _from_string(key: Key, text: str, split: bool) -> Any:
    """A flag or environment value; with ``split``, a list value is split on ``key.env_sep``
    (commas; blanks for keys whose items contain commas)."""
    if key.kind is list:
        if not split:
            parts = [text.strip()]
        elif key.env_sep is None:
            parts = text.split()
        else:
            parts = [p.strip() for p in text.split(key.env_sep)]
            if parts == [""]:
                parts = []
        if "" in parts:
            raise ValueError("empty list item")
        return _validate(key, [key.parse(p) for p in parts])
    return _validate(key, key.parse(text))


_TOML_TYPE = {int: "an integer", float: "a number", bool: "a boolean (true or false)", str: "a string"}


def _toml_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _from_toml(key: Key, value: Any) -> Any:
    if key.kind is list:
        if not isinstance(value, list):
            raise ValueError(f"expected an array, got {_toml_type_name(value)} {value!r}")
        out = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, key.toml_item):
                want = " or ".join(_TOML_TYPE[t] for t in key.toml_item)
                raise ValueError(f"array items must be {want}, got {_toml_type_name(item)} {item!r}")
            out.append(key.parse(item) if isinstance(item, str) else item)
        if key.name == "protocols":
            out = [str(p) for p in out]
        return _validate(key, out)
    if key.kind is bool:
        ok = isinstance(value, bool)
    elif key.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif key.kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"expected {_TOML_TYPE[key.kind]}, got {_toml_type_name(value)} {value!r}")
    return _validate(key, value)


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- the sources ---------------------------------------------------------------------------


def read_file(path: str, named_by: str | None = None) -> dict[str, Any]:
    """Parse and type-check one TOML file: {key: value}. ConfigError names the file and key;
    an error about the file itself (missing, not a regular file, too large) is prefixed with
    ``named_by``, the flag or variable that named it (``--config``, ``PMTUD_RELAY_CONFIG``).

    The file is opened without blocking and read only if it is a regular file of at most
    :data:`MAX_CONFIG_FILE` bytes (pmtud_relay.safefile): a FIFO in its place neither freezes
    start-up nor, on SIGHUP, the event loop."""
    prefix = f"{named_by}: " if named_by else ""
    try:
        raw = _safefile.read_regular(path, MAX_CONFIG_FILE)
    except _safefile.FileRefused as exc:
        raise ConfigError(f"{prefix}{exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for name, value in data.items():
        key = KEYS.get(name)
        if key is None:
            hint = _suggest(name, KEYS) or _suggest(name.replace("-", "_"), KEYS)
            raise ConfigError(f"{path}: {name}: unknown key{hint}")
        try:
            out[name] = _from_toml(key, value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {name}: {exc}") from None
    return out


def read_env(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """{key: (value, env var name)} from ``PMTUD_RELAY_*``; unknown names are errors."""
    out: dict[str, tuple[Any, str]] = {}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or var == ENV_CONFIG:
            continue
        key = _ENV_KEYS.get(var)
        if key is None:
            close = difflib.get_close_matches(var[len(ENV_PREFIX):], [k.name.upper() for k in SCHEMA] + ["CONFIG"],
                                              n=1, cutoff=0.75)
            hint = f" (did you mean {ENV_PREFIX + close[0]!r}?)" if close else ""
            raise ConfigError(f"{var}: unknown setting{hint}")
        try:
            out[key.name] = (_from_string(key, environ[var], True), var)
        except ValueError as exc:
            raise ConfigError(f"{var}: {exc}") from None
    return out


def read_args(args: argparse.Namespace | None) -> dict[str, tuple[Any, str]]:
    """{key: (value, flag)} for every option given on the command line."""
    out: dict[str, tuple[Any, str]] = {}
    if args is None:
        return out
    used: dict[str, str] = getattr(args, _FLAGS_USED, {}) or {}
    for key in SCHEMA:
        raw = getattr(args, key.name, UNSET)
        if raw is UNSET:
            continue
        flag = used.get(key.name, key.flag)
        try:
            if key.kind is list:
                value = _validate(key, [key.parse(v) if isinstance(v, str) else v for v in raw])
            elif isinstance(raw, str):
                value = _from_string(key, raw, False)
            else:
                value = _validate(key, raw)
        except ValueError as exc:
            raise ConfigError(f"{flag}: {exc}") from None
        out[key.name] = (value, flag)
    return out


def config_path(args: argparse.Namespace | None, environ: Mapping[str, str]) -> tuple[str | None, bool]:
    """(path, required): the file to read, and whether it must exist."""
    path, required, _ = _config_source(args, environ)
    return path, required


def _config_source(args: argparse.Namespace | None, environ: Mapping[str, str]) -> tuple[str | None, bool, str | None]:
    """(path, required, named_by): :func:`config_path` and the flag or variable naming the file."""
    given = getattr(args, "config", UNSET) if args is not None else UNSET
    if given is not UNSET and given is not None:
        return (given or None), True, "--config"
    if ENV_CONFIG in environ:
        return (environ[ENV_CONFIG] or None), True, ENV_CONFIG
    return DEFAULT_PATH, False, None


def load(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    path: str | None = None,
    *,
    use_default_path: bool = True,
) -> Loaded:
    """Build the effective settings; precedence flag > env > file > default.

    ``path`` overrides the file selection (``--config``/``PMTUD_RELAY_CONFIG``/default) and
    must exist; with ``use_default_path=False`` and no path named anywhere, no file is read.
    Pure: reads the file and ``environ`` only; raises :class:`ConfigError`.
    """
    environ = os.environ if environ is None else environ
    named_by = None
    if path is not None:
        file_path, required = str(path), True
    else:
        file_path, required, named_by = _config_source(args, environ)
        if not use_default_path and not required:
            file_path = None
    values: dict[str, Any] = {k.name: k.default for k in SCHEMA}
    sources: dict[str, str] = dict.fromkeys(values, "default")
    read_path = None
    if file_path is not None and (required or os.path.exists(file_path)):
        for name, value in read_file(file_path, named_by).items():
            values[name] = value
            sources[name] = file_path
        read_path = file_path
    for name, (value, var) in read_env(environ).items():
        values[name] = value
        sources[name] = var
    for name, (value, flag) in read_args(args).items():
        values[name] = value
        sources[name] = flag
    _cross_check(values, sources)
    return Loaded(Settings(**values), sources, read_path)


_PEER_KEYS = ("fanout", "peers", "peers_files", "peers_dns", "peers_dns_interval", "peers_refresh",
              "peer_listen", "peer_key_file", "peer_rate", "peer_burst", "peer_max_age", "peer_acks",
              "peer_ack_rate")


def _build_peer_settings(values: Mapping[str, Any], check_key_file: bool = True):
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
        check_key_file=check_key_file,
    )


def peer_settings(settings):
    """The peering.PeerSettings for ``settings`` (None: the peer relay is off)."""
    return _build_peer_settings({k: getattr(settings, k) for k in _PEER_KEYS})


def _cross_check(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """Constraints between keys; the message names both keys and where each came from."""
    try:
        _build_peer_settings(values)
    except ValueError as exc:  # PeerConfigError: the peer options do not fit together
        given = sorted({sources[k] for k in _PEER_KEYS if sources[k] != "default"}) or ["default"]
        raise ConfigError(f"{', '.join(given)}: {exc}") from None
    wide = _wide_prefixes(values["vips"])
    if wide and not values["allow_any_vip"]:
        src = sources["vips"]
        where = src if src.startswith("-") or src.startswith(ENV_PREFIX) else f"{src}: vips"
        p = wide[0]
        raise ConfigError(
            f"{where}: {p} is shorter than /{MIN_VIP_PREFIX[p.version]}: nearly every address would "
            f"count as a VIP, which turns off the quoted-source check; add --allow-any-vip "
            f"(allow_any_vip = true, {KEYS['allow_any_vip'].env}=1) if that is meant"
        )
    if values["manage_rules"] and values["capture"] != "nflog":
        raise ConfigError(
            f"{sources['manage_rules']}: manage_rules: the managed rules feed capture = \"nflog\", "
            f"but capture is {values['capture']!r} ({sources['capture']}): add --capture nflog "
            f"(or capture = \"nflog\", {KEYS['capture'].env}=nflog)"
        )


def _wide_prefixes(vips) -> list:
    return [p for p in vips if p.prefixlen < MIN_VIP_PREFIX[p.version]]


def wide_vips(settings) -> list[str]:
    """The configured VIP prefixes shorter than :data:`MIN_VIP_PREFIX` (loaded only with
    ``allow_any_vip``); the daemon warns about each at start and on reload."""
    return [str(p) for p in _wide_prefixes(settings.vips)]


def reload(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Loaded:
    """Load again for SIGHUP: same sources as at start, re-reading the file.

    No side effects: on ConfigError the caller keeps its current settings.
    """
    return load(args, environ)


def changes(old, new) -> tuple[list[str], list[str]]:
    """Keys that differ between two Settings: (applied live on reload, needing a restart)."""
    live, restart = [], []
    for key in SCHEMA:
        if getattr(old, key.name) != getattr(new, key.name):
            (restart if key.reload == "restart" else live).append(key.name)
    return live, restart


# -- to the core ---------------------------------------------------------------------------


def policy(settings, vips: VipSet | None = None) -> Policy:
    """The core Policy; ``vips`` (discovered addresses) is used when ``settings.vips`` is empty."""
    return Policy(
        vips=VipSet(settings.vips) if settings.vips else (vips if vips is not None else VipSet()),
        floor_v4=settings.floor_v4,
        floor_v6=settings.floor_v6,
        protocols=_pol.protocol_numbers(settings.protocols) if settings.protocols else None,
        ports=frozenset(settings.ports) if settings.ports else None,
    )


def relay_config(settings, vips: VipSet | None = None) -> RelayConfig:
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


def discover_vips(settings) -> bool:
    """True when service addresses come from discovery (no ``vips`` configured)."""
    return not settings.vips


# -- argparse ------------------------------------------------------------------------------


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


#: The argparse default of every schema option: "not given on the command line".
UNSET: Any = _Unset()
_FLAGS_USED = "_pmtud_relay_flags"


def _note_flag(namespace: argparse.Namespace, dest: str, option_string: str | None) -> None:
    used = getattr(namespace, _FLAGS_USED, None)
    if used is None:
        used = {}
        setattr(namespace, _FLAGS_USED, used)
    if option_string:
        used[dest] = option_string


class _Store(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _note_flag(namespace, self.dest, option_string)


class _Append(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, UNSET)
        items = [] if current is UNSET or current is None else list(current)
        items.append(values)
        setattr(namespace, self.dest, items)
        _note_flag(namespace, self.dest, option_string)


class _Bool(argparse.Action):
    def __init__(self, option_strings, dest, **kw):
        kw["nargs"] = 0
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith("--no-"))
        _note_flag(namespace, self.dest, option_string)


_GROUP_TITLES = {
    "capture": "capture",
    "policy": "policy",
    "limits": "dedup and rate limits",
    "output": "output, logs and metrics",
    "peers": "peer relay across L3 (docs/peers.md)",
}


def default_text(key: Key) -> str:
    if key.doc_default is not None:
        return key.doc_default
    if key.kind is bool:
        return "true" if key.default else "false"
    if key.kind is str and key.default == "":
        return '""'
    return str(key.default)


def _flag_type(key: Key) -> Callable[[str], Any]:
    """argparse ``type=``: parse and check one flag value (one item for lists), so a bad flag
    fails at parse time with argparse's usual ``argument --x: reason`` (exit status 2)."""

    def convert(text: str) -> Any:
        try:
            value = key.parse(text)
            if key.check is not None:
                key.check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    convert.__name__ = key.name
    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one option per schema key. Every default is :data:`UNSET`; values
    are parsed and checked by argparse (bad flags exit with status 2 naming the flag)."""
    parser.add_argument(
        "--config", default=UNSET, metavar="FILE",
        help=f"TOML configuration file (default {DEFAULT_PATH} if it exists; must exist when "
        f"named; \"\" reads none); also {ENV_CONFIG}",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for key in SCHEMA:
        g = groups.get(key.group)
        if g is None:
            g = groups[key.group] = parser.add_argument_group(_GROUP_TITLES.get(key.group, key.group))
        limit = f"; at most {_num(key.maximum)}" if key.maximum is not None else ""
        text = f"{key.help} (default {default_text(key)}{limit}; env {key.env})"
        if key.kind is bool:
            g.add_argument(key.flag, "--no-" + key.flag[2:], *key.aliases, dest=key.name,
                           action=_Bool, default=UNSET, help=text)
        elif key.kind is list:
            g.add_argument(*key.aliases, key.flag, dest=key.name, action=_Append, default=UNSET,
                           type=_flag_type(key), metavar=key.metavar, help=text + "; repeatable")
        else:
            g.add_argument(key.flag, *key.aliases, dest=key.name, action=_Store, default=UNSET,
                           type=_flag_type(key), metavar=key.metavar, help=text)


# -- printing ------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v if isinstance(v, (int, float, str)) else str(v)) for v in value) + "]"
    s = str(value)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(loaded: Loaded) -> str:
    """The effective configuration as TOML, each line commented with the value's source."""
    lines = [
        "# effective configuration of pmtud-relay (precedence: flag > environment > file > default)",
        f"# file: {loaded.path or 'none'}",
    ]
    body = [(f"{k.name} = {_toml_value(getattr(loaded.settings, k.name))}", loaded.sources[k.name]) for k in SCHEMA]
    width = max(len(text) for text, _ in body)
    lines += [f"{text:<{width}}  # {src}" for text, src in body]
    return "\n".join(lines) + "\n"


def check(path: str, environ: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """``pmtud-relay config check FILE``: (ok, text). text is the effective configuration
    (file + ``PMTUD_RELAY_*`` environment + defaults) or the error message."""
    try:
        loaded = load(None, environ, path=path)
    except ConfigError as exc:
        return False, f"{exc}\n"
    return True, render(loaded)


# -- docs ----------------------------------------------------------------------------------

DOC_BEGIN = "<!-- BEGIN GENERATED: config keys (python -m pmtud_relay.config --write-docs docs/configuration.md) -->"
DOC_END = "<!-- END GENERATED: config keys -->"


def markdown_table() -> str:
    """The reference table of every key, as docs/configuration.md carries it."""
    rows = [
        "| key | flag | environment variable | type | default | SIGHUP | meaning |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k in SCHEMA:
        flags = [k.flag] + (["--no-" + k.flag[2:]] if k.kind is bool else []) + list(k.aliases)
        if k.kind is list:
            kind = {str: "list of strings", int: "list of integers"}.get(k.item, "list of prefixes")
            if k.env_sep is None:
                kind += " (env: blank-separated)"
        else:
            kind = {int: "integer", float: "number", bool: "boolean", str: "string"}[k.kind]
        if k.metavar and "|" in k.metavar:
            kind = "one of " + ", ".join(f"`{c}`" for c in k.metavar.split("|"))
        default = default_text(k)
        default = f"`{default}`" if k.doc_default is None else default
        reload_text = "applied" if k.reload == "live" else "restart"
        meaning = k.help.replace('|', '/')
        if k.maximum is not None:
            meaning += f" (at most {_num(k.maximum)})"
        rows.append(
            f"| `{k.name}` | {', '.join(f'`{f}`' for f in flags)} | `{k.env}` | {kind} | {default} "
            f"| {reload_text} | {meaning} |"
        )
    return "\n".join(rows)


def sync_docs(text: str) -> str:
    """``text`` with the generated block between the markers replaced by :func:`markdown_table`."""
    start = text.index(DOC_BEGIN) + len(DOC_BEGIN)
    end = text.index(DOC_END)
    return text[:start] + "\n" + markdown_table() + "\n" + text[end:]


EXAMPLE_HEADER = f"""\
# {DEFAULT_PATH}: configuration of pmtud-relay.
#
# Every key is listed below, commented out, at its default: uncomment a line to change it.
# Flags of `pmtud-relay run` and PMTUD_RELAY_* environment variables override this file;
# `systemctl reload pmtud-relay` (SIGHUP) applies the keys marked "reload: applied" and keeps
# the running settings if the file is invalid. Check a change first with
#   pmtud-relay config check {DEFAULT_PATH}
# Reference: /usr/share/doc/pmtud-relay/docs/configuration.md (man pmtud-relay)
#
# Generated from the code's schema: python -m pmtud_relay.config --write-example FILE
"""


def example_toml() -> str:
    """The example configuration file: every key, commented out, at its default, with its help
    text, flag and environment variable. Packages install it as :data:`DEFAULT_PATH`."""
    import textwrap

    lines = [EXAMPLE_HEADER.rstrip("\n")]
    group = None
    for k in SCHEMA:
        if k.group != group:
            group = k.group
            lines += ["", f"## {_GROUP_TITLES.get(group, group)}"]
        about = k.help[0].upper() + k.help[1:] + "."
        if k.doc_default is not None:
            about += f" Default: {k.doc_default}."
        about += f" Flag {k.flag}, environment {k.env}; reload: "
        about += "applied." if k.reload == "live" else "needs a restart."
        lines.append("")
        lines += textwrap.wrap(about, width=98, initial_indent="# ", subsequent_indent="# ",
                               break_on_hyphens=False, break_long_words=False)
        lines.append(f"#{k.name} = {_toml_value(k.default)}")
    return "\n".join(lines) + "\n"


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pmtud_relay.config")
    p.add_argument("--write-docs", metavar="FILE", help="regenerate the key table in FILE")
    p.add_argument("--write-example", metavar="FILE",
                   help="write the example configuration (every key commented at its default) to FILE ('-': stdout)")
    p.add_argument("--check", metavar="FILE", help="validate FILE and print the effective config")
    a = p.parse_args(argv)
    if a.write_docs:
        with open(a.write_docs, encoding="utf-8") as f:
            old = f.read()
        new = sync_docs(old)
        if new != old:
            with open(a.write_docs, "w", encoding="utf-8") as f:
                f.write(new)
        return 0
    if a.write_example:
        if a.write_example == "-":
            sys.stdout.write(example_toml())
        else:
            with open(a.write_example, "w", encoding="utf-8") as f:
                f.write(example_toml())
        return 0
    if a.check:
        ok, text = check(a.check)
        (sys.stdout if ok else sys.stderr).write(text)
        return 0 if ok else 2
    print(markdown_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

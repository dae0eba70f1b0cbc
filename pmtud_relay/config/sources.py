"""The sources of the effective settings and their merge: flag > environment > TOML file >
default (:func:`load`). Every error is a :class:`ConfigError` whose message starts with the
source and the key, e.g. ``/etc/pmtud-relay/config.toml: source_rate: must be > 0, got -1`` or
``PMTUD_RELAY_PORTS: 'x' is not a port number``. Loading has no side effects, so a SIGHUP
reload that fails leaves the running configuration untouched (:func:`reload`)."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pmtud_relay import safefile as _safefile
from pmtud_relay.config import records
from pmtud_relay.config.schema import (
    DEFAULT_PATH,
    ENV_CONFIG,
    ENV_KEYS,
    ENV_PREFIX,
    KEYS,
    MAX_CONFIG_FILE,
    MIN_VIP_PREFIX,
    SCHEMA,
    ConfigError,
    Key,
    Settings,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.9/3.10: the same parser, from PyPI (tomli)
    import tomli as tomllib


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


#: The argparse default of every schema option: "not given on the command line".
UNSET: Any = _Unset()
#: The namespace attribute where the options record the spelling each flag was given as.
FLAGS_USED = "_pmtud_relay_flags"


@dataclass(frozen=True)
class Loaded:
    """Result of :func:`load`: the settings, where each came from, and the file read (if any)."""

    settings: Any  # Settings
    sources: Mapping[str, str]  # key → "default" | file path | env var name | flag
    path: str | None


# -- typing and validation of one value ----------------------------------------------------


def validate(key: Key, value: Any) -> Any:
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


def from_string(key: Key, text: str, split: bool) -> Any:
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
        return validate(key, [key.parse(p) for p in parts])
    return validate(key, key.parse(text))


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
        return validate(key, out)
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
    return validate(key, value)


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
        key = ENV_KEYS.get(var)
        if key is None:
            close = difflib.get_close_matches(var[len(ENV_PREFIX):], [k.name.upper() for k in SCHEMA] + ["CONFIG"],
                                              n=1, cutoff=0.75)
            hint = f" (did you mean {ENV_PREFIX + close[0]!r}?)" if close else ""
            raise ConfigError(f"{var}: unknown setting{hint}")
        try:
            out[key.name] = (from_string(key, environ[var], True), var)
        except ValueError as exc:
            raise ConfigError(f"{var}: {exc}") from None
    return out


def read_args(args: argparse.Namespace | None) -> dict[str, tuple[Any, str]]:
    """{key: (value, flag)} for every option given on the command line."""
    out: dict[str, tuple[Any, str]] = {}
    if args is None:
        return out
    used: dict[str, str] = getattr(args, FLAGS_USED, {}) or {}
    for key in SCHEMA:
        raw = getattr(args, key.name, UNSET)
        if raw is UNSET:
            continue
        flag = used.get(key.name, key.flag)
        try:
            if key.kind is list:
                value = validate(key, [key.parse(v) if isinstance(v, str) else v for v in raw])
            elif isinstance(raw, str):
                value = from_string(key, raw, False)
            else:
                value = validate(key, raw)
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
    file_path: str | None
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


def _cross_check(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """Constraints between keys; the message names both keys and where each came from."""
    try:
        records.build_peer_settings(values)
    except ValueError as exc:  # PeerConfigError: the peer options do not fit together
        given = sorted({sources[k] for k in records.PEER_KEYS if sources[k] != "default"}) or ["default"]
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
    live: list[str] = []
    restart: list[str] = []
    for key in SCHEMA:
        if getattr(old, key.name) != getattr(new, key.name):
            (restart if key.reload == "restart" else live).append(key.name)
    return live, restart



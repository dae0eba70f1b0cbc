"""Value parsers and checks of the configuration schema (pmtud_relay.config.schema).

A parser turns one *string* (a flag or environment value, or one list item) into a value,
raising ValueError with a message that reads well after "SOURCE: key: ". A check validates a
value of the right Python type (from any source) the same way.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Callable

from pmtud_relay.core import policy as _pol
from pmtud_relay.hostport import split_address
from pmtud_relay.peers import inbox as _peers
from pmtud_relay.peers.receiver import parse_listen as _parse_listen


def parse_int(text: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def parse_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(text: str) -> bool:
    key = text.strip().lower()
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def parse_str(text: str) -> str:
    return text.strip()


def parse_port(text: str) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{text!r} is not a port number") from None
    return value


def parse_prefix(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or prefix") from None


_IFNAME = re.compile(r"^[^\s/:]{1,15}$")


def check_ifname(name: str) -> None:
    if not _IFNAME.match(name) or name in (".", ".."):
        raise ValueError(f"{name!r} is not an interface name (1-15 characters, no '/', ':' or blanks)")


def check_vip_interface(pattern: str) -> None:
    if pattern.startswith("@"):
        if not re.fullmatch(r"@[a-z0-9_-]{1,32}", pattern):
            raise ValueError(f"{pattern!r} is not an interface kind (@dummy, @vlan, …)")
        return
    if not re.fullmatch(r"[^/:\s]{1,15}", pattern) or pattern in (".", ".."):
        raise ValueError(f"{pattern!r} is not an interface name or pattern (1-15 characters, no '/', ':' or "
                         "blanks; * ? [..] match as in the shell), nor @KIND")


def check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"port must be within 1..65535, got {port}")


def check_protocol(name: str) -> None:
    _pol.protocol_numbers([name])  # raises ValueError naming the protocol


def num(value: float) -> str:
    """1.0 → "1", 0.5 → "0.5", 70000 → "70000" (no exponent for ordinary figures)."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def in_range(lo: float | None = None, hi: float | None = None, *, gt: float | None = None,
             at_most: float | None = None) -> Callable[[float], None]:
    """A numeric check: ``lo``/``hi`` (a range, reported as "within lo..hi"), ``gt`` (strictly
    above), ``at_most`` (a documented maximum for a value otherwise bounded only below)."""

    def check(value: float) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value}")
        if gt is not None and not value > gt:
            raise ValueError(f"must be > {num(gt)}, got {num(value)}")
        if lo is not None and value < lo:
            raise ValueError(f"must be >= {num(lo)}, got {num(value)}" if hi is None
                             else f"must be within {num(lo)}..{num(hi)}, got {num(value)}")
        if hi is not None and value > hi:
            raise ValueError(f"must be within {num(lo or 0)}..{num(hi)}, got {num(value)}")
        if at_most is not None and value > at_most:
            raise ValueError(f"must be at most {num(at_most)}, got {num(value)}")

    check.hi = hi if at_most is None else at_most  # type: ignore[attr-defined]  # Key.maximum
    return check


def choice(options: tuple[str, ...]) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")

    return check


def check_peer(text: str) -> None:
    _peers.parse_peer_spec(text)


def check_peer_name(text: str) -> None:
    if _peers.parse_peer_spec(text).is_address:
        raise ValueError(f"{text!r} is an address, not a name (use peers)")


def check_listen(text: str) -> None:
    if text.strip().lower() not in ("none", "off"):
        _parse_listen(text)


def check_path(text: str) -> None:
    if not text:
        raise ValueError("empty path")


def check_metrics_address(text: str) -> None:
    if text:
        split_address(text)

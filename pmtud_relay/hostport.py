"""``HOST:PORT`` text → (host, port): shared by the configuration (which checks
``metrics_address``) and the metrics listener (which binds it). No imports of the package."""

from __future__ import annotations

import ipaddress
import re

_HOST_PORT = re.compile(r"\[([0-9A-Fa-f:.%\w]+)\]:(\d+)|([^\[\]:]*):(\d+)")


def split_address(text: str, allow_zero: bool = False) -> tuple[str, int]:
    """``"127.0.0.1:9781"`` / ``"[::1]:9781"`` / ``":9781"`` → (host, port). ValueError if not.
    Port 0 (any free port: tests) only with ``allow_zero``."""
    m = _HOST_PORT.fullmatch(text)
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

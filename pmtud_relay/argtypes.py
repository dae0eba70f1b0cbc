"""argparse ``type=`` converters shared by the subcommands that take options outside the
configuration schema (``rules``, ``analyze``). Each raises ArgumentTypeError with the reason,
which argparse prefixes with the option's name."""

from __future__ import annotations

import argparse
import ipaddress


def _number(text: str, kind):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None


def positive_float(text: str) -> float:
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def burst(text: str) -> float:
    value = _number(text, float)
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def port(text: str) -> int:
    value = _number(text, int)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port must be within 1..65535, got {text}")
    return value


def prefix(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address or prefix: {text!r}") from None

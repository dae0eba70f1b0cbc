"""Human and machine renderings of decisions (dry-run, analyze, debug logs)."""

from __future__ import annotations

import ipaddress
import json

from pmtud_relay.core.relay import Decision

FIELDS = ("family", "outer_src", "outer_dst", "mtu", "inner_src", "inner_dst", "proto", "sport", "dport")


def decision_record(decision: Decision, ifname: str | None = None) -> dict:
    """A flat dict: verdict, reason, interface and the PTB's fields (None when unparsed)."""
    rec: dict = {"verdict": "relay" if decision.relay else "drop", "reason": decision.reason.value}
    if ifname is not None:
        rec["interface"] = ifname
    ptb = decision.ptb
    if ptb is None:
        rec.update(dict.fromkeys(FIELDS))
        return rec
    rec.update(
        family=ptb.family,
        outer_src=str(ipaddress.ip_address(ptb.outer_src)),
        outer_dst=str(ipaddress.ip_address(ptb.outer_dst)),
        mtu=ptb.mtu,
        inner_src=str(ipaddress.ip_address(ptb.inner_src)),
        inner_dst=str(ipaddress.ip_address(ptb.inner_dst)),
        proto=ptb.proto,
        sport=ptb.sport if ptb.sport >= 0 else None,
        dport=ptb.dport if ptb.dport >= 0 else None,
    )
    return rec


def logfmt(rec: dict) -> str:
    """``key=value`` pairs; values with spaces, quotes or '=' are quoted; None becomes empty."""
    parts = []
    for key, value in rec.items():
        text = "" if value is None else str(value)
        if not text or any(c in text for c in ' "=\\') :
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def to_json(rec: dict) -> str:
    return json.dumps(rec, separators=(",", ":"), sort_keys=False)

"""The owner verdicts of a running relay (delivery confirmation), read from its /metrics.

Best effort and read-only: for each relay process found, its metrics address comes from
``--metrics-address`` or ``PMTUD_RELAY_METRICS_ADDRESS`` (else the default); one HTTP GET with
a short timeout. :func:`parse_verdicts` and :func:`check_verdicts` are pure (tested with text).
"""

from __future__ import annotations

import re
import urllib.request

from pmtud_relay.doctor.findings import Finding, Severity

DEFAULT_METRICS_ADDRESS = "127.0.0.1:9781"  # config.DEFAULT_METRICS_ADDRESS (not imported: doctor stays light)
TIMEOUT = 2.0
_SAMPLE = re.compile(r'^pmtud_relay_owner_verdicts_total\{([^}]*)\}\s+([0-9.eE+-]+)\s*$')
_ENABLED = re.compile(r'^pmtud_relay_owner_lookup_enabled\s+([0-9.eE+-]+)\s*$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_verdicts(text: str) -> tuple[dict[tuple[str, str], float], bool | None]:
    """({(origin, verdict): count}, lookup enabled or None when not exported) from a scrape."""
    counts: dict[tuple[str, str], float] = {}
    enabled = None
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            labels = dict(_LABEL.findall(m.group(1)))
            counts[(labels.get("origin", ""), labels.get("verdict", ""))] = float(m.group(2))
            continue
        m = _ENABLED.match(line)
        if m:
            enabled = float(m.group(1)) == 1
    return counts, enabled


def check_verdicts(counts: dict[tuple[str, str], float], enabled: bool | None, where: str) -> Finding:
    name = "relay.owner_verdicts"
    if not counts and enabled is None:
        return Finding(name, Severity.INFO, f"{where}: no owner verdicts exported (delivery confirmation off, or an "
                       "older relay)", fix="confirm_owner = true (the default) and restart the relay")
    if enabled is False:
        return Finding(name, Severity.WARNING, f"{where}: owner lookups unavailable (no sock_diag)",
                       "The relay relays but cannot say whether PTBs reach an owner; the fleet-wide owner ratio "
                       "is blind to this host's flows.", "see the relay's owner_lookup_unavailable log line")
    total = sum(counts.values())
    by = {v: sum(n for (_o, vv), n in counts.items() if vv == v)
          for v in ("applied", "not_applied", "orphan", "unknown")}
    captured = sum(n for (o, _v), n in counts.items() if o == "captured")
    data = {"verdicts": {f"{o}/{v}": n for (o, v), n in sorted(counts.items())}, "captured": captured}
    if not total:
        return Finding(name, Severity.OK, f"{where}: no PTB looked up since start", data=data)
    known = total - by["unknown"]
    orphan_rate = by["orphan"] / known if known else 0.0
    data["orphan_rate"] = round(orphan_rate, 4)
    summary = (f"{where}: {int(total)} PTBs looked up ({int(captured)} captured here): {int(by['applied'])} applied, "
               f"{int(by['not_applied'])} not applied, {int(by['orphan'])} orphans ({orphan_rate:.0%}), "
               f"{int(by['unknown'])} unknown")
    detail = ("Each relayed PTB is looked up on every host that receives it and has at most one owner, so on N "
              "servers about (N-1)/N orphans per host is normal; the fleet-wide ratio of PTBs that found an owner "
              "is the PromQL in docs/metrics.md.")
    severity = Severity.INFO
    fix = ""
    if by["unknown"] > 0.1 * total:
        severity = Severity.WARNING
        detail += " More than 10% of the lookups gave no answer (errors or a full lookup queue)."
        fix = "see pmtud_relay_owner_lookup_errors_total and pmtud_relay_owner_lookup_queue_full_total"
    if by["applied"] + by["not_applied"] and by["not_applied"] > by["applied"]:
        severity = Severity.WARNING
        detail += (" Most PTBs owned here did not lower the PMTU: quoted sequence numbers out of window (forged or "
                   "late PTBs) or MTUs below net.ipv4.route.min_pmtu.")
    return Finding(name, severity, summary, detail, fix, data)


def metrics_address(relay) -> str:
    """Where ``relay`` (a relayproc.RelayProcess) serves /metrics; "" when disabled."""
    found = relay._option("--metrics-address")
    if found:
        return found[-1]
    return relay.env.get("PMTUD_RELAY_METRICS_ADDRESS", DEFAULT_METRICS_ADDRESS)


def fetch(address: str, timeout: float = TIMEOUT) -> str:
    host, _, port = address.rpartition(":")
    host = host or "127.0.0.1"
    if host in ("0.0.0.0", "[::]", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as resp:  # noqa: S310 - local scrape
        return resp.read(4 << 20).decode("utf-8", "replace")


def check(relays, get=fetch) -> list[Finding]:
    out = []
    for relay in relays:
        if relay.same_netns is False:
            continue
        address = metrics_address(relay)
        where = f"relay pid {relay.pid}"
        if not address:
            out.append(Finding("relay.owner_verdicts", Severity.INFO,
                               f"{where}: metrics disabled, orphan rate unknown"))
            continue
        try:
            text = get(address)
        except Exception as exc:  # noqa: BLE001 - best effort
            out.append(Finding("relay.owner_verdicts", Severity.INFO,
                               f"{where}: could not read http://{address}/metrics ({exc})"))
            continue
        out.append(check_verdicts(*parse_verdicts(text), where + f" ({address})"))
    return out

"""``pmtud-relay doctor``: read-only host inspection with findings, severities and fixes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from pmtud_relay.doctor import findings as fnd
from pmtud_relay.doctor.findings import Finding, Severity

CHECKS = ("sysctls", "pmtu-cache", "counters", "interfaces", "relay")
MAX_INTERVAL = 3600.0


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= MAX_INTERVAL:
        raise argparse.ArgumentTypeError(f"must be within (0, {MAX_INTERVAL:.0f}] seconds, got {text}")
    return value


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--json", action="store_true", help="print the findings as one JSON list")
    p.add_argument("--interval", type=_interval, metavar="SECONDS",
                   help="read the ICMP counters twice, SECONDS apart, and report rates")
    p.add_argument("--check", action="append", dest="checks", choices=CHECKS, metavar="NAME",
                   help=f"run only this check (repeatable): {', '.join(CHECKS)} (default: all)")
    p.add_argument("--proc-root", default="/proc", metavar="PATH",
                   help="read sysctls, counters and processes under PATH instead of /proc "
                        "(a copied or fixture tree; netlink checks still inspect the live host)")
    p.add_argument("--brief", action="store_true", help="text output: one line per finding, no explanations")
    p.add_argument("--no-color", action="store_true", help="never colour the text output")
    p.set_defaults(handler=main)
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``doctor`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "doctor",
        help="inspect this host for settings and state that break PMTUD or the relay (read-only)",
        description="Inspect this host (read-only): sysctls, learned PMTUs, ICMP counters, tunnel MTUs, "
        "VIPs and the relay itself. Exit code: 0 nothing above info, 1 warnings, 2 critical findings.",
    )
    return configure_parser(p)


def _guard(name: str, fn: Callable[[], list[Finding]]) -> list[Finding]:
    try:
        return fn()
    except Exception as exc:  # a check that cannot run is reported, never fatal
        return [Finding(name, Severity.INFO, f"check could not run: {type(exc).__name__}: {exc}")]


def run_checks(checks=CHECKS, proc_root: str | Path = "/proc", interval: float | None = None) -> list[Finding]:
    from pmtud_relay.doctor import counters, links, pmtu_cache, relayproc, sysctls

    live = Path(proc_root) == Path("/proc")
    out: list[Finding] = []
    records: list | None = None

    def get_links():
        nonlocal records
        if records is None:
            records = links.collect()
        return records

    if "sysctls" in checks:
        def do_sysctls():
            wanted = None
            if live:
                try:
                    wanted = [r.name for r in get_links() if r.up and r.name != "lo"]
                except Exception:
                    wanted = None
            return sysctls.check_all(proc_root, wanted)
        out += _guard("sysctl", do_sysctls)
    if "pmtu-cache" in checks:
        def do_cache():
            min_pmtu = sysctls.read_int(proc_root, "net", "ipv4", "route", "min_pmtu") or 552
            try:
                mtus = {r.name: r.mtu for r in get_links()}
            except Exception:
                mtus = {}
            return pmtu_cache.check(pmtu_cache.dump_exceptions(), min_pmtu, mtus)
        out += _guard("pmtu_cache", do_cache)
    if "interfaces" in checks:
        out += _guard("interfaces", lambda: links.check(get_links()))
    if "relay" in checks:
        def do_relay():
            relays = relayproc.find_relays(proc_root)
            res = [relayproc.check_process(relays)]
            try:
                from pmtud_relay import hostinfo

                vips, err = hostinfo.discover_vips(), None
            except Exception as exc:
                vips, err = None, f"{type(exc).__name__}: {exc}"
            res.append(relayproc.check_vips(vips, relays, err))
            res.append(relayproc.check_rules(relays=relays))
            if live:
                from pmtud_relay.doctor import owners

                res += owners.check(relays)
            return res
        out += _guard("relay", do_relay)
    if "counters" in checks:  # last: it may sleep for --interval
        def do_counters():
            before, after, seconds = counters.sample(proc_root, interval)
            return counters.check(before, after, seconds)
        out += _guard("counters", do_counters)
    return out


def main(args: argparse.Namespace) -> int:
    checks = tuple(dict.fromkeys(args.checks)) if getattr(args, "checks", None) else CHECKS
    results = run_checks(checks, args.proc_root, args.interval)
    if args.json:
        print(fnd.to_json(results))
    else:
        colour = False if args.no_color else None
        sys.stdout.write(fnd.render_text(results, colour=colour, verbose=not args.brief))
    return fnd.exit_code(results)


def cli(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m pmtud_relay.doctor``) until the CLI wiring lands."""
    parser = configure_parser(argparse.ArgumentParser(prog="pmtud-relay doctor"))
    return main(parser.parse_args(argv))

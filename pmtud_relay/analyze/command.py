"""``pmtud-relay analyze FILE``: the options, the run and the exit status.

The policy and limit options are the configuration schema's (pmtud_relay.config), with the
same spellings, bounds and help as for ``run``; they are read from the command line only
(no environment, no configuration file), and turned into the core's RelayConfig the way the
daemon's are (:func:`pmtud_relay.config.relay_config`). VIPs are never inferred (that would
hide ``not_vip`` drops): pass ``--vip`` or say ``--assume-vips``.
"""

from __future__ import annotations

import argparse
import json
import sys

from pmtud_relay import config as cfg
from pmtud_relay.analyze.analysis import Analyzer
from pmtud_relay.analyze.capture import AnalyzeError, CaptureInfo, read_capture
from pmtud_relay.analyze.report import render_text
from pmtud_relay.config.options import help_text
from pmtud_relay.core.frame import parse_mac
from pmtud_relay.core.policy import VipSet
from pmtud_relay.core.relay import RelayConfig

EXIT_OK = 0
EXIT_ERROR = 1  # unreadable or unsupported capture
EXIT_USAGE = 2  # bad options (argparse uses 2 as well)

#: The schema keys analyze takes, by help group: what shapes the core's decisions offline.
POLICY_KEYS = ("floor_v4", "floor_v6", "protocols", "ports", "allow_any_vip")
LIMIT_KEYS = ("dedup_window", "dedup_capacity", "source_rate", "source_burst", "global_rate", "global_burst",
              "source_capacity", "global_reserve", "known_source_capacity", "known_source_expiry")
#: --assume-vips: every quoted source counts as a VIP.
ANY_VIP = ("0.0.0.0/0", "::/0")


def _mac(text: str) -> bytes:
    try:
        return parse_mac(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _add_keys(container, names, help: str | None = None) -> None:
    for name in names:
        key = cfg.KEYS[name]
        # Checked when the settings are loaded, so that a bad value is reported like a bad
        # capture (message on stderr, exit status 2) instead of by argparse.
        cfg.add_key(container, key, check_at_parse=False, help=help or help_text(key, env=False))


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("file", metavar="FILE", help="capture file: pcap or pcapng (gzip-compressed is fine)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--top", type=_positive_int, default=10, metavar="N",
                   help="rows per table and inner flows listed (default %(default)s)")
    p.add_argument("--list", action="store_true", dest="list_decisions",
                   help="also list every PTB decision (text: logfmt lines; JSON: a 'decisions' array)")
    g = p.add_argument_group("service addresses (one of these is required)")
    vg = g.add_mutually_exclusive_group(required=True)
    _add_keys(vg, ("vips",), help="service address or prefix (repeatable), as for run")
    vg.add_argument("--assume-vips", action="store_true",
                    help="treat every quoted source as a VIP (no not_vip drops: use only to see what the "
                         "other stages would do)")
    g = p.add_argument_group("policy (as for run)")
    _add_keys(g, POLICY_KEYS)
    g.add_argument("--host-mac", action="append", type=_mac, dest="host_macs", metavar="MAC",
                   help="MAC(s) of the capturing host: Ethernet frames from it count as its own, frames to "
                        "other unicast MACs as seen promiscuously (default: every unicast frame is for this host)")
    _add_keys(p.add_argument_group("dedup and rate limits (as for run)"), LIMIT_KEYS)
    p.set_defaults(handler=main)
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``analyze`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "analyze",
        help="replay a pcap/pcapng capture through the relay's decisions, offline",
        description="Run every frame of a capture through the relay's core (parser, policy, dedup, rate "
        "limits) with the capture's timestamps as the clock, and report what would have been relayed, what "
        "dropped and why, per source, per MTU and per inner flow. Nothing is sent.",
    )
    return configure_parser(p)


def relay_config(args: argparse.Namespace) -> RelayConfig:
    """The core's configuration from the options (flags only); ConfigError names the flag."""
    settings = cfg.load(args, environ={}, use_default_path=False).settings
    return cfg.relay_config(settings, vips=VipSet(ANY_VIP) if args.assume_vips else None)


def analyze_file(path: str, config: RelayConfig, host_macs=frozenset(), top: int = 10,
                 keep_decisions: bool = False) -> dict:
    """Analyse ``path`` and return the report as a JSON-ready dict (AnalyzeError if unreadable)."""
    info = CaptureInfo(path)
    analyzer = Analyzer(config, frozenset(host_macs), top, keep_decisions)
    for data, ts, linktype, direction, wirelen in read_capture(path, info):
        analyzer.feed(data, ts, linktype, direction, wirelen)
    return analyzer.result(path, info.format)


def main(args: argparse.Namespace) -> int:
    try:
        config = relay_config(args)
    except cfg.ConfigError as exc:
        print(f"pmtud-relay analyze: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        res = analyze_file(args.file, config, frozenset(args.host_macs or ()), args.top, args.list_decisions)
    except AnalyzeError as exc:
        print(f"pmtud-relay analyze: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(res, indent=2))
        return EXIT_OK
    sys.stdout.write(render_text(res, args.top))
    if args.list_decisions:
        from pmtud_relay.report import logfmt

        print("\ndecisions")
        for rec in res["decisions"]:
            print(logfmt(rec))
    return EXIT_OK


def cli(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m pmtud_relay.analyze``."""
    parser = configure_parser(argparse.ArgumentParser(prog="pmtud-relay analyze"))
    return main(parser.parse_args(argv))

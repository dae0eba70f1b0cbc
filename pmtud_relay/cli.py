"""Command line: ``pmtud-relay run`` and ``pmtud-relay dry-run``."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import sys

from pmtud_relay import __version__, logs
from pmtud_relay.core import dedup, policy as pol, ratelimit as rl
from pmtud_relay.core.policy import Policy, VipSet, protocol_numbers
from pmtud_relay.core.relay import RelayConfig

EXIT_CONFIG = 2
EXIT_PRIVILEGE = 77  # sysexits EX_NOPERM


class ConfigError(ValueError):
    """A bad option: the message names the option and the reason."""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port must be within 1..65535, got {text}")
    return value


def _prefix(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address or prefix: {text!r}") from None


def _add_relay_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("capture")
    g.add_argument(
        "-i",
        "--interface",
        action="append",
        dest="interfaces",
        metavar="IFNAME",
        help="interface to capture PTBs on and send copies out of (repeatable; "
        "default: the interface holding the default route)",
    )
    g = p.add_argument_group("policy")
    g.add_argument(
        "--vip",
        action="append",
        type=_prefix,
        dest="vips",
        metavar="PREFIX",
        help="service address or prefix (repeatable); replaces discovery from lo and dummy interfaces",
    )
    g.add_argument("--floor-v4", type=int, default=pol.DEFAULT_FLOOR_V4, metavar="BYTES",
                   help="lowest IPv4 MTU relayed (default %(default)s, the kernel's min_pmtu)")
    g.add_argument("--floor-v6", type=int, default=pol.DEFAULT_FLOOR_V6, metavar="BYTES",
                   help="lowest IPv6 MTU relayed (default %(default)s)")
    g.add_argument("--protocol", action="append", dest="protocols", metavar="NAME",
                   help="relay only PTBs quoting this protocol: tcp, udp, sctp, udplite, icmp or a number (repeatable)")
    g.add_argument("--port", action="append", type=_port, dest="ports", metavar="PORT",
                   help="relay only PTBs quoting this source (service) port (repeatable)")
    g = p.add_argument_group("dedup and rate limits")
    g.add_argument("--dedup-window", type=_non_negative_float, default=dedup.DEFAULT_WINDOW, metavar="SECONDS",
                   help="relay the same (flow, MTU) once per window (default %(default)s)")
    g.add_argument("--dedup-capacity", type=_positive_int, default=dedup.DEFAULT_CAPACITY, metavar="KEYS",
                   help="dedup table size (default %(default)s)")
    g.add_argument("--source-rate", type=_positive_float, default=rl.DEFAULT_SOURCE_RATE, metavar="PPS",
                   help="PTBs per second relayed per sending router (default %(default)s)")
    g.add_argument("--source-burst", type=_positive_float, default=rl.DEFAULT_SOURCE_BURST, metavar="N",
                   help="per-source burst (default %(default)s)")
    g.add_argument("--global-rate", type=_positive_float, default=rl.DEFAULT_GLOBAL_RATE, metavar="PPS",
                   help="PTBs per second relayed in total (default %(default)s)")
    g.add_argument("--global-burst", type=_positive_float, default=rl.DEFAULT_GLOBAL_BURST, metavar="N",
                   help="global burst (default %(default)s)")
    g.add_argument("--source-capacity", type=_positive_int, default=rl.DEFAULT_SOURCE_CAPACITY, metavar="N",
                   help="sources tracked by the per-source limiter (default %(default)s)")
    g = p.add_argument_group("output")
    g.add_argument("--v6-broadcast", action="store_true",
                   help="send IPv6 copies to ff:ff:ff:ff:ff:ff instead of 33:33:00:00:00:01")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    g.add_argument("--log-format", default="logfmt", choices=["logfmt", "json"])
    g.add_argument("--vip-refresh", type=_positive_float, default=5.0, metavar="SECONDS",
                   help="how often discovered service addresses are re-read (default %(default)s)")
    g.add_argument("--summary-interval", type=_positive_float, default=60.0, metavar="SECONDS",
                   help="how often an info-level summary is logged (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pmtud-relay",
        description="Relay ICMP Packet Too Big messages to the server that owns the flow "
        "(Path MTU Discovery behind ECMP routers and L4 load balancers).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    run = sub.add_parser("run", help="capture PTBs and relay them (needs CAP_NET_RAW)")
    _add_relay_options(run)
    dry = sub.add_parser("dry-run", help="capture and decide like run, send nothing, print every decision")
    _add_relay_options(dry)
    dry.add_argument("--json", action="store_true", help="print decisions as JSON lines")
    return parser


def relay_config(args: argparse.Namespace) -> tuple[RelayConfig, bool]:
    """Build the core configuration from options; ConfigError names the option at fault."""
    try:
        protocols = protocol_numbers(args.protocols) if args.protocols else None
    except ValueError as exc:
        raise ConfigError(f"--protocol: {exc}") from None
    try:
        policy = Policy(
            vips=VipSet(args.vips or ()),
            floor_v4=args.floor_v4,
            floor_v6=args.floor_v6,
            protocols=protocols,
            ports=frozenset(args.ports) if args.ports else None,
        )
    except ValueError as exc:
        option = "--floor-v4" if "floor_v4" in str(exc) else "--floor-v6" if "floor_v6" in str(exc) else "--port"
        raise ConfigError(f"{option}: {exc}") from None
    if args.source_burst < 1:
        raise ConfigError("--source-burst: must be >= 1")
    if args.global_burst < 1:
        raise ConfigError("--global-burst: must be >= 1")
    config = RelayConfig(
        policy=policy,
        dedup_window=args.dedup_window,
        dedup_capacity=args.dedup_capacity,
        source_rate=args.source_rate,
        source_burst=args.source_burst,
        global_rate=args.global_rate,
        global_burst=args.global_burst,
        source_capacity=args.source_capacity,
        v6_broadcast=args.v6_broadcast,
    )
    return config, not args.vips


def _run_daemon(args: argparse.Namespace, dry_run: bool) -> int:
    from pmtud_relay import hostinfo
    from pmtud_relay.daemon import DaemonSettings, RelayDaemon, run_event_loop

    log = logs.setup(args.log_level, args.log_format)
    try:
        config, discover = relay_config(args)
    except ConfigError as exc:
        print(f"pmtud-relay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        interfaces = tuple(dict.fromkeys(args.interfaces)) if args.interfaces else (hostinfo.default_interface(),)
    except hostinfo.HostInfoError as exc:
        print(f"pmtud-relay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    settings = DaemonSettings(
        interfaces=interfaces,
        relay=config,
        discover_vips=discover,
        dry_run=dry_run,
        json_output=getattr(args, "json", False),
        vip_refresh=args.vip_refresh,
        summary_interval=args.summary_interval,
    )
    daemon = RelayDaemon(settings)
    try:
        daemon.open()
    except PermissionError:
        print(
            "pmtud-relay: permission denied opening AF_PACKET sockets: it needs CAP_NET_RAW "
            "(run as root, or grant it, e.g. systemd AmbientCapabilities=CAP_NET_RAW)",
            file=sys.stderr,
        )
        return EXIT_PRIVILEGE
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ENXIO):
            print(f"pmtud-relay: --interface: no such interface among {', '.join(interfaces)}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"pmtud-relay: cannot open capture on {', '.join(interfaces)}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        run_event_loop(daemon.serve)
    except KeyboardInterrupt:
        pass
    finally:
        daemon.close()
    log.debug("exit")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run_daemon(args, dry_run=False)
    if args.command == "dry-run":
        return _run_daemon(args, dry_run=True)
    return EXIT_CONFIG  # unreachable: argparse enforces a command

"""Command line: ``pmtud-relay run`` and ``pmtud-relay dry-run``."""

from __future__ import annotations

import argparse
import errno
import sys

from pmtud_relay import __version__, logs
from pmtud_relay import config as cfg
from pmtud_relay.config.options import help_text

EXIT_CONFIG = 2
EXIT_PRIVILEGE = 77  # sysexits EX_NOPERM


ConfigError = cfg.ConfigError


def _add_relay_options(p: argparse.ArgumentParser) -> None:
    """Every configuration key as a flag (pmtud_relay.config.SCHEMA), plus --config."""
    cfg.add_arguments(p)


#: The schema keys ``rules`` takes: what shapes the rule set (pmtud_relay.rules.RuleSpec).
RULES_LIMIT_KEYS = ("source_rate", "source_burst", "global_rate", "global_burst")


def _add_rules_parser(sub) -> None:
    rules = sub.add_parser("rules", help="show, install or remove the firewall rules for --capture nflog")
    rules.add_argument("action", choices=["show", "install", "remove"],
                       help="show: print the exact rules install would load; install: load them (replacing "
                       "earlier ones); remove: delete them")
    # The settings are the schema's (same bounds as for run), read from the command line only;
    # they are checked when loaded, so that errors are reported like the rules' own (exit 2).
    cfg.add_key(rules, "rules_backend", flags=("--backend",), check_at_parse=False,
                help="auto (default): nft if it works, else iptables; remove with auto clears both")
    cfg.add_key(rules, "interfaces", flags=("-i", "--interface"), check_at_parse=False,
                help="interface the PTBs arrive on (repeatable; default: the default-route interface)")
    cfg.add_key(rules, "nflog_group", check_at_parse=False,
                help=f"NFLOG group (default {cfg.KEYS['nflog_group'].default})")
    g = rules.add_argument_group("limits (the userspace limits; the in-kernel ones are twice these)")
    for name in RULES_LIMIT_KEYS:
        cfg.add_key(g, name, check_at_parse=False, help=help_text(cfg.KEYS[name], env=False))


def _rules_command(args: argparse.Namespace) -> int:
    from pmtud_relay import hostinfo, rules

    try:
        settings = cfg.load(args, environ={}, use_default_path=False).settings
    except ConfigError as exc:
        print(f"pmtud-relay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    backend_name = settings.rules_backend
    missing = rules.missing_library(backend_name)
    if missing:
        print(f"pmtud-relay: --backend iptables: {missing}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.action == "remove":
            backends = [rules.resolve(backend_name)]
            if backend_name == "auto":
                backends += rules.others(backends[0])
            for backend in backends:
                removed = backend.remove()
                print(f"{backend.name}: {'removed' if removed else 'nothing to remove'}")
            return 0
        try:
            interfaces = settings.interfaces or (hostinfo.default_interface(),)
        except hostinfo.HostInfoError as exc:
            print(f"pmtud-relay: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        try:
            spec = rules.RuleSpec.from_limits(interfaces, settings.nflog_group, settings.source_rate,
                                              settings.source_burst, settings.global_rate, settings.global_burst)
        except ValueError as exc:
            print(f"pmtud-relay: --interface: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        if args.action == "show":  # needs no privilege: falls back to a guess without one
            backend = rules.get_backend(backend_name if backend_name != "auto" else _guess_backend())
            sys.stdout.write(backend.render(spec))
            return 0
        backend = rules.resolve(backend_name)
        backend.install(spec)
        print(f"{backend.name}: installed for {', '.join(interfaces)}, NFLOG group {spec.group}")
        return 0
    except rules.RulesError as exc:
        print(f"pmtud-relay: {exc}", file=sys.stderr)
        text = str(exc)
        return EXIT_PRIVILEGE if "CAP_NET_ADMIN" in text or "not permitted" in text else 1


def _guess_backend() -> str:
    """What ``auto`` would pick; without the privilege to ask the kernel, nft if it is installed."""
    from pmtud_relay import rules
    from pmtud_relay.rules.nft import nft_binary

    try:
        return rules.detect().name
    except rules.RulesError:
        return "nft" if nft_binary() else "iptables"


DAEMON_COMMANDS = ("run", "dry-run")


def build_parser(tools: bool = True) -> argparse.ArgumentParser:
    """The whole command line; ``tools=False`` leaves out analyze, doctor and lab, whose modules
    the daemon then never imports (about 1 MiB of resident memory, docs/performance.md)."""
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
    _add_rules_parser(sub)
    conf = sub.add_parser("config", help="configuration tools")
    conf_sub = conf.add_subparsers(dest="config_command", metavar="ACTION")
    conf_sub.required = True
    check = conf_sub.add_parser("check", help="validate FILE and print the effective configuration "
                                "(file + PMTUD_RELAY_* environment + defaults) with each value's source")
    check.add_argument("file", metavar="FILE")
    if tools:
        from pmtud_relay import analyze, doctor
        from pmtud_relay.lab import command as labcmd

        analyze.add_parser(sub)
        doctor.add_parser(sub)
        labcmd.add_parser(sub).set_defaults(handler=labcmd.main)
    return parser


def _run_daemon(args: argparse.Namespace, dry_run: bool) -> int:
    from pmtud_relay import hostinfo, metrics
    from pmtud_relay.daemon import RelayDaemon, run_event_loop
    from pmtud_relay.peers import service as peering

    try:
        loaded = cfg.load(args)  # flags > PMTUD_RELAY_* > config file > defaults
    except ConfigError as exc:
        print(f"pmtud-relay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    s = loaded.settings
    if s.manage_rules:
        from pmtud_relay import rules

        missing = rules.missing_library(s.rules_backend)
        if missing:
            print(f"pmtud-relay: {loaded.sources['rules_backend']}: rules_backend: {missing}", file=sys.stderr)
            return EXIT_CONFIG
    log = logs.setup(s.log_level, s.log_format)
    wide = cfg.wide_vips(s)
    if wide:  # only loaded with allow_any_vip: meant, but say so once at start
        log.warning("vip_prefix_allows_any", extra={"kv": {
            "prefixes": ",".join(wide), "source": loaded.sources["allow_any_vip"],
            "effect": "nearly every quoted source passes the VIP check"}})
    try:
        interfaces = s.interfaces or (hostinfo.default_interface(),)
    except hostinfo.HostInfoError as exc:
        print(f"pmtud-relay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    settings = cfg.daemon_settings(s, interfaces, dry_run=dry_run, json_output=getattr(args, "json", False))
    from pmtud_relay.nflog.capture import NflogError
    from pmtud_relay.rules import RulesError

    daemon = RelayDaemon(settings)
    daemon.config = s
    daemon.reloader = lambda: cfg.reload(args)  # SIGHUP: same flags and environment, file re-read
    try:
        daemon.open()
    except NflogError as exc:
        print(f"pmtud-relay: {exc.strerror}", file=sys.stderr)
        return EXIT_PRIVILEGE if isinstance(exc, PermissionError) else 1
    except RulesError as exc:
        print(f"pmtud-relay: {exc}", file=sys.stderr)
        return 1
    except peering.PeerError as exc:
        print(f"pmtud-relay: {exc}", file=sys.stderr)
        return exc.exit_code
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
    # dry-run runs next to the service: it listens only when --metrics-address is on its command line.
    serve_metrics = s.metrics_address and (not dry_run or loaded.sources["metrics_address"].startswith("-"))
    if serve_metrics:  # after the capture: its errors (busy NFLOG group, EPERM) come first
        try:
            daemon.metrics_sock = metrics.bind(s.metrics_address)
        except metrics.MetricsError as exc:
            print(f"pmtud-relay: {exc}", file=sys.stderr)
            daemon.close()
            return 1
    from pmtud_relay import privileges

    # Every socket is open: keep only what re-binding and rule removal need (docs/security.md).
    privileges.drop_after_setup(s.capture, s.manage_rules, log)
    try:
        run_event_loop(daemon.serve)
    except KeyboardInterrupt:
        pass
    finally:
        daemon.close()
        if daemon.metrics_sock is not None:
            daemon.metrics_sock.close()
    log.debug("exit")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(tools=not (argv and argv[0] in DAEMON_COMMANDS)).parse_args(argv)
    if args.command == "run":
        return _run_daemon(args, dry_run=False)
    if args.command == "dry-run":
        return _run_daemon(args, dry_run=True)
    if args.command == "rules":
        return _rules_command(args)
    if args.command == "config":
        ok, text = cfg.check(args.file)
        if ok:
            sys.stdout.write(text)
            return 0
        sys.stderr.write(f"pmtud-relay: {text}")
        return EXIT_CONFIG
    if getattr(args, "handler", None) is not None:
        return args.handler(args)
    return EXIT_CONFIG  # unreachable: argparse enforces a command

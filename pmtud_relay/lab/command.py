"""``pmtud-relay lab``: see the ECMP black hole and its fix on your own machine.

Builds the namespace lab the tests use, runs real TCP transfers from the client to the
VIP without the relay and then with ``pmtud-relay run`` on every server, prints a
before/after table and tears everything down (also on Ctrl-C or failure).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import secrets
import statistics
import sys
import tempfile
import time

FAMILIES = {"ipv4": (4,), "ipv6": (6,), "both": (4, 6)}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "lab",
        help="demonstrate the black hole and the fix in network namespaces (needs root)",
        description="Build a client, an L4-ECMP router and N servers sharing a VIP in network "
        "namespaces; run transfers without and with the relay; print a before/after table.",
    )
    p.add_argument("--servers", type=int, default=3, help="servers behind the ECMP router (default %(default)s)")
    p.add_argument("--family", choices=sorted(FAMILIES), default="both", help="address family (default %(default)s)")
    p.add_argument("--flows", type=int, default=12, help="TCP flows per phase and family (default %(default)s)")
    p.add_argument("--size", type=int, default=262144, help="bytes per flow (default %(default)s)")
    p.add_argument("--timeout", type=float, default=3.0,
                   help="seconds before a flow counts as stalled (default %(default)s)")
    p.add_argument("--topology", choices=["l2", "l3"], default="l2",
                   help="l2: servers share one bridge, the relay broadcasts (default); l3: each server in "
                   "its own subnet behind the router, the relay sends signed UDP to its peers")
    p.add_argument("--json", action="store_true", help="print the results as one JSON document")
    return p


def _phase(lab, family: int, args) -> dict:
    lab.flush_pmtu()
    t0 = time.monotonic()
    flows = lab.run_transfers(family, flows=args.flows, size=args.size, timeout=args.timeout)
    elapsed = time.monotonic() - t0
    done = [f for f in flows if f.completed]
    return {
        "family": family,
        "flows": len(flows),
        "completed": len(done),
        "stalled": len(flows) - len(done),
        "servers": sorted({f.server for f in flows if f.server}),
        "median_seconds": round(statistics.median(f.seconds for f in done), 4) if done else None,
        "max_seconds": round(max(f.seconds for f in done), 4) if done else None,
        "wall_seconds": round(elapsed, 3),
        "learned_pmtu": {s: lab.learned_pmtu(s, family=family) for s in lab.server_names},
        "per_flow": [{"port": f.client_port, "server": f.server, "completed": f.completed} for f in flows],
    }


_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')


def owner_verdicts(lines_by_server: dict, vip: str, client: str) -> dict:
    """From each relay's debug log (``event=owner_verdict`` lines): per client port, the servers
    that relayed a PTB quoting the flow (origin captured or peer-sent), the server(s) that own it
    and the PMTU the owner's kernel holds. Lines about other addresses are ignored."""
    out: dict = {}
    vip_ip, client_ip = ipaddress.ip_address(vip), ipaddress.ip_address(client)
    for server, lines in lines_by_server.items():
        for line in lines:
            if "event=owner_verdict" not in line:
                continue
            rec = {k: v.strip('"') for k, v in _PAIR.findall(line)}
            try:
                if (ipaddress.ip_address(rec["inner_src"]) != vip_ip
                        or ipaddress.ip_address(rec["inner_dst"]) != client_ip):
                    continue
                port = int(rec["dport"])
            except (KeyError, ValueError):
                continue
            flow = out.setdefault(port, {"relayed_by": set(), "owners": {}, "verdicts": {}})
            if rec.get("origin") == "captured":
                flow["relayed_by"].add(server)
            flow["verdicts"].setdefault(server, set()).add(rec.get("owner", "?"))
            if rec.get("owner") in ("applied", "not_applied"):
                pmtu = rec.get("pmtu") or ""
                flow["owners"][server] = (rec["owner"], int(pmtu) if pmtu.isdigit() else None)
    return out


def main(args: argparse.Namespace) -> int:
    from pmtud_relay.lab import Lab, have_prerequisites

    ok, why = have_prerequisites()
    if not ok:
        print(f"pmtud-relay lab: {why}", file=sys.stderr)
        return 77
    from pmtud_relay.lab.routed import MAX_ROUTED_SERVERS

    most = MAX_ROUTED_SERVERS if args.topology == "l3" else 16
    if not 2 <= args.servers <= most:
        print(f"pmtud-relay lab: --servers: must be within 2..{most} with --topology {args.topology}", file=sys.stderr)
        return 2
    if args.flows < 1 or args.size < 1 or args.timeout <= 0:
        print("pmtud-relay lab: --flows, --size and --timeout must be positive", file=sys.stderr)
        return 2
    results: list[dict] = []
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    with contextlib.ExitStack() as stack:
        if args.topology == "l3":
            from pmtud_relay.lab.routed import RoutedLab

            lab = stack.enter_context(RoutedLab(servers=args.servers, injector=False, size=args.size))
            keydir = stack.enter_context(tempfile.TemporaryDirectory(prefix="pmtud-lab-"))
            key_file = os.path.join(keydir, "peer.key")
            with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
                fh.write(f"1:{secrets.token_hex(32)}\n")
            say(f"lab up: {args.servers} servers in separate subnets behind an L4-ECMP router; "
                "the router's ICMP goes to s1 only")
        else:
            lab = stack.enter_context(Lab(servers=args.servers, injector=False, size=args.size))
            key_file = None
            say(f"lab up: {args.servers} servers on one bridge behind an L4-ECMP router; "
                "the router's ICMP goes to s1 only")
        lab.start_transfer_servers()
        for family in FAMILIES[args.family]:
            say(f"IPv{family}: {args.flows} flows of {args.size} bytes without the relay …")
            before = _phase(lab, family, args)
            say(f"IPv{family}: the same with pmtud-relay on every server …")
            relays = [lab.spawn_python(s, "pmtud_relay", *_relay_argv(lab, s, family, key_file))
                      for s in lab.server_names]
            try:
                for proc in relays:
                    proc.wait_for(r"event=ready", stream="stderr", timeout=15)
                after = _phase(lab, family, args)
                time.sleep(0.1)  # the last verdicts (an owned flow is re-read for up to 50 ms)
                verdicts = owner_verdicts({s: p.lines("stderr") for s, p in zip(lab.server_names, relays)},
                                          lab.vip(family), lab.client_addr(family))
                for flow in after["per_flow"]:
                    v = verdicts.get(flow["port"])
                    flow["relayed_by"] = sorted(v["relayed_by"]) if v else []
                    flow["owner"] = ({s: {"verdict": o[0], "pmtu": o[1]} for s, o in sorted(v["owners"].items())}
                                     if v else {})
                    flow["orphan_on"] = sorted(s for s, vs in v["verdicts"].items() if vs == {"orphan"}) if v else []
            finally:
                for proc in relays:
                    proc.stop(timeout=5)
            results.append({"family": family, "without_relay": before, "with_relay": after})
    if args.json:
        print(json.dumps({"servers": args.servers, "topology": args.topology, "results": results}, indent=2))
    else:
        print(render(results, args))
    fixed = all(r["with_relay"]["stalled"] == 0 for r in results)
    return 0 if fixed else 1


def _relay_argv(lab, server: str, family: int, key_file: str | None) -> list[str]:
    """The relay's command line in the lab: L2 broadcast, or signed UDP to the other servers."""
    # debug: one owner_verdict line per PTB (delivery confirmation), read back for the per-flow table
    argv = ["run", "-i", "eth0", "--metrics-address", "", "--config", "", "--log-level", "debug"]
    if key_file is not None:
        argv += ["--fanout", "peers", "--peer-key-file", key_file, *lab.peer_args(server, family)]
    return argv


def render(results: list[dict], args) -> str:
    head = (f"{'':8} {'phase':15} {'completed':>10} {'stalled':>8} {'median s':>9} {'max s':>7}  "
            "servers with learned PMTU")
    lines = [head, "-" * len(head)]
    for r in results:
        for phase in ("without_relay", "with_relay"):
            p = r[phase]
            learned = ",".join(f"{s}={m}" for s, m in p["learned_pmtu"].items() if m) or "none"
            med = "-" if p["median_seconds"] is None else f"{p['median_seconds']:.3f}"
            mx = "-" if p["max_seconds"] is None else f"{p['max_seconds']:.3f}"
            lines.append(
                f"IPv{r['family']:<6} {phase.replace('_', ' '):15} {p['completed']:>4}/{p['flows']:<5} "
                f"{p['stalled']:>8} {med:>9} {mx:>7}  {learned}"
            )
    lines.append(f"(a flow is stalled if it has not received {args.size} bytes within {args.timeout:g} s)")
    for r in results:
        flows = r["with_relay"].get("per_flow") or []
        if not flows or "relayed_by" not in flows[0]:
            continue
        lines += ["", f"IPv{r['family']} with the relay, per flow (delivery confirmation):",
                  f"{'client port':>11}  {'ECMP to':8} {'relayed by':11} {'owner (verdict, PMTU)':28} orphan on"]
        for f in flows:
            if not f["relayed_by"] and not f["owner"]:
                lines.append(f"{f['port']:>11}  {f['server'] or '?':8} {'-':11} "
                             "no PTB quoted this flow (its server had learnt the PMTU already)")
                continue
            owner = ", ".join(f"{s} ({o['verdict']}, {o['pmtu'] if o['pmtu'] is not None else '?'})"
                              for s, o in f["owner"].items()) or "none"
            lines.append(f"{f['port']:>11}  {f['server'] or '?':8} {','.join(f['relayed_by']) or '-':11} "
                         f"{owner:28} {','.join(f['orphan_on']) or '-'}")
    return "\n".join(lines)

"""Soak: a bounded run of mixed legitimate and flood traffic through the namespace lab.

The ECMP black-hole lab (pmtud_relay.lab: client, router, 3 servers sharing a VIP, an injector on
the servers' segment) with pmtud-relay on every server, default limits. For ``--seconds``:

- legitimate traffic: rounds of TCP downloads from the client to the VIP (IPv4 and IPv6 in turn),
  PMTU caches flushed before each round, so the router's real PTBs must be relayed for the flows
  owned by s2/s3 to finish;
- flood: the injector sends frames unicast to s1 at ``--flood-rate`` frames/s: spoofed PTBs from
  distinct sources that pass every check (``--valid-share`` of them, each from a new IPv6 source
  about a new flow: they fill the per-source and dedup tables) and hostile ones (quoted source not
  a VIP, outer destination not the quoted source, MTU below the floor, bad checksum, outer
  fragment, ICMP about ICMP, truncated quote, garbage).

Reports, per relay: relayed, dropped by reason (the daemon's own counts, from its ``stopped``
line), CPU seconds (utime+stime) and RSS at start (after ready) and at the end, peak RSS; and the
legitimate flows that completed. Writes bench/results/soak-<time>.json. Needs root. Not part of
the unit suite.

    .venv/bin/python bench/soak.py [--seconds 120] [--flood-rate 5000] [--valid-share 0.005]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import struct
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import frames as BF  # noqa: E402  (bench/frames.py: stdlib-only PTB builders)


# --- the flood generator (runs inside the injector namespace) -------------------------------------
def _ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, frag: int = 0x4000) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 7, frag, 64, proto, 0, src, dst)
    return h[:10] + struct.pack("!H", BF.csum(h)) + h[12:] + payload


def _icmp4(mtu: int, quote: bytes, type_: int = 3, code: int = 4) -> bytes:
    m = struct.pack("!BBHHH", type_, code, 0, 0, mtu) + quote
    return m[:2] + struct.pack("!H", BF.csum(m)) + m[4:]


def hostile_pool(dst_mac: bytes, n: int = 512, seed: int = 7) -> dict[str, list[bytes]]:
    rnd = random.Random(seed)
    vip4, vip6 = BF.ip4(BF.VIP4), BF.ip6(BF.VIP6)
    eth4 = dst_mac + BF.ROUTER_MAC + b"\x08\x00"
    pools: dict[str, list[bytes]] = {k: [] for k in (
        "not_vip", "dst_not_quoted_src", "mtu_below_floor", "bad_checksum", "fragment", "inner_icmp_error",
        "short_quote", "garbage")}
    for i in range(n):
        r4, c4 = BF.ip4(f"203.0.113.{1 + i % 250}"), BF.client4(i)
        pools["not_vip"].append(BF.ptb4(r4, BF.ip4(BF.NOT_VIP4), c4, 443, 1024 + i, dst_mac=dst_mac) if i % 2 else
                                BF.ptb6(BF.router6(10_000 + i), BF.ip6(BF.NOT_VIP6), BF.client6(i), 443, 1024 + i,
                                        dst_mac=dst_mac))
        pools["dst_not_quoted_src"].append(BF.ptb4(r4, vip4, c4, 443, 1024 + i, outer_dst=BF.ip4("192.0.2.11"),
                                                   dst_mac=dst_mac))
        pools["mtu_below_floor"].append(BF.ptb4(r4, vip4, c4, 443, 1024 + i, mtu=500, dst_mac=dst_mac) if i % 2 else
                                        BF.ptb6(BF.router6(20_000 + i), vip6, BF.client6(i), 443, 1024 + i, mtu=1200,
                                                dst_mac=dst_mac))
        good = BF.ptb4(r4, vip4, c4, 443, 1024 + i, dst_mac=dst_mac)
        pools["bad_checksum"].append(good[:-1] + bytes([good[-1] ^ 0x5A]))
        quote = BF.original4(vip4, c4, 443, 1024 + i)[:548]
        pools["fragment"].append(eth4 + _ipv4(r4, vip4, 1, _icmp4(1400, quote), frag=0x2000 | (i % 100 + 1)))
        inner_icmp = _ipv4(vip4, c4, 1, struct.pack("!BBHI", 3, 1, 0, 0) + b"\0" * 20)
        pools["inner_icmp_error"].append(eth4 + _ipv4(r4, vip4, 1, _icmp4(1400, inner_icmp + b"\0" * 8)))
        pools["short_quote"].append(eth4 + _ipv4(r4, vip4, 1, _icmp4(1400, quote[:12])))
        pools["garbage"].append(dst_mac + BF.ROUTER_MAC + bytes([0x08, 0x00]) + rnd.randbytes(rnd.randrange(0, 200)))
    return pools


def generate(iface: str, dst_mac: str, seconds: float, rate: float, valid_share: float, seed: int) -> None:
    """Send the flood from ``iface`` for ``seconds`` at ``rate`` frames/s; print counts as JSON."""
    mac = bytes.fromhex(dst_mac.replace(":", ""))
    pools = hostile_pool(mac, seed=seed)
    kinds = sorted(pools)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((iface, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sent = dict.fromkeys(kinds + ["valid_spoofed"], 0)
    errors = 0
    step = 0.01
    per_step = rate * step
    owed = valid_owed = 0.0
    i = v = 0
    print("generating", flush=True, file=sys.stderr)
    t0 = time.monotonic()
    nxt = t0
    while True:
        now = time.monotonic()
        if now - t0 >= seconds:
            break
        owed += per_step
        valid_owed += per_step * valid_share
        n = int(owed)
        owed -= n
        nv = int(valid_owed)
        valid_owed -= nv
        for _ in range(nv):  # a new source and a new flow each time
            frame = BF.ptb6(BF.router6(1_000_000 + v), BF.ip6(BF.VIP6), BF.client6(v), 443, 1024 + v % 60000,
                            dst_mac=mac)
            v += 1
            try:
                sock.send(frame)
                sent["valid_spoofed"] += 1
            except OSError:
                errors += 1
        for _ in range(max(0, n - nv)):
            kind = kinds[i % len(kinds)]
            pool = pools[kind]
            try:
                sock.send(pool[(i // len(kinds)) % len(pool)])
                sent[kind] += 1
            except OSError:
                errors += 1
            i += 1
        nxt += step
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(json.dumps({"sent": sent, "errors": errors, "seconds": round(time.monotonic() - t0, 2)}), flush=True)


# --- orchestration ----------------------------------------------------------------------------------
def proc_stats(pid: int) -> dict:
    from common import CLK_TCK

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, val = line.partition(":")
            status[k] = val.strip()
    return {"cpu_s": (int(fields[11]) + int(fields[12])) / CLK_TCK,
            "rss_kib": int(status["VmRSS"].split()[0]), "hwm_kib": int(status["VmHWM"].split()[0])}


def logfmt_kv(line: str) -> dict[str, str]:
    return {m.group(1): m.group(2).strip('"') for m in re.finditer(r'(\w+)=("[^"]*"|\S+)', line)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="flood and transfer duration (default 120)")
    ap.add_argument("--flood-rate", type=float, default=5000.0, help="flood frames/s to s1 (default 5000)")
    ap.add_argument("--valid-share", type=float, default=0.005,
                    help="share of the flood that passes every check, each from a new source (default 0.005: "
                    "25/s at the default rate, a quarter of the default global limit)")
    ap.add_argument("--warmup-rounds", type=int, default=0,
                    help="rounds of downloads before the flood starts, so the router's PTBs are relayed "
                    "first and it is known to the global reserve (default 0)")
    ap.add_argument("--global-reserve", default=None, help="passed to every relay (default: the relay's)")
    ap.add_argument("--servers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--generate", nargs=2, metavar=("IFACE", "DST_MAC"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.generate:
        generate(args.generate[0], args.generate[1], args.seconds, args.flood_rate, args.valid_share, args.seed)
        return 0

    from common import machine, write_result

    from pmtud_relay.lab import VIP4, VIP6, Lab, have_prerequisites

    ok, why = have_prerequisites()
    if not ok:
        print(f"soak: {why}", file=sys.stderr)
        return 77
    with Lab(servers=args.servers, prefix="pmr-soak-") as lab:
        relays = {}
        for s in lab.servers:
            relays[s.name] = lab.spawn_python(s.name, "pmtud_relay", "run", "-i", s.iface, "--vip", VIP4, "--vip", VIP6,
                                              "--config", "", "--metrics-address", "", "--summary-interval", "10",
                                              *(("--global-reserve", args.global_reserve)
                                                if args.global_reserve is not None else ()))
        for p in relays.values():
            p.wait_for(r"event=ready", timeout=20)
        lab.start_transfer_servers()
        time.sleep(1.0)
        start = {name: proc_stats(p.pid) for name, p in relays.items()}
        warmup = []
        for i in range(args.warmup_rounds):  # before the flood: the router's PTBs are relayed
            fam_w = 4 if i % 2 == 0 else 6
            lab.flush_pmtu()
            flows = lab.run_transfers(fam_w, flows=8, size=131072, timeout=3.0)
            warmup.append({"family": fam_w, "flows": len(flows), "ok": sum(1 for f in flows if f.completed)})
        s1_mac = lab.mac("s1", "eth0")
        gen = lab.spawn(  # the injector: frames unicast to s1, like a flood the router forwards
            "injector", [lab.python, str(Path(__file__).resolve()), "--generate", "eth0", s1_mac,
                         "--seconds", str(args.seconds), "--flood-rate", str(args.flood_rate),
                         "--valid-share", str(args.valid_share), "--seed", str(args.seed)])
        gen.wait_for(r"^generating", timeout=30)
        t0 = time.monotonic()
        rounds = []
        samples = {name: [] for name in relays}
        last_sample = -1e9
        fam = 4
        while time.monotonic() - t0 < args.seconds - 5:
            if time.monotonic() - last_sample >= 10:
                last_sample = time.monotonic()
                for name, p in relays.items():
                    samples[name].append({"t": round(last_sample - t0, 1), **proc_stats(p.pid)})
            lab.flush_pmtu()
            flows = lab.run_transfers(fam, flows=8, size=131072, timeout=3.0)
            rounds.append({"family": fam, "flows": len(flows), "ok": sum(1 for f in flows if f.completed),
                           "servers": sorted({f.server for f in flows if f.server}),
                           # what a failed flow looked like: a reset at 1 s in the handshake is not
                           # a stall on a lost PTB (docs/security.md, "Soak")
                           "failed": [{"server": f.server, "client_port": f.client_port, "bytes": f.bytes,
                                       "seconds": round(f.seconds, 3), "error": f.error}
                                      for f in flows if not f.completed],
                           "t": round(time.monotonic() - t0, 2)})
            fam = 6 if fam == 4 else 4
        while gen.poll() is None and time.monotonic() - t0 < args.seconds + 30:
            time.sleep(0.2)
        end = {name: proc_stats(p.pid) for name, p in relays.items()}
        gen_out = gen.json_lines()
        alive = {name: p.poll() is None for name, p in relays.items()}
        counts = {}
        for name, p in relays.items():
            p.stop(timeout=15)
            stopped = [line for line in p.lines("stderr") if "event=stopped" in line]
            kv = logfmt_kv(stopped[-1]) if stopped else {}
            counts[name] = {k: int(v) for k, v in kv.items() if v.isdigit()}
            counts[name]["exit"] = p.returncode
            tables = [logfmt_kv(line) for line in p.lines("stderr") if "event=summary" in line]
            counts[name]["max_rate_sources"] = max((int(t.get("rate_sources", 0)) for t in tables), default=0)
            counts[name]["max_dedup_keys"] = max((int(t.get("dedup_keys", 0)) for t in tables), default=0)
            counts[name]["tracebacks"] = p.stderr.count("Traceback")
            complaints = [line for line in p.lines("stderr") if "level=warning" in line or "level=error" in line]
            counts[name]["warnings"] = len(complaints)
            if counts[name]["warnings"]:
                print(f"{name}: " + "\n".join(complaints)[:2000], file=sys.stderr)
    legit_total = sum(r["flows"] for r in rounds)
    legit_ok = sum(r["ok"] for r in rounds)
    payload = {
        "machine": machine(),
        "args": {k: v for k, v in vars(args).items() if k != "generate"},
        "flood": gen_out[-1] if gen_out else None,
        "warmup": warmup,
        "legit": {"rounds": len(rounds), "flows": legit_total, "completed": legit_ok, "detail": rounds},
        "relays": {name: {"alive_at_end": alive[name], "start": start[name], "end": end[name],
                          "cpu_s": round(end[name]["cpu_s"] - start[name]["cpu_s"], 2), "counts": counts[name],
                          "samples": samples[name]}
                   for name in relays},
    }
    path = write_result("soak", payload)
    print(f"soak: {args.seconds:.0f} s, flood {args.flood_rate:.0f} frames/s to s1 "
          f"({args.valid_share:.3%} valid from new sources), {payload['machine']['cpu']}, "
          f"{payload['machine']['nproc']} cores")
    if gen_out:
        print(f"flood sent: {sum(gen_out[-1]['sent'].values())} frames {gen_out[-1]['sent']} "
              f"send errors {gen_out[-1]['errors']}")
    if warmup:
        print(f"warm-up before the flood: {sum(w['ok'] for w in warmup)}/{sum(w['flows'] for w in warmup)} "
              f"flows completed in {len(warmup)} rounds")
    print(f"legitimate flows: {legit_ok}/{legit_total} completed in {len(rounds)} rounds")
    for r in rounds:
        for f in r["failed"]:
            print(f"  failed at {r['t']} s: IPv{r['family']} {f}")
    for name, r in payload["relays"].items():
        c = dict(r["counts"])
        relayed = c.pop("relayed", 0)
        reserve = c.pop("relayed_from_reserve", 0)
        exit_code, tb, warnings = c.pop("exit"), c.pop("tracebacks"), c.pop("warnings")
        tables = f"tables max: {c.pop('max_rate_sources')} sources, {c.pop('max_dedup_keys')} dedup keys"
        rss_series = " ".join(str(x["rss_kib"]) for x in r["samples"])
        dropped = sum(c.values())
        print(f"{name}: relayed {relayed} ({reserve} from the reserve), dropped {dropped} {c}; CPU {r['cpu_s']} s; "
              f"RSS {r['start']['rss_kib']} -> {r['end']['rss_kib']} KiB (peak {r['end']['hwm_kib']} KiB); "
              f"alive {r['alive_at_end']}, exit {exit_code}, tracebacks {tb}, warnings/errors logged {warnings}; "
              f"{tables}; RSS every 10 s (KiB): {rss_series}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

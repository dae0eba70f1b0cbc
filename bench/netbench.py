"""Benchmarks 2-4 in network namespaces: latency, peak relay rate, flood.

Each run builds its own namespaces (see netns.py), starts the relay under test in the relay
namespace pinned to CPU 1 (the generator and this script run on CPU 0), and measures every
variant — pmtud-relay with AF_PACKET capture, with NFLOG capture, and the minimal reference
relay (reference_relay.py) — in the same run, alternating, in a rotated order each round.
Ratios to the reference are taken per round and the median is reported.

    .venv/bin/python bench/netbench.py latency [--rounds 3] [--samples 1000] [--interval 0.004]
    .venv/bin/python bench/netbench.py peak    [--rounds 3] [--seconds 3]
    .venv/bin/python bench/netbench.py flood   [--rounds 3] [--seconds 8]
    .venv/bin/python bench/netbench.py all

Needs root (namespaces, AF_PACKET, nft). Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import frames as F  # noqa: E402
import traffic as T  # noqa: E402
from common import ROOT, median, pct, proc_cpu, proc_rss, table, write_result  # noqa: E402
from netns import Topology  # noqa: E402

PY = sys.executable
RELAY_CPU = 1
GEN_CPU = 0
NFLOG_GROUP = 2105
VIPS = ["--vip", f"{F.VIP4}/32", "--vip", f"{F.VIP6}/128"]
# the maxima
LIFTED = ["--source-rate", "1e6", "--source-burst", "1e6", "--global-rate", "1e6", "--global-burst", "1e6"]
FLOOD_SRC = F.ip4("198.51.100.66")

BENCH_RULES = f"""table inet pmr_bench {{
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        iifname "eth0" meta pkttype host icmp type destination-unreachable icmp code frag-needed log group {NFLOG_GROUP}
        iifname "eth0" meta pkttype host icmpv6 type packet-too-big icmpv6 code no-route log group {NFLOG_GROUP}
    }}
}}
"""


class RelayProc:
    """One relay under test in the relay namespace."""

    def __init__(self, topo: Topology, kind: str, extra: list[str] = ()):
        self.topo, self.kind, self.extra = topo, kind, list(extra)
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.bench_rules = False

    def argv(self) -> list[str]:
        if self.kind == "reference":
            return [PY, str(HERE / "reference_relay.py"), "eth0", "900"]
        base = [PY, "-m", "pmtud_relay", "run", "-i", "eth0", *VIPS, "--summary-interval", "3600", *self.extra]
        if self.kind == "afpacket":
            return base
        if self.kind == "afpacket-noconfirm":  # delivery confirmation off (docs/confirmation.md)
            return base + ["--no-confirm-owner"]
        if self.kind.startswith("script:"):  # an experiment: a script that runs pmtud-relay (like relay_variant.py)
            return [PY, self.kind[len("script:"):], *base[3:]]
        if self.kind == "afpacket-socket":  # the adapters before the rings: recvmsg()/send() per frame
            return [PY, str(HERE / "relay_variant.py"), *base[3:]]
        if self.kind == "nflog":  # the bench's own unlimited rules (the managed ones clamp at 10 000/s)
            return base + ["--capture", "nflog", "--nflog-group", str(NFLOG_GROUP)]
        if self.kind == "nflog+prelimit":
            return base + ["--capture", "nflog", "--nflog-group", str(NFLOG_GROUP), "--manage-rules"]
        raise ValueError(self.kind)

    def start(self, timeout: float = 20.0) -> RelayProc:
        if self.kind == "nflog":
            subprocess.run(["ip", "netns", "exec", self.topo.rly, "nft", "-f", "-"], input=BENCH_RULES, text=True,
                           check=True, timeout=15, capture_output=True)
            self.bench_rules = True
        self.proc = self.topo.spawn(self.topo.rly, self.argv(), cpu=RELAY_CPU, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
        ready = threading.Event()

        def reader():
            for line in self.proc.stderr:
                self.lines.append(line.rstrip())
                if re.search(r"event=ready|^ready$", line.strip()):
                    ready.set()

        threading.Thread(target=reader, daemon=True).start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"{self.kind} relay not ready in {timeout}s:\n" + "\n".join(self.lines[-20:]))
        time.sleep(0.2)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def rss(self) -> int:
        return proc_rss(self.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.bench_rules:
            subprocess.run(["ip", "netns", "exec", self.topo.rly, "nft", "delete", "table", "inet", "pmr_bench"],
                           capture_output=True, timeout=15)
            self.bench_rules = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def rotated(kinds: list[str], r: int) -> list[str]:
    r %= len(kinds)
    return kinds[r:] + kinds[:r]


def distinct_frames(topo: Topology, n: int, start: int = 0, families=(4, 6), router: int | None = None) -> list[bytes]:
    return [F.valid(start + i, families[i % len(families)], dst_mac=topo.relay_mac, router=router) for i in range(n)]


# -- 2. latency ------------------------------------------------------------------------------
def latency_once(topo: Topology, kind: str, samples: int, interval: float, offset: int) -> dict:
    extra = LIFTED if kind != "nflog+prelimit" else LIFTED  # 250/s would exceed the default 50/s
    with RelayProc(topo, kind, extra) as relay:
        tap = T.open_tap(topo, outgoing=True)
        tx = T.open_tx(topo)
        try:
            for f in distinct_frames(topo, 10, start=offset + 10_000_000):  # warm-up
                tx.send(f)
                time.sleep(interval)
            time.sleep(0.2)
            T.drain_tap(tap)
            frames = distinct_frames(topo, samples, start=offset)
            t0 = time.monotonic()
            for i, f in enumerate(frames):
                delay = t0 + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                tx.send(f)
            time.sleep(0.3)
            recs = T.drain_tap(tap)
            cpu = relay.cpu()
        finally:
            tap.close()
            tx.close()
    sent_at: dict[bytes, int] = {}
    copy_at: dict[bytes, int] = {}
    for frame, pkttype, ts in recs:
        key = frame[12:]
        if pkttype == T.PACKET_OUTGOING:
            sent_at.setdefault(key, ts)
        else:
            copy_at.setdefault(key, ts)
    measured = {f[12:] for f in frames}
    lat = [(copy_at[k] - t) / 1000.0 for k, t in sent_at.items() if k in copy_at and k in measured]
    if not lat:
        return {"kind": kind, "samples": 0, "lost": samples}
    return {
        "kind": kind, "samples": len(lat), "lost": samples - len(lat),
        "p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "max": max(lat), "mean": sum(lat) / len(lat),
        "relay_cpu_s": cpu,
    }


def bench_latency(args) -> dict:
    kinds = args.kinds or ["reference", "afpacket", "nflog+prelimit"]
    runs = {k: [] for k in kinds}
    with Topology() as topo:
        for r in range(args.rounds):
            for kind in rotated(kinds, r):
                res = latency_once(topo, kind, args.samples, args.interval, offset=r * 100_000)
                runs[kind].append(res)
                print(f"  latency round {r + 1} {kind:15s} p50 {res.get('p50', 0):7.1f} p99 {res.get('p99', 0):7.1f} "
                      f"max {res.get('max', 0):8.1f} µs lost {res['lost']}", flush=True)
    rows = []
    for kind in kinds:
        rs = runs[kind]
        row = {"relay": kind}
        for k in ("p50", "p90", "p99", "max", "mean"):
            row[k + " µs"] = median([x.get(k) for x in rs])
        row["lost"] = sum(x["lost"] for x in rs)
        ref = runs.get("reference", [])  # absent when --kinds leaves the reference out
        ratios = [a.get("p99") / b.get("p99") for a, b in zip(rs, ref) if a.get("p99") and b.get("p99")]
        row["p99/ref"] = median(ratios) if ratios else None
        rows.append(row)
    cols = ["relay", "p50 µs", "p90 µs", "p99 µs", "max µs", "mean µs", "lost", "p99/ref"]
    print(table(rows, cols, f"Latency (one PTB every {args.interval * 1000:g} ms, {args.samples} per run, "
                            f"median of {args.rounds} rounds; relay's veth peer, kernel timestamps)"))
    return {"rows": rows, "runs": runs, "samples": args.samples, "interval_s": args.interval, "rounds": args.rounds}


# -- 3. peak relay rate ----------------------------------------------------------------------
def peak_once(topo: Topology, kind: str, seconds: float, frames: list[bytes], rate: float | None) -> dict:
    relay = RelayProc(topo, kind, LIFTED + ["--dedup-window", "0"]) if kind != "none" else None
    if relay is not None:
        relay.start()
    tx = T.open_tx(topo)
    try:
        T.Generator(tx, frames, 0.5, rate=rate, cpu=GEN_CPU).start().join()  # warm-up
        time.sleep(0.5)
        s0 = topo.relay_port_stats()
        c0 = relay.cpu() if relay else 0.0
        gen = T.Generator(tx, frames, seconds, rate=rate, cpu=GEN_CPU).start().join()
        time.sleep(0.5)  # let the relay finish what is queued
        s1 = topo.relay_port_stats()
        c1 = relay.cpu() if relay else 0.0
        rss = relay.rss() if relay else 0
        alive = None
        if relay is not None:  # does it still relay after the overload? (a light probe)
            T.Generator(tx, frames[:200], 0.4, rate=500, cpu=GEN_CPU).start().join()
            time.sleep(0.3)
            alive = topo.relay_port_stats()["rx"] > s1["rx"]
    finally:
        tx.close()
        if relay is not None:
            relay.stop()
    elapsed = gen["elapsed"]
    offered = s1["tx"] - s0["tx"]
    relayed = s1["rx"] - s0["rx"]
    return {
        "kind": kind, "offered_fps": offered / elapsed, "relayed_fps": relayed / elapsed, "generator_fps": gen["rate"],
        "relayed": relayed, "offered": offered, "cpu_s": c1 - c0,
        "cpu_ms_per_1000": (c1 - c0) / relayed * 1e6 if relayed else None,
        "cpu_pct": (c1 - c0) / elapsed * 100, "rss_mib": rss / 2**20, "seconds": elapsed,
        "relays_after_run": alive,
    }


def bench_peak(args) -> dict:
    kinds = args.kinds or ["reference", "afpacket", "afpacket-socket", "nflog"]
    modes = [("max", None), (f"{args.fixed_rate:g}/s", args.fixed_rate)]
    runs: dict[tuple, list] = {}
    with Topology() as topo:
        frames = distinct_frames(topo, 4096)
        ceiling = [] if args.no_ceiling else [peak_once(topo, "none", args.seconds, frames, None) for _ in range(2)]
        if ceiling:
                print(f"  generator ceiling (no relay): {median([c['generator_fps'] for c in ceiling]):,.0f} "
                      "frames/s sent, "
                  f"{median([c['offered_fps'] for c in ceiling]):,.0f} delivered to the relay's port", flush=True)
        for r in range(args.rounds):
            for mode, rate in modes:
                for kind in rotated(kinds, r):
                    res = peak_once(topo, kind, args.seconds, frames, rate)
                    runs.setdefault((mode, kind), []).append(res)
                    print(f"  peak round {r + 1} {mode:>8s} {kind:15s} offered {res['offered_fps']:9,.0f} relayed "
                          f"{res['relayed_fps']:9,.0f}/s cpu {res['cpu_pct']:5.1f}% "
                          f"{res['cpu_ms_per_1000'] or 0:6.2f} ms/1000"
                          + ("" if res["relays_after_run"] else "  STALLED: relays nothing afterwards"), flush=True)
    rows = []
    for mode, _ in modes:
        for kind in kinds:
            rs = runs[(mode, kind)]
            ref = runs[(mode, "reference")]
            rate_ratio = [a["relayed_fps"] / b["relayed_fps"] for a, b in zip(rs, ref) if b["relayed_fps"]]
            cpu_ratio = [a["cpu_ms_per_1000"] / b["cpu_ms_per_1000"] for a, b in zip(rs, ref)
                         if a["cpu_ms_per_1000"] and b["cpu_ms_per_1000"]]
            rows.append({
                "offered": mode, "relay": kind,
                "offered/s": median([x["offered_fps"] for x in rs]),
                "relayed/s": median([x["relayed_fps"] for x in rs]),
                "CPU %": median([x["cpu_pct"] for x in rs]),
                "CPU ms/1000": median([x["cpu_ms_per_1000"] for x in rs]),
                "rate/ref": median(rate_ratio), "CPU/ref": median(cpu_ratio),
                "stalled": sum(1 for x in rs if x["relays_after_run"] is False),
            })
    cols = ["offered", "relay", "offered/s", "relayed/s", "CPU %", "CPU ms/1000", "rate/ref", "CPU/ref", "stalled"]
    print(table(rows, cols, f"Peak relay rate, limits lifted, dedup window 0 (median of {args.rounds} rounds, "
                            f"{args.seconds:g} s each)"))
    return {"rows": rows, "runs": {f"{m}|{k}": v for (m, k), v in runs.items()}, "generator_ceiling": ceiling,
            "rounds": args.rounds, "seconds": args.seconds}


# -- 4. flood ----------------------------------------------------------------------------------
def legit_frames(topo: Topology, per_source: int) -> list[bytes]:
    """20 legitimate sources (10 IPv4, 10 IPv6 routers), round-robin, a distinct flow each PTB."""
    out = []
    for k in range(per_source):
        for s in range(20):
            fam = 4 if s < 10 else 6
            out.append(F.valid(50_000 + k * 20 + s, fam, router=100 + s, dst_mac=topo.relay_mac))
    return out


def flood_once(topo: Topology, kind: str, seconds: float, legit_rate: float) -> dict:
    relay = RelayProc(topo, kind, [])
    relay.start()
    flood = [F.ptb4(FLOOD_SRC, F.ip4(F.VIP4), F.client4(i), 443, 2000 + i, dst_mac=topo.relay_mac) for i in range(4096)]
    legit = legit_frames(topo, int(seconds * legit_rate / 20) + 2)
    tap = T.open_tap(topo, outgoing=False, program=T.bpf_drop_v4_source(FLOOD_SRC))
    txf, txl = T.open_tx(topo), T.open_tx(topo)
    try:
        time.sleep(0.3)
        rss0 = relay.rss()
        s0 = topo.relay_port_stats()
        c0 = relay.cpu()
        t0 = time.monotonic()
        gf = T.Generator(txf, flood, seconds, cpu=GEN_CPU).start()
        gl = T.Generator(txl, legit, seconds, rate=legit_rate, cpu=GEN_CPU).start()
        rf, rl = gf.join(), gl.join()
        elapsed = time.monotonic() - t0
        c1 = relay.cpu()
        time.sleep(1.0)
        s1 = topo.relay_port_stats()
        rss1 = relay.rss()
        recs = T.drain_tap(tap)
    finally:
        tap.close()
        txf.close()
        txl.close()
        relay.stop()
    sent_legit = {f[12:] for f in legit[: rl["sent"]]}
    seen = {f[12:] for f, _pk, _ts in recs}
    delivered = len(sent_legit & seen)
    total = s1["rx"] - s0["rx"]
    return {
        "kind": kind, "flood_fps": rf["rate"], "flood_sent": rf["sent"], "legit_sent": len(sent_legit),
        "legit_delivered": delivered, "legit_fraction": delivered / len(sent_legit) if sent_legit else None,
        "flood_copies": total - len(recs), "cpu_pct": (c1 - c0) / elapsed * 100, "rss0_mib": rss0 / 2**20,
        "rss1_mib": rss1 / 2**20, "offered_fps": (s1["tx"] - s0["tx"]) / elapsed, "seconds": elapsed,
    }


def bench_flood(args) -> dict:
    kinds = args.kinds or ["reference", "afpacket", "nflog+prelimit"]
    runs = {k: [] for k in kinds}
    with Topology() as topo:
        for r in range(args.rounds):
            for kind in rotated(kinds, r):
                res = flood_once(topo, kind, args.seconds, args.legit_rate)
                runs[kind].append(res)
                print(f"  flood round {r + 1} {kind:15s} flood {res['flood_fps']:9,.0f}/s legit "
                      f"{res['legit_delivered']}/{res['legit_sent']} flood copies {res['flood_copies']:,} "
                      f"cpu {res['cpu_pct']:5.1f}% rss {res['rss0_mib']:.1f}->{res['rss1_mib']:.1f} MiB", flush=True)
    rows = []
    for kind in kinds:
        rs = runs[kind]
        rows.append({
            "relay": kind, "flood/s": median([x["flood_fps"] for x in rs]),
            "legit delivered %": median([100 * x["legit_fraction"] for x in rs]),
            "worst %": min(100 * x["legit_fraction"] for x in rs),
            "flood copies": median([x["flood_copies"] for x in rs]),
            "CPU % of a core": median([x["cpu_pct"] for x in rs]),
            "RSS before MiB": median([x["rss0_mib"] for x in rs]), "RSS after MiB": median([x["rss1_mib"] for x in rs]),
        })
    cols = ["relay", "flood/s", "legit delivered %", "worst %", "flood copies", "CPU % of a core", "RSS before MiB",
            "RSS after MiB"]
    print(table(rows, cols, "Flood: default limits, one spoofed source at the generator's maximum + "
                            f"{args.legit_rate:g} legit PTB/s from 20 sources ({args.seconds:g} s, "
                            f"median of {args.rounds} rounds)"))
    return {"rows": rows, "runs": runs, "rounds": args.rounds, "seconds": args.seconds, "legit_rate": args.legit_rate}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=["latency", "peak", "flood", "all"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=1000, help="latency: PTBs per run")
    ap.add_argument("--interval", type=float, default=0.004, help="latency: seconds between PTBs")
    ap.add_argument("--seconds", type=float, default=None, help="peak: 3, flood: 8")
    ap.add_argument("--fixed-rate", type=float, default=20000, help="peak: the fixed offered rate row")
    ap.add_argument("--legit-rate", type=float, default=40, help="flood: legit PTBs per second (all 20 sources)")
    ap.add_argument("--kinds", type=lambda t: t.split(","), default=None,
                    help="comma-separated subset of reference,afpacket,afpacket-noconfirm,afpacket-socket,nflog,"
                    "nflog+prelimit (reference first), or script:PATH for a script run in place of "
                    "python -m pmtud_relay")
    ap.add_argument("--no-ceiling", action="store_true", help="peak: skip the generator-ceiling runs")
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 1 <= args.samples <= 100_000:
        ap.error("rounds 1..20, samples 1..100000")
    which = ["latency", "peak", "flood"] if args.which == "all" else [args.which]
    for w in which:
        a = argparse.Namespace(**vars(args))
        if a.seconds is None:
            a.seconds = {"peak": 3.0, "flood": 8.0}.get(w, 0)
        a.seconds = min(a.seconds, 60.0)
        res = {"latency": bench_latency, "peak": bench_peak, "flood": bench_flood}[w](a)
        print(f"written {write_result(w, res)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

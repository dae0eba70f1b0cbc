"""Benchmark 5: memory and per-packet cost with 10 k, 100 k and 1 M distinct sources and flows.

Each size runs in a fresh interpreter (so RSS is not inherited from a larger run). Every
frame is an IPv6 PTB from a distinct router (outer source in 2001:db8:1::/48) about a
distinct flow (client in 2001:db8:3::/48), so both bounded tables — the per-source rate
limiter and the dedup table, 65 536 entries each by default — are filled to their caps and
then evict. Two configurations: limits lifted (every PTB is relayed and remembered: the
worst case for memory) and the default limits. Frames are generated in chunks outside the
timed region; RSS is read from /proc/self/statm.

    .venv/bin/python bench/scale.py [--sizes 10000,100000,1000000] [--cpu 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import frames as F  # noqa: E402
from common import median, pin, proc_rss, table, write_result  # noqa: E402

CHUNK = 10_000


def _fold(v: int) -> int:
    v %= 0xFFFF
    return v


def frame_factory():
    """Fast distinct IPv6 PTBs: patch a template and fix the checksum incrementally."""
    tmpl = bytearray(F.ptb6(F.router6(0), F.ip6(F.VIP6), F.client6(0), 443, 1024))
    src_off = 14 + 8  # outer source
    icmp = 14 + 40
    q = icmp + 8
    dst_off = q + 24  # quoted destination (the client)
    tmpl[icmp + 2 : icmp + 4] = b"\0\0"
    base = bytes(tmpl)
    zeroed = bytearray(base)
    zeroed[src_off : src_off + 16] = bytes(16)
    zeroed[dst_off : dst_off + 16] = bytes(16)
    # one's-complement sum of everything fixed: pseudo-header dst, length, next header, message
    fixed = int.from_bytes(zeroed[src_off + 16 : src_off + 32], "big") + (len(base) - icmp) + 58
    fixed += int.from_bytes(zeroed[icmp:], "big") % 0xFFFF
    r0 = int.from_bytes(F.router6(0), "big")
    c0 = int.from_bytes(F.client6(0), "big")

    def make(i: int) -> bytes:
        src = (r0 + i).to_bytes(16, "big")
        dst = (c0 + i).to_bytes(16, "big")
        s = (fixed + int.from_bytes(src, "big") + int.from_bytes(dst, "big")) % 0xFFFF
        csum = (~s) & 0xFFFF  # s is never 0 here: the data is not all zeros
        f = bytearray(zeroed)
        f[src_off : src_off + 16] = src
        f[dst_off : dst_off + 16] = dst
        f[icmp + 2 : icmp + 4] = csum.to_bytes(2, "big")
        return bytes(f)

    return make


def run_size(n: int, limits: str) -> dict:
    from pmtud_relay.core.policy import Policy, VipSet
    from pmtud_relay.core.reasons import Reason
    from pmtud_relay.core.relay import Relay, RelayConfig

    make = frame_factory()
    policy = Policy(vips=VipSet([F.VIP6]))
    if limits == "lifted":
        cfg = RelayConfig(policy=policy, source_rate=1e9, source_burst=1e9, global_rate=1e9, global_burst=1e9)
    else:
        cfg = RelayConfig(policy=policy)
    chunk0 = [make(i) for i in range(min(CHUNK, n))]
    gc.collect()
    rss_before = proc_rss()
    relay = Relay(cfg, now=0.0)
    handle = relay.handle
    mac = F.RELAY_MAC
    now = 1.0
    busy = 0.0
    per_chunk = []
    rss_at = {}
    done = 0
    chunk = chunk0
    while done < n:
        if chunk is None:
            chunk = [make(done + i) for i in range(min(CHUNK, n - done))]
        t0 = time.perf_counter()
        for f in chunk:
            now += 2e-7  # 5 M PTB/s: everything stays inside the 1 s dedup window
            handle(f, now, mac, 0)
        dt = time.perf_counter() - t0
        busy += dt
        per_chunk.append(dt / len(chunk) * 1e9)
        done += len(chunk)
        chunk = None
        if done in (10_000, 100_000, 1_000_000):
            rss_at[done] = proc_rss()
    first = relay.counts[Reason.RELAYED]
    result = {
        "n": n, "limits": limits, "rss_before_mib": rss_before / 2**20, "rss_after_mib": proc_rss() / 2**20,
        "rss_growth_mib": (proc_rss() - rss_before) / 2**20, "rss_at": {k: v / 2**20 for k, v in rss_at.items()},
        "ns_per_packet": busy / n * 1e9, "ns_per_packet_last_chunks": median(per_chunk[-5:]),
        "dedup_keys": len(relay.dedup), "dedup_evictions": relay.dedup.evictions,
        "rate_sources": len(relay.limiter), "rate_evictions": relay.limiter.evictions, "relayed": first,
        "counts": {r.value: c for r, c in relay.counts.items() if c},
    }
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--cpu", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--one", nargs=2, metavar=("N", "LIMITS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    pin(args.cpu)
    if args.one:
        print(json.dumps(run_size(int(args.one[0]), args.one[1])))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(not 1 <= s <= 2_000_000 for s in sizes):
        ap.error("sizes must be within 1..2000000")
    runs: dict[tuple, list] = {}
    for rep in range(args.repeat):
        for limits in ("lifted", "default"):
            for n in sizes:
                cmd = [sys.executable, __file__, "--one", str(n), limits]
                if args.cpu is not None:
                    cmd += ["--cpu", str(args.cpu)]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True).stdout
                res = json.loads(out.strip().splitlines()[-1])
                runs.setdefault((limits, n), []).append(res)
                print(f"  scale {rep + 1} {limits:7s} {n:>9,} sources/flows: {res['ns_per_packet']:7.0f} ns/packet, "
                      f"RSS +{res['rss_growth_mib']:.1f} MiB (after {res['rss_after_mib']:.1f} MiB)", flush=True)
    rows = []
    for limits in ("lifted", "default"):
        for n in sizes:
            rs = runs[(limits, n)]
            rows.append({
                "limits": limits, "distinct sources/flows": n,
                "ns/packet": median([r["ns_per_packet"] for r in rs]),
                "ns/packet (last 50k)": median([r["ns_per_packet_last_chunks"] for r in rs]),
                "RSS after MiB": median([r["rss_after_mib"] for r in rs]),
                "RSS growth MiB": median([r["rss_growth_mib"] for r in rs]),
                "dedup keys": rs[0]["dedup_keys"], "rate sources": rs[0]["rate_sources"],
            })
    cols = ["limits", "distinct sources/flows", "ns/packet", "ns/packet (last 50k)", "RSS after MiB", "RSS growth MiB",
            "dedup keys", "rate sources"]
    print(table(rows, cols, f"Scale: IPv6 PTBs, each from a new source about a new flow (median of {args.repeat})"))
    flat = {}
    for limits in ("lifted", "default"):
        if (limits, 100_000) in runs and (limits, 1_000_000) in runs:
            a = median([r["rss_after_mib"] for r in runs[(limits, 100_000)]])
            b = median([r["rss_after_mib"] for r in runs[(limits, 1_000_000)]])
            flat[limits] = {"rss_100k_mib": a, "rss_1m_mib": b, "change_pct": (b - a) / a * 100}
            print(f"RSS 100k → 1M ({limits}): {a:.1f} → {b:.1f} MiB ({(b - a) / a * 100:+.1f} %), target ±10 %")
    path = write_result("scale", {"rows": rows, "runs": {f"{k[0]}|{k[1]}": v for k, v in runs.items()},
                                  "flatness": flat, "repeat": args.repeat})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark 1: core throughput in process (parse → decide → build), one core.

Feeds a realistic mix (v4/v6, valid distinct flows, duplicates, spoofed, malformed) through
``Relay.handle`` in batches of 256 with one clock value per batch, like the daemon does, and
reports frames per second (wall and per CPU-second of this single thread). The minimal
reference relay's per-frame work (rewrite the MACs, no checks) is measured alternately in
the same run for the ratio.

    .venv/bin/python bench/core_throughput.py [--frames 100000] [--repeat 5] [--cpu 1]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import frames as F  # noqa: E402
from common import median, pin, table, write_result  # noqa: E402

from pmtud_relay.core.policy import Policy, VipSet  # noqa: E402
from pmtud_relay.core.relay import Relay, RelayConfig  # noqa: E402

BATCH = 256
LIFTED = dict(source_rate=1e9, source_burst=1e9, global_rate=1e9, global_burst=1e9)


def config(limits: str) -> RelayConfig:
    policy = Policy(vips=VipSet([F.VIP4, F.VIP6]))
    if limits == "lifted":
        return RelayConfig(policy=policy, **LIFTED)
    return RelayConfig(policy=policy)


def run_relay(frames: list[bytes], cfg: RelayConfig) -> tuple[float, float, dict]:
    relay = Relay(cfg, now=0.0)
    handle = relay.handle
    mac = F.RELAY_MAC
    batches = [frames[i : i + BATCH] for i in range(0, len(frames), BATCH)]
    now = 1.0
    step = BATCH * 1e-6  # the clock advances as if 1 M frames/s arrived
    c0, t0 = time.process_time(), time.perf_counter()
    for batch in batches:
        now += step
        for f in batch:
            handle(f, now, mac, 0)
    t1, c1 = time.perf_counter(), time.process_time()
    counts = {r.value: n for r, n in relay.counts.items() if n}
    return t1 - t0, c1 - c0, counts


def run_reference(frames: list[bytes]) -> tuple[float, float]:
    """The reference relay's per-frame userspace work: new MACs, no checks."""
    bcast = b"\xff" * 6 + F.RELAY_MAC
    batches = [frames[i : i + BATCH] for i in range(0, len(frames), BATCH)]
    out = None
    c0, t0 = time.process_time(), time.perf_counter()
    for batch in batches:
        for f in batch:
            out = bcast + f[12:]
    t1, c1 = time.perf_counter(), time.process_time()
    del out
    return t1 - t0, c1 - c0


def load_core_at(ref: str):
    """The core package as of git ``ref`` (pmtud_relay/core/*), imported under another name."""
    import importlib
    import subprocess
    import tempfile

    from common import ROOT

    tmp = Path(tempfile.mkdtemp(prefix="pmr-bench-core-"))
    pkg = tmp / "pmtud_relay"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{ref}:pmtud_relay/core"],
                           capture_output=True, text=True, check=True, timeout=30).stdout.split()
    for name in names:
        if name.endswith(".py"):
            src = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:pmtud_relay/core/{name}"],
                                 capture_output=True, text=True, check=True, timeout=30).stdout
            (pkg / "core" / name).write_text(src)
    saved = {k: v for k, v in sys.modules.items() if k == "pmtud_relay" or k.startswith("pmtud_relay.")}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, str(tmp))
    try:
        relay = importlib.import_module("pmtud_relay.core.relay")
        policy = importlib.import_module("pmtud_relay.core.policy")
    finally:
        sys.path.remove(str(tmp))
        for k in [k for k in sys.modules if k == "pmtud_relay" or k.startswith("pmtud_relay.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    return relay, policy


def run_old(frames: list[bytes], mods) -> tuple[float, float]:
    relay_mod, policy_mod = mods
    cfg = relay_mod.RelayConfig(policy=policy_mod.Policy(vips=policy_mod.VipSet([F.VIP4, F.VIP6])), **LIFTED)
    relay = relay_mod.Relay(cfg, now=0.0)
    handle = relay.handle
    mac = F.RELAY_MAC
    batches = [frames[i : i + BATCH] for i in range(0, len(frames), BATCH)]
    now = 1.0
    c0, t0 = time.process_time(), time.perf_counter()
    for batch in batches:
        now += BATCH * 1e-6
        for f in batch:
            handle(f, now, mac, 0)
    return time.perf_counter() - t0, time.process_time() - c0


def run_interleaved(frames: list[bytes], cfg: RelayConfig, mods, chunk: int = 20 * BATCH,
                    limits: str = "lifted") -> tuple[float, float]:
    """The current core and the core at GITREF on the same frames, alternating every ``chunk``
    frames (each with its own state and clock): a machine whose speed drifts over seconds slows
    both alike, so the ratio of the summed times is far steadier than run-after-run medians.

    The garbage collector is off while this runs: a collection is paid by whichever core's
    allocation happens to trigger it, which made an A/A comparison (the same core on both
    sides) read 0.8x or 1.13x. Even without it, a run is biased by the memory the previous run
    left behind (one of the two table sets lands on recycled pages, the other faults in fresh
    ones), alternately in favour of one side and the other; see :func:`paired_interleaved`."""
    relay_mod, policy_mod = mods
    old_cfg = relay_mod.RelayConfig(policy=policy_mod.Policy(vips=policy_mod.VipSet([F.VIP4, F.VIP6])),
                                    **(LIFTED if limits == "lifted" else {}))
    handles = (Relay(cfg, now=0.0).handle, relay_mod.Relay(old_cfg, now=0.0).handle)
    spent = [0.0, 0.0]
    mac = F.RELAY_MAC
    now = 1.0
    gc.collect()
    gc.disable()
    try:
        for start in range(0, len(frames), chunk):
            part = frames[start : start + chunk]
            first = (start // chunk) % 2  # which core goes first alternates too
            for which in (first, 1 - first):
                handle = handles[which]
                t = now
                t0 = time.perf_counter()
                for i in range(0, len(part), BATCH):
                    t += BATCH * 1e-6
                    for f in part[i : i + BATCH]:
                        handle(f, t, mac, 0)
                spent[which] += time.perf_counter() - t0
            now += len(part) * 1e-6
    finally:
        gc.enable()
    return spent[0], spent[1]


def paired_interleaved(frames: list[bytes], cfg: RelayConfig, mods, limits: str = "lifted") -> float:
    """Speed-up of this core over the core at GITREF: the geometric mean of two consecutive
    interleaved runs, whose memory-layout biases point in opposite directions (an A/A check,
    ``--compare-with HEAD`` on a clean tree, reads 1.00 +- 0.02 this way)."""
    ratios = []
    for _ in range(2):
        t_new, t_old = run_interleaved(frames, cfg, mods, limits=limits)
        ratios.append(t_old / t_new)
    return (ratios[0] * ratios[1]) ** 0.5


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--compare-limits", choices=("lifted", "default"), default="lifted",
                    help="limits of both cores in the interleaved comparison (default %(default)s)")
    ap.add_argument("--compare-with", metavar="GITREF", default=None,
                    help="also run the core as of GITREF on the mix (limits lifted), alternately, for the speed-up")
    args = ap.parse_args(argv)
    pin(args.cpu)

    mix, mix_counts = F.realistic_mix(args.frames)
    n = args.frames
    per_kind = {
        "valid v4 (relayed)": [F.valid(i, 4) for i in range(n // 4)],
        "valid v6 (relayed)": [F.valid(i, 6) for i in range(n // 4)],
        "duplicate": [F.valid(i % 16, 4 if i % 2 else 6) for i in range(n // 4)],
        "spoofed (not VIP)": [F.ptb4(F.router4(1), F.ip4(F.NOT_VIP4), F.client4(1), 443, 5000)] * (n // 4),
        "malformed (truncated)": [F.valid(1, 4)[:40]] * (n // 4),
    }
    workloads = [("mix, limits lifted", mix, "lifted"), ("mix, default limits", mix, "default")]
    workloads += [(k, v, "lifted") for k, v in per_kind.items()]

    samples: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name, _, _ in workloads}
    ref = {"wall": [], "cpu": []}
    old = {"wall": [], "cpu": []}
    interleaved: list[float] = []  # per round: time of the core at GITREF / time of this core
    old_mods = load_core_at(args.compare_with) if args.compare_with else None
    counts_seen: dict[str, dict] = {}
    for rep in range(args.repeat):
        for name, frames, limits in workloads:
            gc.collect()
            wall, cpu, counts = run_relay(frames, config(limits))
            samples[name]["wall"].append(len(frames) / wall)
            samples[name]["cpu"].append(len(frames) / cpu if cpu > 0 else None)
            counts_seen[name] = counts
            if name == "mix, limits lifted":  # alternate with the reference
                gc.collect()
                wall, cpu = run_reference(mix)
                ref["wall"].append(len(mix) / wall)
                ref["cpu"].append(len(mix) / cpu if cpu > 0 else None)
                if old_mods is not None:
                    gc.collect()
                    wall, cpu = run_old(mix, old_mods)
                    old["wall"].append(len(mix) / wall)
                    old["cpu"].append(len(mix) / cpu if cpu > 0 else None)
                    gc.collect()
                    interleaved.append(paired_interleaved(mix, config(args.compare_limits), old_mods,
                                                          args.compare_limits))

    ref_wall, ref_cpu = median(ref["wall"]), median(ref["cpu"])
    rows = []
    for name, _, limits in workloads:
        w, c = median(samples[name]["wall"]), median(samples[name]["cpu"])
        rows.append({
            "workload": name,
            "frames/s": w,
            "frames/CPU-s": c,
            "ns/frame": 1e9 / w,
            "min..max frames/s": f"{min(samples[name]['wall']):,.0f}..{max(samples[name]['wall']):,.0f}",
        })
    rows.append({"workload": "reference (new MACs only)", "frames/s": ref_wall, "frames/CPU-s": ref_cpu,
                 "ns/frame": 1e9 / ref_wall,
                 "min..max frames/s": f"{min(ref['wall']):,.0f}..{max(ref['wall']):,.0f}"})
    speedup = None
    if old_mods is not None:
        ow = median(old["wall"])
        rows.append({"workload": f"mix, limits lifted, core at {args.compare_with}", "frames/s": ow,
                     "frames/CPU-s": median(old["cpu"]), "ns/frame": 1e9 / ow,
                     "min..max frames/s": f"{min(old['wall']):,.0f}..{max(old['wall']):,.0f}"})
        speedup = median([a / b for a, b in zip(samples["mix, limits lifted"]["wall"], old["wall"])])
    head = rows[0]["frames/s"]
    result = {
        "frames": n,
        "repeat": args.repeat,
        "batch": BATCH,
        "mix": F.MIX,
        "mix_counts": mix_counts,
        "decisions": counts_seen,
        "rows": rows,
        "samples": samples,
        "reference_samples": ref,
        "target_frames_per_s": 300_000,
        "core_mix_frames_per_s": head,
        "target_met": head >= 300_000,
        "ratio_to_reference_userspace": head / ref_wall,
        "compare_with": args.compare_with,
        "compare_limits": args.compare_limits,
        "old_core_samples": old,
        "speedup_vs_compare_with": speedup,
        "speedup_interleaved": median(interleaved) if interleaved else None,
        "speedup_interleaved_rounds": interleaved,
    }
    path = write_result("core", result)
    if not args.quiet:
        print(table(rows, ["workload", "frames/s", "frames/CPU-s", "ns/frame", "min..max frames/s"],
                    f"Core throughput, median of {args.repeat} ({n} frames each, batches of {BATCH})"))
        print(f"mix decisions (lifted): {counts_seen['mix, limits lifted']}")
        if speedup is not None:
            print(f"speed-up of the mix over the core at {args.compare_with}: {speedup:.2f}x "
                  "(median of per-round ratios)")
            print(f"  interleaved every {20 * BATCH} frames, paired runs, GC off, limits {args.compare_limits}: "
                  f"{median(interleaved):.2f}x (median; rounds "
                  + ", ".join(f"{r:.2f}" for r in interleaved) + ")")
        print(f"target >= 300,000 frames/s: {'met' if head >= 300_000 else 'NOT met'} ({head:,.0f}); written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

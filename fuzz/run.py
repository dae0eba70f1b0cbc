"""Run every fuzz target for a fixed budget and print the figures.

For each target (frame, nflog, peer): regenerate the seeds (make_seeds.py), start from an empty
working corpus, run ``-runs=N`` (default 1 000 000) inputs with a fixed seed, then replay the
corpus it built under a line tracer to measure line coverage of the functions that target is
about. Prints a table and writes fuzz/results/fuzz-<UTC time>.json (and fuzz-latest.json).
A crash (an exception escaping, an assertion in a target) fails the run and names the input file.

    .venv/bin/python fuzz/run.py [--runs 1000000] [--targets frame,nflog,peer] [--jobs 1]

Needs atheris (``pip install -e '.[fuzz]'``) and the test extra (scapy, for the seeds).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

#: (module, qualified names): the code each target is judged on for line coverage.
SCOPE = {
    "frame": [
        ("pmtud_relay.core.packet", ["parse_frame", "parse_ipv4", "parse_ipv6", "_verified", "checksum_ok",
                                     "parse_frame_unverified", "_ipv4", "_ipv4_general", "_ipv6", "_ipv6_general",
                                     "_quoted_ipv6_l4"]),
        ("pmtud_relay.core.quoted", ["quoted_tag", "_quoted_ipv6_l4_offset"]),
        ("pmtud_relay.core.checksum", ["region_sum", "verifies"]),
        ("pmtud_relay.core.policy", ["Policy.check", "VipSet.__contains__"]),
        ("pmtud_relay.core.dedup", ["Deduplicator.recent", "Deduplicator.remember", "Deduplicator._expire"]),
        ("pmtud_relay.core.ratelimit", ["RateLimiter.check"]),
        ("pmtud_relay.core.relay", ["Relay.handle"]),
    ],
    "nflog": [
        ("pmtud_relay.nflog.wire", ["_parse_datagram", "parse_packet_message", "_parse_vlan", "ethertype_of",
                                         "rebuild_frame"]),
        ("pmtud_relay.nflog.fastpath", ["_layout_key", "_Layout.__init__", "PacketParser._parse_packet"]),
        ("pmtud_relay.netlink.messages", ["parse_batch"]),
        ("pmtud_relay.nflog.capture", ["NflogDemux.feed"]),
    ],
    "peer": [
        ("pmtud_relay.peers.wire", ["PeerDecoder.decode", "PeerDecoder._decode", "ReplayCache.expire",
                                        "ReplayCache.seen", "ReplayCache.add"]),
        ("pmtud_relay.peers.inbox", ["PeerInbox.handle", "parse_packet", "_declared_end"]),
    ],
}
MAX_LEN = {"frame": 2048, "nflog": 4096, "peer": 2048}


def machine() -> dict:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    import atheris  # noqa: F401 - its version is a figure too

    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "pmtud_relay"], capture_output=True,
                           text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "atheris": version("atheris"),
            "commit": (commit or "?") + ("+dirty" if dirty else "")}


def run_target(name: str, runs: int, seed: int, results: str) -> dict:
    corpus = os.path.join(HERE, "corpus", name)
    shutil.rmtree(corpus, ignore_errors=True)
    os.makedirs(corpus)
    crashes = os.path.join(results, f"crashes-{name}") + os.sep
    os.makedirs(crashes, exist_ok=True)
    argv = [sys.executable, os.path.join(HERE, f"fuzz_{name}.py"), corpus, os.path.join(HERE, "seeds", name),
            f"-runs={runs}", f"-seed={seed}", f"-max_len={MAX_LEN[name]}", "-timeout=10", "-rss_limit_mb=4096",
            "-print_final_stats=1", f"-artifact_prefix={crashes}"]
    log_path = os.path.join(results, f"fuzz-{name}.log")
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=HERE)
    wall = time.monotonic() - t0
    text = open(log_path).read()
    out = {"target": name, "runs_asked": runs, "exit": proc.returncode, "wall_seconds": round(wall, 1), "log": log_path}
    m = re.search(r"Done (\d+) runs in (\d+) second", text)
    if m:
        out["runs"], out["seconds"] = int(m.group(1)), int(m.group(2))
    finals = re.findall(r"#\d+\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", text)
    if finals:
        cov, ft, corp = finals[-1]
        out.update(edges=int(cov), features=int(ft), corpus=int(corp))
    for key in ("average_exec_per_sec", "peak_rss_mb"):
        m = re.search(rf"stat::{key}:\s+(\d+)", text)
        if m:
            out[key] = int(m.group(1))
    if proc.returncode != 0:
        out["crash"] = re.findall(r"Test unit written to (\S+)", text)
        out["error"] = "\n".join(text.splitlines()[-40:])
    else:
        out["lines"] = replay_coverage(name, [corpus, os.path.join(HERE, "seeds", name)])
    return out


def replay_coverage(name: str, dirs: list[str]) -> dict:
    """Line coverage of SCOPE[name] when every input of ``dirs`` is replayed (no atheris
    instrumentation: a stub module stands in for it), in a fresh interpreter."""
    code = f"import sys; sys.path[:0] = [{HERE!r}, {REPO!r}]; import run; run._replay({name!r}, {dirs!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE, timeout=3600)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _replay(name: str, dirs: list[str]) -> None:
    stub = types.ModuleType("atheris")
    stub.instrument_imports = lambda **kw: contextlib.nullcontext()
    stub.Setup = stub.Fuzz = lambda *a, **k: None
    sys.modules["atheris"] = stub
    import importlib

    target = importlib.import_module(f"fuzz_{name}")
    wanted: dict[str, set[int]] = {}
    for modname, qualnames in SCOPE[name]:
        mod = importlib.import_module(modname)
        for qn in qualnames:
            obj = mod
            for part in qn.split("."):
                obj = getattr(obj, part)
            fn = getattr(obj, "__func__", obj)
            wanted.setdefault(fn.__code__.co_filename, set()).update(_lines(fn.__code__, skip_first=True))
    hit: dict[str, set[int]] = {f: set() for f in wanted}

    def tracer(frame, event, arg):
        f = frame.f_code.co_filename
        if f not in hit:
            return None
        if event == "line":
            hit[f].add(frame.f_lineno)
        return tracer

    files = sorted(os.path.join(d, n) for d in dirs if os.path.isdir(d) for n in os.listdir(d))
    sys.settrace(tracer)
    try:
        for path in files:
            with open(path, "rb") as fh:
                data = fh.read()
            target.TestOneInput(data)
    finally:
        sys.settrace(None)
    total = sum(len(v) for v in wanted.values())
    covered = sum(len(wanted[f] & hit[f]) for f in wanted)
    per_file = {os.path.relpath(f, REPO): f"{len(wanted[f] & hit[f])}/{len(wanted[f])}" for f in sorted(wanted)}
    missed = {os.path.relpath(f, REPO): sorted(wanted[f] - hit[f]) for f in sorted(wanted) if wanted[f] - hit[f]}
    print(json.dumps({"inputs": len(files), "covered": covered, "total": total,
                      "percent": round(100.0 * covered / total, 1), "per_file": per_file, "missed": missed}))


def _lines(code, skip_first: bool = False) -> set[int]:
    out = {line for _, _, line in code.co_lines() if line is not None}
    if skip_first:
        out.discard(code.co_firstlineno)  # the def line (and decorators) never trace as executed
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out |= _lines(const, skip_first=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--targets", default="frame,nflog,peer")
    args = ap.parse_args(argv)
    results = os.path.join(HERE, "results")
    os.makedirs(results, exist_ok=True)
    subprocess.run([sys.executable, os.path.join(HERE, "make_seeds.py")], check=True)
    started = dt.datetime.now(dt.timezone.utc)
    rows = [run_target(t, args.runs, args.seed, results) for t in args.targets.split(",")]
    payload = {"date": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine(), "results": rows}
    stamp = started.strftime("%Y%m%d-%H%M%S")
    for path in (os.path.join(results, f"fuzz-{stamp}.json"), os.path.join(results, "fuzz-latest.json")):
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
    print(f"\nfuzz figures ({payload['date']}, {payload['machine']['cpu']}, {payload['machine']['cores']} cores, "
          f"Python {payload['machine']['python']}, atheris {payload['machine']['atheris']})")
    print(f"{'target':8} {'inputs':>9} {'seconds':>8} {'exec/s':>8} {'edges':>6} {'corpus':>7} {'lines':>14} "
          f"{'rss MB':>7}  result")
    ok = True
    for r in rows:
        lines = r.get("lines", {})
        cov = f"{lines.get('covered', '?')}/{lines.get('total', '?')} {lines.get('percent', '?')}%"
        result = "ok" if r["exit"] == 0 else f"CRASH {r.get('crash')}"
        ok &= r["exit"] == 0
        print(f"{r['target']:8} {r.get('runs', '?'):>9} {r.get('seconds', '?'):>8} "
              f"{r.get('average_exec_per_sec', '?'):>8} {r.get('edges', '?'):>6} {r.get('corpus', '?'):>7} {cov:>14} "
              f"{r.get('peak_rss_mb', '?'):>7}  {result}")
        if r["exit"] != 0:
            print(r.get("error", ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

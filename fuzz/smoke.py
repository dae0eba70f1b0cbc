"""Replay every fuzz target's seeds, and seeded random mutations of them, through the target's
``TestOneInput`` without atheris: no coverage guidance, only the targets' own assertions.

It is cheap enough for the unit suite (tests/test_fuzz_smoke.py runs it), so a harness that no
longer agrees with the code fails there, not weeks later in a fuzzing run. Real fuzzing is
``fuzz/run.py``.

    .venv/bin/python fuzz/smoke.py [--mutations 3000] [--seed 1] [--targets frame,nflog,peer]

Needs the test extra (scapy, for the seeds). Exit status 1 and the failing input (hex) on the
first assertion or exception.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import random
import sys
import traceback
import types

import make_seeds

MAX_LEN = {"frame": 2048, "nflog": 4096, "peer": 2048}


def _stub_atheris() -> None:
    """The targets import atheris at module level; a stand-in that instruments nothing."""
    stub = types.ModuleType("atheris")
    stub.instrument_imports = lambda **kw: contextlib.nullcontext()
    stub.Setup = stub.Fuzz = lambda *a, **k: None
    sys.modules["atheris"] = stub


def mutate(data: bytes, rng: random.Random, max_len: int) -> bytes:
    """One to four edits of the kinds libFuzzer makes: bit flips, byte sets, cuts, repeats."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if len(buf) < 2:
            buf += bytes([rng.randrange(256)])
            continue
        kind = rng.randrange(5)
        i = rng.randrange(len(buf))
        if kind == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buf[i] = rng.randrange(256)
        elif kind == 2:
            del buf[rng.randrange(1, len(buf)):]
        elif kind == 3:
            j = rng.randrange(i, min(len(buf), i + 64) + 1)
            buf[i:i] = buf[i:j]
        else:
            buf[i] = rng.choice((0, 0xFF, 0x7F, 0x80))
    return bytes(buf[:max_len])


def smoke(name: str, mutations: int, seed: int) -> int:
    """Seeds twice (the second pass meets dedup and full tables), then mutations. Inputs run."""
    target = importlib.import_module(f"fuzz_{name}")
    seeds = make_seeds.TARGETS[name]()
    rng = random.Random(seed)
    inputs = seeds + seeds + [mutate(rng.choice(seeds), rng, MAX_LEN[name]) for _ in range(mutations)]
    for n, data in enumerate(inputs):
        try:
            target.TestOneInput(data)
        except Exception:
            print(f"{name}: input {n} failed: {data.hex()}", file=sys.stderr)
            traceback.print_exc()
            raise SystemExit(1) from None
    return len(inputs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutations", type=int, default=3000, help="random mutations per target (default %(default)s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--targets", default="frame,nflog,peer")
    args = ap.parse_args(argv)
    _stub_atheris()
    for name in args.targets.split(","):
        print(f"{name}: {smoke(name, args.mutations, args.seed)} inputs, no failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())

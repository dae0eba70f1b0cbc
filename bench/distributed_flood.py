"""What a many-source flood does to legitimate PTBs: the global bucket is shared with the attacker.

In process, through ``Relay.handle`` with the default limits and a deterministic clock (the
decision logic exactly as the daemon runs it; no capture losses, no CPU limit). For each flood
rate, ``--sources`` spoofed outer sources take turns, so each stays far inside its own bucket
(rate / sources PTB/s, burst 50): every flood PTB is well formed, quotes a VIP and a flow of its
own, has correct checksums. Meanwhile ``--legit`` routers (198.51.100.0/24) each send one PTB
about a flow of their own, at random times after the flood's first second (the global burst of
500 is spent by then); the flood arrives as a Poisson stream. Reports legitimate PTBs relayed, flood
PTBs relayed, and the global bucket's drops.

With ``--warmup S`` the same routers each send one PTB (about another flow) at random times
during the S seconds before the flood starts, as routers in service do: they are then known to
the global reserve (``--reserves``: the shares of the global budget kept for sources seen
before the flood, 0 = off; each rate is run once per share). ``from reserve`` counts the PTBs
relayed with a reserve token.

    .venv/bin/python bench/distributed_flood.py [--sources 150000] [--seconds 10]
                                                 [--rates 150,300,1000,5000,20000,85000] [--legit 20]
                                                 [--warmup 0] [--reserves 0.2]
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import frames as F  # noqa: E402
from common import machine, table, write_result  # noqa: E402

from pmtud_relay.core.policy import Policy, VipSet  # noqa: E402
from pmtud_relay.core.reasons import Reason  # noqa: E402
from pmtud_relay.core.relay import Relay, RelayConfig  # noqa: E402

SPOOF_BASE = 0x0A000000  # in process only: nothing is sent anywhere


def _sum16(data: bytes) -> int:
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class Flood:
    """Valid IPv4 PTBs from source ``SPOOF_BASE + i`` about flow ``i``; checksums patched from
    precomputed partial sums (one template, no full recomputation per frame)."""

    def __init__(self) -> None:
        t = bytearray(F.ptb4(bytes(4), F.ip4(F.VIP4), F.client4(1), F.SERVICE_PORT, 0))
        l3, icmp = 14, 34
        end = l3 + (t[l3 + 2] << 8 | t[l3 + 3])
        self.ip_csum_at, self.icmp_csum_at = l3 + 10, icmp + 2
        self.src_at, self.ports_at = l3 + 12, icmp + 8 + 20
        t[self.ip_csum_at:self.ip_csum_at + 2] = t[self.icmp_csum_at:self.icmp_csum_at + 2] = b"\0\0"
        t[self.ports_at:self.ports_at + 4] = b"\0\0\0\0"
        self.ip_base, self.icmp_base = _sum16(bytes(t[l3:icmp])), _sum16(bytes(t[icmp:end]))
        self.template = bytes(t)
        self._pack = struct.Struct("!H").pack_into

    def frame(self, i: int) -> bytes:
        f = bytearray(self.template)
        src = SPOOF_BASE + i
        sport, dport = 1024 + (i // 60000) % 60000, 1 + i % 60000
        f[self.src_at:self.src_at + 4] = src.to_bytes(4, "big")
        f[self.ports_at:self.ports_at + 4] = (sport << 16 | dport).to_bytes(4, "big")
        self._pack(f, self.ip_csum_at, _fold(self.ip_base + (src >> 16) + (src & 0xFFFF)))
        self._pack(f, self.icmp_csum_at, _fold(self.icmp_base + sport + dport))
        return bytes(f)


def run(rate: float, sources: int, seconds: float, legit: int, warmup: float = 0.0, reserve: float = 0.2) -> dict:
    relay = Relay(RelayConfig(policy=Policy(vips=VipSet([F.VIP4, F.VIP6])), global_reserve=reserve), now=0.0)
    handle = relay.handle
    mac = F.RELAY_MAC
    flood = Flood()
    n = int(rate * seconds)
    # Before the flood (``warmup`` seconds): one PTB per router, about a flow it will not use again.
    warm_relayed = 0
    if warmup > 0:
        when = random.Random(3).uniform
        for t, k in sorted((when(0, warmup), k) for k in range(legit)):
            f = F.ptb4(F.ip4(f"198.51.100.{10 + k}"), F.ip4(F.VIP4), F.client4(200 + k), F.SERVICE_PORT, 20000 + k)
            warm_relayed += handle(f, t, mac).relay
    # Legitimate PTBs at random times from 1 s on (at evenly spaced times they all met the global
    # bucket at the same phase of its refill); flood PTBs as a Poisson stream of ``rate``.
    when = random.Random(2).uniform
    legit_times = sorted(warmup + when(1, seconds) for _ in range(legit))
    legit_relayed = flood_relayed = 0
    legit_reasons: dict[str, int] = {}
    gap = random.Random(1).expovariate
    t0 = time.process_time()
    now = warmup
    k = 0
    for i in range(n):
        now += gap(rate)
        while k < legit and legit_times[k] <= now:
            f = F.ptb4(F.ip4(f"198.51.100.{10 + k}"), F.ip4(F.VIP4), F.client4(200 + k), F.SERVICE_PORT, 30000 + k)
            d = handle(f, legit_times[k], mac)
            legit_relayed += d.relay
            legit_reasons[d.reason.value] = legit_reasons.get(d.reason.value, 0) + 1
            k += 1
        if handle(flood.frame(i % sources if sources < n else i), now, mac).relay:
            flood_relayed += 1
    cpu = time.process_time() - t0
    return {
        "reserve": reserve,
        "warm-up relayed": f"{warm_relayed}/{legit if warmup > 0 else 0}",
        "flood PTB/s": rate,
        "sources": sources,
        "PTB/s per source": rate / sources,
        "legit relayed": f"{legit_relayed}/{k}",
        "flood relayed": flood_relayed,
        "from reserve": relay.limiter.reserve_relayed,
        "global-limited": relay.counts[Reason.RATE_LIMITED_GLOBAL],
        "source-limited": relay.counts[Reason.RATE_LIMITED_SOURCE],
        "cpu s": round(cpu, 1),
        "legit reasons": legit_reasons,
        "_legit_relayed": legit_relayed,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", type=int, default=150_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rates", default="150,300,1000,5000,20000,85000")
    ap.add_argument("--legit", type=int, default=20)
    ap.add_argument("--warmup", type=float, default=0.0, help="seconds before the flood in which each "
                    "legitimate router sends one PTB (0: none)")
    ap.add_argument("--reserves", default="0.2", help="global_reserve shares to run, comma-separated")
    args = ap.parse_args(argv)
    rows = [run(float(r), args.sources, args.seconds, args.legit, args.warmup, float(share))
            for r in args.rates.split(",") for share in args.reserves.split(",")]
    cols = ["reserve", "warm-up relayed", "flood PTB/s", "sources", "PTB/s per source", "legit relayed",
            "flood relayed", "from reserve", "global-limited", "source-limited", "cpu s"]
    print(table(rows, cols, f"Many-source flood, default limits, {args.seconds:g} s simulated after "
                            f"{args.warmup:g} s of warm-up, in process"))
    path = write_result("distributed_flood", {"machine": machine(), "args": vars(args), "rows": rows})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

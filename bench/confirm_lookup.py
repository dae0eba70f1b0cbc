"""Cost of delivery confirmation's owner lookup, per PTB, on a real kernel.

In a network namespace of its own (deleted afterwards) with the lab's VIPs on lo, this opens
``--flows`` established TCP connections VIP:443 <-> client (both ends local), one UDP socket on
VIP:53, and times, each ``--lookups`` times, round-robin over the flows:

* ``tcp owned``: the sock_diag exact lookup of an established flow (tcp_info included);
* ``tcp orphan``: a flow with no socket (the answer on every host but the owner);
* ``udp owned``: the UDP lookup plus the route lookup (RTM_GETROUTE) that reads its PMTU;
* ``confirmer``: the whole path the daemon runs per accepted PTB (parse the quoted packet,
  queue, look up, verdict callback) for orphan PTBs, on an asyncio loop.

    .venv/bin/python bench/confirm_lookup.py [--flows 1000] [--lookups 20000]

Needs root (a namespace). Prints a table and writes bench/results/confirm_lookup-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import median, pct, table, write_result  # noqa: E402

VIP = "192.0.2.10"
CLIENT = "203.0.113.7"


def _enter(ns: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def timed(fn, n: int) -> list[float]:
    out = []
    clock = time.perf_counter
    for i in range(n):
        t = clock()
        fn(i)
        out.append((clock() - t) * 1e6)
    return out


def measure(flows: int, lookups: int) -> dict:
    from pmtud_relay.confirm.lookup import KernelLookup
    from pmtud_relay.confirm.service import Confirmer
    from pmtud_relay.confirm.verdict import Origin

    vip, client = socket.inet_aton(VIP), socket.inet_aton(CLIENT)
    listener = socket.socket()
    listener.bind((VIP, 443))
    listener.listen(4096)
    conns, ports = [], []
    for _ in range(flows):
        c = socket.socket()
        c.bind((CLIENT, 0))
        c.connect((VIP, 443))
        s, _addr = listener.accept()
        conns += [c, s]
        ports.append(c.getsockname()[1])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((VIP, 53))
    k = KernelLookup()
    assert k.owner(4, 6, vip, 443, client, ports[0]) is not None
    rows = {}
    rows["tcp owned"] = timed(lambda i: k.owner(4, 6, vip, 443, client, ports[i % flows]), lookups)
    rows["tcp orphan"] = timed(lambda i: k.owner(4, 6, vip, 443, client, 1 + i % 1000), lookups)
    rows["udp owned"] = timed(lambda i: (k.owner(4, 17, vip, 53, client, 1000 + i % 1000),
                                         k.route_mtu(4, vip, client)), lookups)

    import frames as F  # bench/frames.py (stdlib): a 128-byte quote, as the scapy fixture this used had

    router = socket.inet_aton("198.51.100.1")
    packets = [F.ptb4(router, vip, client, 443, 1 + i % 1000, quote_ip_len=156)[14:] for i in range(1000)]

    async def confirmer_run() -> float:
        loop = asyncio.get_running_loop()
        c = Confirmer(loop, k)
        done = [0]

        def on_verdict(_v, _s):
            done[0] += 1

        t = time.perf_counter()
        batch = 32  # the daemon submits a capture batch at a time
        for start in range(0, lookups, batch):
            for i in range(start, min(start + batch, lookups)):
                c.submit(packets[i % 1000], Origin.L2_COPY, time.monotonic(), on_verdict)
            while done[0] < min(start + batch, lookups):
                await asyncio.sleep(0)
        return (time.perf_counter() - t) * 1e6 / lookups

    per_ptb = asyncio.run(confirmer_run())
    k.close()
    for s in conns:
        s.close()
    listener.close()
    udp.close()
    out = [{"case": name, "p50 µs": pct(v, 50), "p90 µs": pct(v, 90), "p99 µs": pct(v, 99), "mean µs": sum(v) / len(v)}
           for name, v in rows.items()]
    out.append({"case": "confirmer (orphan PTBs, batches of 32)", "p50 µs": None, "p90 µs": None, "p99 µs": None,
                "mean µs": per_ptb})
    return {"rows": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=1000)
    ap.add_argument("--lookups", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if not 1 <= args.flows <= 20000 or not 1 <= args.lookups <= 1_000_000 or not 1 <= args.rounds <= 10:
        ap.error("flows 1..20000, lookups 1..1000000, rounds 1..10")
    ns = f"pmr-bench-confirm-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", VIP + "/32", "dev", "lo"],
                    ["addr", "add", CLIENT + "/32", "dev", "lo"]):
            subprocess.run(["ip", "-n", ns, *cmd], check=True, timeout=10)
        results: dict = {}

        def body():
            _enter(ns)
            for r in range(args.rounds):
                results[r] = measure(args.flows, args.lookups)

        import threading

        t = threading.Thread(target=body)
        t.start()
        t.join()
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=10)
    rounds = [results[r]["rows"] for r in sorted(results)]
    rows = []
    for i, row in enumerate(rounds[0]):
        merged = {"case": row["case"]}
        for key in ("p50 µs", "p90 µs", "p99 µs", "mean µs"):
            merged[key] = median([rr[i][key] for rr in rounds]) if row[key] is not None else None
        rows.append(merged)
    print(table(rows, ["case", "p50 µs", "p90 µs", "p99 µs", "mean µs"],
                f"Owner lookup cost ({args.flows} established TCP flows in the namespace, {args.lookups} lookups per "
                f"case, median of {args.rounds} rounds; wall-clock per call on this thread)"))
    result = {"rows": rows, "rounds": rounds, "flows": args.flows, "lookups": args.lookups}
    print(f"written {write_result('confirm_lookup', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

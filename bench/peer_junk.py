"""Peer receiver under a junk flood from a non-peer, with and without the in-kernel peer filter.

The routed lab (pmtud_relay.lab.routed, 2 servers): s2 runs ``pmtud-relay run --fanout peers
--peer S1`` (its listener's filter admits s1 only). The router, which is not a peer, sends
datagrams to s2's peer port as fast as one Python process can for ``--seconds``: the protocol's
32-byte header (right magic, version, key id, a fresh timestamp) and 150 random bytes, so each
one fails the MAC check if it reaches userspace. Half-way through, s1 sends 16 genuine signed
PTB datagrams (distinct flows). Kinds, alternated for ``--rounds``:

- ``filter``: this build;
- ``nofilter``: ``bench/peer_filter_off.py`` (the same daemon, listener filter never attached).

Per run: the junk rate offered (datagrams the sender's sendto() accepted / its wall time), the
receiver's CPU (utime+stime of its process over the flood window / the window, % of one core),
the share of the window it spent runnable but waiting for its CPU (``/proc/PID/schedstat``: the
machine is shared), ``peer_rx_bad_mac`` (junk that reached userspace) and ``peer_rx_accepted`` of the 16 genuine
datagrams (from its ``stopped`` line), and the UDP receive-buffer drops the kernel counted in
s2's namespace (``Udp6RcvbufErrors`` + ``UdpRcvbufErrors``, nstat). The receiver runs on CPU 1,
the sender on CPU 0 (``taskset``). Writes bench/results/peer-junk-<time>.json. Needs root.

    .venv/bin/python bench/peer_junk.py [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import frames as BF  # noqa: E402  (bench/frames.py: stdlib-only PTB builders)
from common import machine, median, proc_cpu, table, write_result  # noqa: E402

from pmtud_relay.lab.routed import RoutedLab  # noqa: E402
from pmtud_relay.peers.wire import HEADER, MAGIC, Keyring, encode  # noqa: E402

PORT = 2106
GENUINE = 16

SENDERS = str(HERE / "ns_senders.py")  # the junk flood and the genuine datagrams, run in the namespaces


def nstat(lab: RoutedLab, node: str) -> dict[str, int]:
    out = lab.run(node, ["nstat", "-az", "UdpRcvbufErrors", "Udp6RcvbufErrors", "UdpInErrors", "Udp6InErrors"]).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)", out, re.M)}


def schedstat(pid: int) -> tuple[float, float]:
    """Seconds ``pid`` ran on a CPU and waited runnable on a run queue (/proc/PID/schedstat)."""
    with open(f"/proc/{pid}/schedstat") as f:
        run_ns, wait_ns, _slices = (int(x) for x in f.read().split())
    return run_ns / 1e9, wait_ns / 1e9


def one_run(lab: RoutedLab, kind: str, key_file: str, key: bytes, seconds: float) -> dict:
    s1, s2 = lab.server("s1"), lab.server("s2")
    script = ["-m", "pmtud_relay"] if kind == "filter" else [str(HERE / "peer_filter_off.py")]
    argv = ["taskset", "-c", "1", lab.python, *script, "run", "-i", "eth0", "--fanout", "peers",
            "--peer", s1.ipv4, "--peer-key-file", key_file, "--summary-interval", "3600",
            "--peer-rate", "1000", "--peer-burst", "1000"]
    relay = lab.spawn("s2", argv)
    try:
        relay.wait_for(r"event=ready", timeout=15)
        time.sleep(0.5)
        before = nstat(lab, "s2")
        head = HEADER.pack(MAGIC, 1, 0, 1, int(time.time() * 1000), bytes(12), 150 - 32, 0)
        junk = lab.spawn("router", ["taskset", "-c", "0", lab.python, SENDERS, "junk", s2.ipv4, str(PORT),
                                    str(seconds), head.hex()])
        time.sleep(0.3)  # the flood is up to speed
        cpu0, t0, sched0 = proc_cpu(relay.pid), time.monotonic(), schedstat(relay.pid)
        time.sleep(seconds / 2 - 0.3)
        ring = Keyring([(1, key)])
        vip, client = BF.ip4(lab.vip(4)), BF.ip4(lab.client_addr(4))
        router = BF.ip4(lab.router_addr(4))
        genuine = [encode(BF.ptb4(router, vip, client, 443, 40000 + i)[14:], ring, time.time(),
                          secrets.token_bytes(12)).hex() for i in range(GENUINE)]
        lab.run("s1", ["taskset", "-c", "0", lab.python, SENDERS, "send", s2.ipv4, str(PORT), *genuine])
        deadline = time.monotonic() + seconds
        while junk.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu1, t1, sched1 = proc_cpu(relay.pid), time.monotonic(), schedstat(relay.pid)
        junk.stop(timeout=5)
        sent, failed, elapsed = (float(x) for x in junk.stdout.split())
        time.sleep(0.5)
        after = nstat(lab, "s2")
    finally:
        relay.stop(timeout=10)
    stopped = {}
    for line in relay.stderr.splitlines():
        if "event=stopped" in line:
            stopped = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    drops = sum(after.get(k, 0) - before.get(k, 0) for k in ("UdpRcvbufErrors", "Udp6RcvbufErrors"))
    return {
        "kind": kind,
        "junk_sent": int(sent), "junk_send_failed": int(failed), "junk_per_s": sent / elapsed,
        "cpu_pct": 100.0 * (cpu1 - cpu0) / (t1 - t0),
        # runnable but waiting for its CPU (other jobs on the shared machine): run + wait near 100 %
        # means the receiver would have used more CPU had it been given it
        "runq_wait_pct": 100.0 * (sched1[1] - sched0[1]) / (t1 - t0),
        "bad_mac_seen": int(stopped.get("peer_rx_bad_mac", 0)),
        "genuine_accepted": int(stopped.get("peer_rx_accepted", 0)),
        "genuine_sent": GENUINE,
        "rcvbuf_drops": drops,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 77
    key = secrets.token_bytes(32)
    runs = []
    with RoutedLab(servers=2, prefix="pmr-pjunk-") as lab:
        key_file = Path(f"/tmp/pmr-pjunk-{os.getpid()}.key")
        key_file.write_text(f"1:{key.hex()}\n")
        os.chmod(key_file, 0o600)
        try:
            for r in range(args.rounds):
                for kind in (("filter", "nofilter") if r % 2 == 0 else ("nofilter", "filter")):
                    run = one_run(lab, kind, str(key_file), key, args.seconds)
                    run["round"] = r
                    runs.append(run)
                    print(table([run], list(run)), flush=True)
        finally:
            key_file.unlink()
    summary = []
    for kind in ("filter", "nofilter"):
        mine = [r for r in runs if r["kind"] == kind]
        summary.append({"kind": kind, "runs": len(mine),
                        "junk_per_s": median([r["junk_per_s"] for r in mine]),
                        "cpu_pct": median([r["cpu_pct"] for r in mine]),
                        "cpu_pct_max": max(r["cpu_pct"] for r in mine),
                        "runq_wait_pct": median([r["runq_wait_pct"] for r in mine]),
                        "bad_mac_seen": median([r["bad_mac_seen"] for r in mine]),
                        "genuine_accepted_min": min(r["genuine_accepted"] for r in mine),
                        "genuine_sent": GENUINE})
    print()
    print(machine())
    print(table(summary, list(summary[0]), "peer receiver under junk from a non-peer (medians)"))
    path = write_result("peer-junk", {"seconds": args.seconds, "rounds": args.rounds, "runs": runs,
                                      "summary": summary})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

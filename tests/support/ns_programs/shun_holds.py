"""Kernel holds of flooding sources (tests/test_shun.py), in the ``veth_netns`` fixture's namespace
(veth pair ``pmr0`` <-> ``pmr1``): frames go out on ``pmr1``, the capture or the daemon holds
``pmr0``. Each reads its input as JSON on stdin and prints its result as JSON on stdout.

    kernel-holds   [ring, blocked, batch, sentinel]: what PacketCapture(ring=ring) hands on from
                   the batch before set_blocked(blocked), while it holds them, and after the hold
                   is lifted (hex strings in and out)
    daemon-holds   {"mode": "expire" | "sample", "hold", "vip", "flood", "genuine"}: a RelayDaemon
                   on pmr0 sees the flood and holds its source; "expire": the source goes quiet,
                   when the hold lifts and whether the genuine PTB then gets relayed; "sample":
                   20·N copies of the genuine PTB while held, how many reach userspace and are
                   relayed
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from pmtud_relay.capture.afpacket import PacketCapture
from tests.support.ns_programs import bounded


def kernel_holds(args: list) -> dict:
    ring, blocked_hex, batch_hex, sentinel_hex = args
    blocked = {bytes.fromhex(h) for h in blocked_hex}
    batch, sentinel = [bytes.fromhex(h) for h in batch_hex], bytes.fromhex(sentinel_hex)
    cap = PacketCapture("pmr0", ring=ring, sample=None)  # exact drops; the sample has its own test
    assert (cap.ring is not None) == ring
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    tx.bind(("pmr1", 0))

    def phase() -> list[str]:
        # The batch, then a sentinel from a source never held: the veth delivers in order, so
        # once the sentinel is read every frame of the batch was either delivered or dropped.
        for frame in [*batch, sentinel]:
            tx.send(frame)
        got: list[str] = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if select.select([cap], [], [], 0.05)[0]:
                for data, _ in cap.drain():
                    if data == sentinel:
                        return got
                    got.append(data.hex())
        raise SystemExit("sentinel never arrived")

    out: dict = {"before": phase()}
    cap.set_blocked(blocked)
    out["held"] = sorted(s.hex() for s in cap.blocked)
    out["blocked"] = phase()
    cap.set_blocked(frozenset())
    out["lifted"] = phase()
    cap.close()
    tx.close()
    return out


def daemon_holds(cfg: dict) -> dict:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from pmtud_relay import daemon as D
    from pmtud_relay import metrics
    from pmtud_relay.core.policy import Policy
    from pmtud_relay.core.reasons import Reason
    from pmtud_relay.core.relay import RelayConfig
    from pmtud_relay.daemon import parse_vips

    flood = [bytes.fromhex(h) for h in cfg["flood"]]
    genuine = bytes.fromhex(cfg["genuine"])
    d = D.RelayDaemon(D.DaemonSettings(
        interfaces=("pmr0",), discover_vips=False, summary_interval=3600,
        relay=RelayConfig(policy=Policy(vips=parse_vips([cfg["vip"]])), shun_min_rate=1000)))
    d.relay.shunner.hold = d.relay.shunner.max_hold = cfg["hold"]  # 10 s in production; shorter here
    d.open()
    capture = d.ports[0].capture
    assert isinstance(capture, PacketCapture)  # the default capture: it holds sources in its filter
    seen = [0]  # frames that reached userspace
    _drain = capture.drain

    def counting_drain(limit: int = 256) -> list:
        batch = _drain(limit)
        seen[0] += len(batch)
        return batch

    capture.drain = counting_drain  # type: ignore[method-assign]
    registry = metrics.build_registry(d.stats, lambda: d.relay, process=False)

    def held_metric() -> float:
        text = generate_latest(registry).decode()
        return [s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "pmtud_relay_kernel_held_sources"][0]

    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    tx.bind(("pmr1", 0))
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # the copies the relay sends
    rx.setsockopt(263, 23, 1)  # SOL_PACKET, PACKET_IGNORE_OUTGOING: not what tx sends
    rx.bind(("pmr1", 0))
    rx.setblocking(False)

    def copies() -> int:
        out = 0
        while True:
            try:
                data = rx.recv(65536)
            except BlockingIOError:
                return out
            out += data[:6] == b"\xff" * 6 and data[14:] == genuine[14:]

    async def send(frames: list[bytes], chunk: int = 50) -> None:
        for i in range(0, len(frames), chunk):
            for f in frames[i:i + chunk]:
                tx.send(f)
            await asyncio.sleep(0.003)  # stay under the veth backlog (netdev_max_backlog)

    async def until(cond: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(step)
        return True

    out: dict = {}

    async def main() -> None:
        serving = asyncio.ensure_future(d.serve())
        assert await until(lambda: d.stats.ready, 5)
        await send(flood)
        out["held"] = await until(lambda: len(d.relay.shunner) == 1, 3)
        expiry = min(d.relay.shunner._held.values())
        out["held_metric"] = held_metric()
        await asyncio.sleep(0.3)  # the flood's last frames drain
        quiet_from = seen[0]
        if cfg["mode"] == "expire":
            lifted = await until(lambda: held_metric() == 0, cfg["hold"] + 3)
            out["lifted_late_by"] = d.clock() - expiry if lifted else None
            out["seen_while_quiet"] = seen[0] - quiet_from
            out["filter_blocked"] = sorted(s.hex() for s in capture.blocked)
            copies()
            before = d.relay.counts[Reason.RELAYED]
            tx.send(genuine)
            await until(lambda: d.relay.counts[Reason.RELAYED] > before, 1)
            await asyncio.sleep(0.1)
            out["genuine_relayed"] = d.relay.counts[Reason.RELAYED] - before
            out["genuine_copies"] = copies()
        else:  # the held router's genuine PTB, repeated (one per retransmission), while held
            copies()
            before = d.relay.counts[Reason.RELAYED]
            n = out["sample"] = list(d.relay.shunner.samples.values())[0]
            out["sent"] = 20 * n
            await send([genuine] * (20 * n), chunk=64)
            await asyncio.sleep(0.3)
            out["still_held"] = len(d.relay.shunner)
            out["seen_while_held"] = seen[0] - quiet_from
            out["genuine_relayed"] = d.relay.counts[Reason.RELAYED] - before
            out["genuine_copies"] = copies()
        d.stop()
        await asyncio.wait_for(serving, 5)

    try:
        D.run_event_loop(main)
    finally:
        d.close()
    return out


COMMANDS: dict[str, Callable[[Any], dict]] = {"kernel-holds": kernel_holds, "daemon-holds": daemon_holds}


def bound(command: str, payload: Any) -> float:
    """Seconds ``command`` may take at most: under what the test waits (20 s for kernel-holds;
    30 s for daemon-holds "expire" with a 2 s hold, 60 s for "sample")."""
    if command == "kernel-holds":
        return 18
    return payload["hold"] + 20 if payload["mode"] == "expire" else 55


def main(argv: list[str]) -> int:
    payload = json.load(sys.stdin)  # the test writes it all and closes stdin at once
    bounded(bound(argv[0], payload))
    json.dump(COMMANDS[argv[0]](payload), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Probes of the capture and emit paths other than the default one (tests/test_capture_paths.py),
in the ``veth_netns`` fixture's namespace (veth pair ``pmr0`` <-> ``pmr1``): frames go out on
``pmr1`` and are captured on ``pmr0``. Each reads its input as JSON on stdin and prints its
result as JSON on stdout; each ends its collection on a sentinel frame sent last (the veth
delivers in order, so once the sentinel is read every earlier frame was delivered or dropped).

    both-captures           [sent, sentinel]: what the ring and the socket capture hand on
    oversized               [sent, sentinel]: what each capture path hands on and counts as
                            truncated, with MAX_FRAME
    socket-emitter          [sent, too_big, sentinel]: L2Emitter(ring=False) results and what arrives
    ring-emitter-large      [sent, sentinel]: L2Emitter(ring=True) with frames larger than a slot
    ring-emitter-over-mtu   [template, over_mtu, sentinel, bypass]: frames over the MTU in the TX
                            ring (bypass: the emitter's own check switched off), then a whole lap
    emitter-mtu-edges       [frames, sentinel]: both emitter paths at MTU 1 500, then at 1 600
                            after refresh_mtu()

Hex strings in, hex strings out.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable

from pmtud_relay.capture.afpacket import MAX_FRAME, PacketCapture
from pmtud_relay.emit import l2
from tests.support.ns_programs import bounded


def collect(cap: PacketCapture, sentinel: bytes, seconds: float = 3.0) -> list[tuple[str, int]]:
    """(hex, pkttype) of what ``cap`` hands on until ``sentinel`` arrives (not returned); exits
    with an error if it does not arrive within ``seconds``."""
    got: list[tuple[str, int]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if select.select([cap], [], [], 0.05)[0]:
            for data, pkttype in cap.drain():
                if data == sentinel:
                    return got
                got.append((data.hex(), pkttype))
    raise SystemExit(f"sentinel never arrived; got {len(got)} frames")


def _sender(sndbuf: int = 0) -> socket.socket:
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    if sndbuf:
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    tx.bind(("pmr1", 0))
    return tx


def both_captures(args: list) -> dict:
    sent, sentinel = [bytes.fromhex(h) for h in args[0]], bytes.fromhex(args[1])
    ring = PacketCapture("pmr0", ring=True)
    sock = PacketCapture("pmr0", ring=False)
    assert ring.ring is not None and sock.ring is None
    tx = _sender()
    for frame in [*sent, sentinel]:
        tx.send(frame)
    out = {"ring": collect(ring, sentinel), "sock": collect(sock, sentinel),
           "counters": [ring.counters(), sock.counters()]}
    ring.close()
    sock.close()
    tx.close()
    return out


def oversized(args: list) -> dict:
    sent, sentinel = [bytes.fromhex(h) for h in args[0]], bytes.fromhex(args[1])
    ring = PacketCapture("pmr0", ring=True)
    sock = PacketCapture("pmr0", ring=False)
    tx = _sender(sndbuf=1 << 20)
    for frame in [*sent, sentinel]:
        tx.send(frame)
    out = {"ring": [h for h, _ in collect(ring, sentinel)], "ring_truncated": ring.truncated,
           "sock": [h for h, _ in collect(sock, sentinel)], "sock_truncated": sock.truncated,
           "max_frame": MAX_FRAME}
    ring.close()
    sock.close()
    tx.close()
    return out


def socket_emitter(args: list) -> dict:
    sent = [bytes.fromhex(h) for h in args[0]]
    too_big, sentinel = bytes.fromhex(args[1]), bytes.fromhex(args[2])
    cap = PacketCapture("pmr0")
    em = l2.L2Emitter("pmr1", ring=False)
    assert em.ring is None
    results = []
    for i, frame in enumerate(sent):  # alternately send() and queue(): both are one send() here
        results.append(em.send(frame) if i % 2 else em.queue(frame))
    results.append(em.flush())
    too_big_results = [em.send(too_big), em.queue(too_big)]
    results.append(em.send(sentinel))
    out = {"results": results, "too_big": too_big_results, "got": collect(cap, sentinel), "mac": em.mac.hex()}
    em.close()
    cap.close()
    return out


def ring_emitter_large(args: list) -> dict:
    sent, sentinel = [bytes.fromhex(h) for h in args[0]], bytes.fromhex(args[1])
    cap = PacketCapture("pmr0", ring=False)  # the socket path hands on frames of up to 64 KiB
    em = l2.L2Emitter("pmr1", ring=True)
    assert em.ring is not None
    results = [em.queue(frame) for frame in sent]
    results.append(em.flush())
    results.append(em.send(sentinel))
    out = {"results": results, "got": collect(cap, sentinel), "direct_used": em._direct is not None,
           "slot": em._slot, "max_ring_frame": l2.MAX_RING_FRAME}
    em.close()
    cap.close()
    return out


def ring_emitter_over_mtu(args: list) -> dict:
    template, over_mtu = bytes.fromhex(args[0]), [bytes.fromhex(h) for h in args[1]]
    sentinel, bypass = bytes.fromhex(args[2]), args[3]
    cap = PacketCapture("pmr0", ring=True)  # 512 slots: room for a whole lap of the emitter's 128
    em = l2.L2Emitter("pmr1", ring=True)
    assert em.ring is not None and em._slots == 128
    out: dict = {"max_len": em._max_len}
    if bypass:  # let every frame reach the kernel, to see what tpacket_snd does with it
        em._max_len = 1 << 20
    ring = em.ring

    def status(slot: int) -> int:
        return struct.unpack_from("=I", ring, slot * l2.RING_FRAME_SIZE)[0]

    def small(i: int) -> bytes:
        return template[:-2] + i.to_bytes(2, "big")

    out["queue"], out["flush"] = [], []
    # A small frame, the frames too large for the MTU, a small frame.
    for frame in [small(0), *over_mtu, small(1)]:
        out["queue"].append(em.queue(frame))
    out["flush"].append(em.flush())
    out["status_after_flush"] = [status(s) for s in range(4)]
    # A lap: back over the slots where the refused frames were (if they took any).
    for i in range(2, 2 + em._slots - 4 + 3):
        out["queue"].append(em.queue(small(i)))
    out["flush"].append(em.flush())
    out["slot"] = em._slot
    em.send(sentinel)
    out["got"] = [h for h, _ in collect(cap, sentinel)]
    out["cap_counters"] = cap.counters()
    em.close()
    cap.close()
    return out


def emitter_mtu_edges(args: list) -> dict:
    frames, sentinel = [bytes.fromhex(h) for h in args[0]], bytes.fromhex(args[1])
    cap = PacketCapture("pmr0", ring=True)
    out = {}
    for ring in (True, False):
        em = l2.L2Emitter("pmr1", ring=ring)
        subprocess.run(["ip", "link", "set", "pmr1", "mtu", "1500"], check=True, timeout=10)
        em.refresh_mtu()
        before = [em.send(f) for f in frames]
        subprocess.run(["ip", "link", "set", "pmr1", "mtu", "1600"], check=True, timeout=10)
        em.refresh_mtu()  # what the daemon does on the interface's link event
        after = [em.send(f) for f in frames]
        em.send(sentinel)
        out[str(ring)] = {"before": before, "after": after, "got": [h for h, _ in collect(cap, sentinel)]}
        em.close()
    cap.close()
    return out


COMMANDS: dict[str, Callable[[list], dict]] = {
    "both-captures": both_captures, "oversized": oversized, "socket-emitter": socket_emitter,
    "ring-emitter-large": ring_emitter_large, "ring-emitter-over-mtu": ring_emitter_over_mtu,
    "emitter-mtu-edges": emitter_mtu_edges,
}


def main(argv: list[str]) -> int:
    bounded(45)  # the tests wait 20-40 s
    json.dump(COMMANDS[argv[0]](json.load(sys.stdin)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

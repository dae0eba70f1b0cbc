"""The daemon in a :class:`~tests.support.netns.FaultNS`: start and stop it, wait for its log
lines, and check end to end that it still relays (a PTB in on ``v0``, its copy back out)."""

from __future__ import annotations

import re
import select
import socket
import sys
import time

from tests.support import frames as F
from tests.support.netns import RELAY_MAC, FaultNS, in_ns, program, wait_ready
from tests.support.relays import stop_relays

_port = [50000]


def relays(ns: FaultNS, wire: str = "v0", timeout: float = 5.0, dst_mac: str = RELAY_MAC, **ptb) -> bool:
    """Inject one fresh IPv4 PTB (a new flow: never a duplicate; ``ptb``: more F.ptb_v4 fields)
    on ``wire``, unicast to ``dst_mac``; True if its broadcast copy comes back, unchanged but for
    the MACs, within ``timeout``."""
    _port[0] += 1
    frame = F.ptb_v4(dst_mac=dst_mac, dport=_port[0], **ptb)

    def sockets():
        watch = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        watch.bind((wire, 0))
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        tx.bind((wire, 0))
        return watch, tx

    watch, tx = in_ns(ns.name, sockets)
    try:
        tx.send(frame)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([watch], [], [], 0.1)[0]:
                data, addr = watch.recvfrom(65536)
                if addr[2] != socket.PACKET_OUTGOING and data[:6] == b"\xff" * 6 and data[12:] == frame[12:]:
                    return True
        return False
    finally:
        watch.close()
        tx.close()


def count(proc, pattern: str) -> int:
    rx = re.compile(pattern)
    return sum(1 for line in proc.lines("stderr") if rx.search(line))


def wait_count(proc, pattern: str, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while count(proc, pattern) < n:
        assert proc.poll() is None, f"daemon exited {proc.poll()}:\n{proc.stderr}"
        assert time.monotonic() < deadline, f"no {n} x /{pattern}/ within {timeout}s:\n{proc.stderr}"
        time.sleep(0.05)


def start(ns: FaultNS, *extra: str, loop: str = "uvloop", iface: str = "v1"):
    """``pmtud-relay run -i IFACE --vip F.VIP4`` in ``ns`` (``loop="asyncio"``: without uvloop),
    ready."""
    # Without uvloop, the stdlib selector loop reports a socket error as "readable" where
    # uvloop stops the reader; both must end up re-bound.
    head = [sys.executable, "-m", "pmtud_relay"] if loop == "uvloop" else program("relay_without_uvloop")
    proc = ns.spawn([*head, "run", "-i", iface, "--vip", F.VIP4, "--config", "",
                     "--log-level", "info", *extra], node="relay")
    wait_ready(proc)
    return proc


def stop(proc) -> None:
    stop_relays({"relay": proc}, timeout=10)

"""UDP senders bench/peer_junk.py runs inside the lab's namespaces (stdlib only, run by path:
``python bench/ns_senders.py COMMAND ARGS``).

    junk HOST PORT SECONDS HEAD   datagrams of HEAD (hex) + 150 random bytes to HOST:PORT, as fast
                                  as one process can, for SECONDS; prints "SENT FAILED ELAPSED"
                                  (sendto() calls accepted, refused, wall seconds)
    send HOST PORT HEX...         each HEX datagram once to HOST:PORT, 10 ms apart
"""

from __future__ import annotations

import os
import socket
import sys
import time


def junk(host: str, port: int, seconds: float, head: bytes) -> tuple[int, int, float]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    bodies = [head + os.urandom(150) for _ in range(1024)]
    sent = failed = 0
    start = time.monotonic()
    end = start + seconds
    sendto = s.sendto  # the loop is the figure measured: no attribute look-up per datagram
    dst = (host, port)
    while True:
        for b in bodies:
            try:
                sendto(b, dst)
                sent += 1
            except OSError:
                failed += 1
        if time.monotonic() >= end:
            break
    return sent, failed, time.monotonic() - start


def send(host: str, port: int, datagrams: list[bytes]) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for d in datagrams:
        s.sendto(d, (host, port))
        time.sleep(0.01)


def main(argv: list[str]) -> int:
    command, host, port, rest = argv[0], argv[1], int(argv[2]), argv[3:]
    if command == "junk":
        sent, failed, elapsed = junk(host, port, float(rest[0]), bytes.fromhex(rest[1]))
        print(sent, failed, elapsed)
    elif command == "send":
        send(host, port, [bytes.fromhex(h) for h in rest])
    else:
        print(f"unknown command {command!r} (junk, send)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

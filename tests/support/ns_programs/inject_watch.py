"""Inject a frame on ``lo`` and report the first broadcast copy coming back (root, in the
namespace): ``inject_watch HEX SECONDS [VIP PORT]``; with VIP PORT a UDP socket is held on
VIP:PORT meanwhile (a local owner of the quoted flow). Prints ``{"copy": HEX or null}``."""

from __future__ import annotations

import json
import select
import socket
import sys
import time

from tests.support.ns_programs import bounded


def main(argv: list[str]) -> int:
    bounded(float(argv[1]) + 10)
    frame = bytes.fromhex(argv[0])
    held = None
    if len(argv) > 2:
        held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        held.bind((argv[2], int(argv[3])))
    watch = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    watch.bind(("lo", 0))
    inject = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    inject.bind(("lo", 0))
    inject.send(frame)
    inject.close()
    copy = None
    deadline = time.monotonic() + float(argv[1])
    while copy is None and time.monotonic() < deadline:
        if select.select([watch], [], [], 0.2)[0]:
            data, addr = watch.recvfrom(65536)
            if data[:6] == b"\xff" * 6 and data[12:] == frame[12:] and addr[2] != socket.PACKET_OUTGOING:
                copy = data
    print(json.dumps({"copy": copy.hex() if copy is not None else None}))
    if held is not None:
        held.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

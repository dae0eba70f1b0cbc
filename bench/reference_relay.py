"""The minimal reference relay: AF_PACKET receive, no checks, re-send to broadcast.

A naive per-packet loop, the yardstick every benchmark run measures next to pmtud-relay.
Usage: reference_relay.py IFNAME [MAX_SECONDS]  (exits by itself after MAX_SECONDS, default 900).
"""
import signal
import socket
import sys

ETH_P_ALL = 0x0003
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
sock.setsockopt(263, 23, 1)  # SOL_PACKET, PACKET_IGNORE_OUTGOING: never see its own copies
sock.bind((sys.argv[1], ETH_P_ALL))
prefix = b"\xff" * 6 + sock.getsockname()[4]  # broadcast, from this interface's MAC
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
signal.alarm(int(sys.argv[2]) if len(sys.argv) > 2 else 900)  # bounded in time
print("ready", file=sys.stderr, flush=True)
recv, send = sock.recv, sock.send
while True:
    frame = recv(65536)
    send(prefix + frame[12:])

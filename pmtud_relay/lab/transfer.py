"""TCP transfers through the lab: ``python -m pmtud_relay.lab.transfer server|client ...``.

server: listens on the VIPs (IPv4 and IPv6); per connection it sends its identity line (``s2\\n``)
        as one small segment (TCP_NODELAY), waits for ``go\\n`` (or ``go N\\n`` to ask for N bytes),
        sends SIZE bytes, half-closes, waits for the client to close. Prints ``listening ...`` on
        stdout once bound; exits 0 on SIGTERM/SIGINT.
client: opens K concurrent flows (each its own ephemeral port) to the VIP of one family; per
        flow reads the identity line, sends ``go N``, reads until N bytes or the per-flow timeout;
        prints one JSON document ``{"family":..,"flows":[{...}, ...]}`` on stdout.
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass

DEFAULT_PORT = 8080
DEFAULT_SIZE = 262144
_CHUNK = 65536


@dataclass
class FlowResult:
    index: int
    server: str | None      # identity line sent by the server ("s2"), None if never read
    client_port: int | None  # the client's ephemeral port (= quoted dport in PTBs)
    bytes: int
    completed: bool
    seconds: float
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_client_output(text: str) -> list[FlowResult]:
    doc = json.loads(text)
    return [FlowResult(**f) for f in doc["flows"]]


# --- server ---------------------------------------------------------------------------------
def _recv_line(sock: socket.socket, limit: int = 256) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)   # byte-wise: never swallow anything past the newline
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            break
    return buf


def _serve_conn(conn: socket.socket, name: str, size: int, io_timeout: float) -> None:
    payload = memoryview(b"x" * _CHUNK)
    try:
        conn.settimeout(io_timeout)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(f"{name}\n".encode())
        line = _recv_line(conn).strip().split()
        if not line or line[0] != b"go":
            return
        want = int(line[1]) if len(line) > 1 and line[1].isdigit() else size
        left = want
        while left > 0:
            n = min(left, _CHUNK)
            conn.sendall(payload[:n])
            left -= n
        conn.shutdown(socket.SHUT_WR)
        # wait for the client's close so close() never discards queued data with a RST
        while conn.recv(4096):
            pass
    except OSError:
        pass
    finally:
        conn.close()


def run_server(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def _stop(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sel = selectors.DefaultSelector()
    listeners = []
    for fam, addr in ((socket.AF_INET, args.vip4), (socket.AF_INET6, args.vip6)):
        if not addr:
            continue
        ls = socket.socket(fam, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        ls.bind((addr, args.port))
        ls.listen(256)
        ls.setblocking(False)
        sel.register(ls, selectors.EVENT_READ)
        listeners.append(ls)
    print(f"listening name={args.name} port={args.port} "
          + " ".join(str(ls.getsockname()[0]) for ls in listeners), flush=True)
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.2):
            try:
                conn, _peer = key.fileobj.accept()  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                continue
            conn.setblocking(True)
            threading.Thread(target=_serve_conn, args=(conn, args.name, args.size,
                                                       args.io_timeout), daemon=True).start()
    for ls in listeners:
        ls.close()
    return 0


# --- client ---------------------------------------------------------------------------------
def _flow(index: int, family: int, vip: str, port: int, size: int, timeout: float,
          start: threading.Event) -> FlowResult:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    res = FlowResult(index=index, server=None, client_port=None, bytes=0, completed=False,
                     seconds=0.0)
    start.wait(5.0)
    t0 = time.monotonic()
    deadline = t0 + timeout
    s = socket.socket(af, socket.SOCK_STREAM)
    try:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        s.connect((vip, port))
        res.client_port = s.getsockname()[1]
        ident = b""
        while not ident.endswith(b"\n"):
            s.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = s.recv(64)
            if not chunk:
                raise ConnectionError("closed before identity line")
            ident += chunk
        res.server = ident.decode("ascii", "replace").strip()
        s.sendall(f"go {size}\n".encode())
        got = 0
        while got < size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            s.settimeout(left)
            chunk = s.recv(min(262144, size - got))
            if not chunk:
                break
            got += len(chunk)
            res.bytes = got
        res.completed = got >= size
        if not res.completed and res.error is None:
            res.error = "eof"
    except (OSError, ValueError) as e:
        res.error = "timed out" if isinstance(e, (TimeoutError, socket.timeout)) \
            else f"{type(e).__name__}: {e}"
    finally:
        res.seconds = round(time.monotonic() - t0, 4)
        if not res.completed:
            # RST: stop the server retransmitting into the black hole after we give up
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
        s.close()
    return res


def run_client(args: argparse.Namespace) -> int:
    start = threading.Event()
    results: list[FlowResult | None] = [None] * args.flows
    threads = []

    def worker(i: int) -> None:
        results[i] = _flow(i, args.family, args.vip, args.port, args.size, args.timeout, start)

    for i in range(args.flows):
        t = threading.Thread(target=worker, args=(i,), daemon=True)
        t.start()
        threads.append(t)
    start.set()
    for t in threads:
        t.join(args.timeout + 5.0)
    flows = [r if r is not None else FlowResult(i, None, None, 0, False, args.timeout, "hung")
             for i, r in enumerate(results)]
    json.dump({"family": args.family, "vip": args.vip, "port": args.port, "size": args.size,
               "timeout": args.timeout, "flows": [f.to_dict() for f in flows]}, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pmtud_relay.lab.transfer")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("server")
    sp.add_argument("--name", required=True)
    sp.add_argument("--vip4", default="192.0.2.10")
    sp.add_argument("--vip6", default="2001:db8:ffff::10")
    sp.add_argument("--port", type=int, default=DEFAULT_PORT)
    sp.add_argument("--size", type=int, default=DEFAULT_SIZE)
    sp.add_argument("--io-timeout", type=float, default=30.0)
    cp = sub.add_parser("client")
    cp.add_argument("--family", type=int, choices=(4, 6), required=True)
    cp.add_argument("--vip", required=True)
    cp.add_argument("--port", type=int, default=DEFAULT_PORT)
    cp.add_argument("--flows", type=int, default=12)
    cp.add_argument("--size", type=int, default=DEFAULT_SIZE)
    cp.add_argument("--timeout", type=float, default=3.0)
    args = ap.parse_args(argv)
    return run_server(args) if args.cmd == "server" else run_client(args)


if __name__ == "__main__":
    sys.exit(main())

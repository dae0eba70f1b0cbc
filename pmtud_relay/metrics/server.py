"""The HTTP listener: /metrics, /healthz and /readyz on the daemon's own asyncio loop.

:func:`bind` opens the listening socket synchronously, so "address in use" is reported at
start-up naming ``metrics_address`` (:class:`MetricsError`); :class:`MetricsServer` answers
one request per connection.
"""

from __future__ import annotations

import asyncio
import errno as _errno
import socket
from typing import Callable

from prometheus_client import CollectorRegistry  # type: ignore[import-not-found, unused-ignore]
from prometheus_client.exposition import choose_encoder  # type: ignore[import-not-found, unused-ignore]


class MetricsError(RuntimeError):
    """The metrics listener cannot start; the message names metrics_address."""


# -- the HTTP listener ----------------------------------------------------------------------


def bind(address: str) -> socket.socket:
    """Open the listening socket for ``metrics_address`` (``HOST:PORT``, ``[V6]:PORT`` or
    ``:PORT`` for every address). Raises :class:`MetricsError` naming the address."""
    from pmtud_relay.hostport import split_address

    try:
        host, port = split_address(address, allow_zero=True)
    except ValueError as exc:
        raise MetricsError(f"metrics_address: {exc}") from None
    try:
        if not host:
            if socket.has_dualstack_ipv6():
                sock = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
            else:
                sock = socket.create_server(("0.0.0.0", port))
        else:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host, port), family=fam)
    except OSError as exc:
        why = {
            _errno.EADDRINUSE: "address already in use (another process listens there; choose "
            "another metrics_address, or \"\" to disable the listener)",
            _errno.EADDRNOTAVAIL: "not an address of this host",
            _errno.EACCES: "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        raise MetricsError(f"metrics_address {address}: cannot listen: {why}") from None
    sock.setblocking(False)
    return sock


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class MetricsServer:
    """HTTP/1.1, one request per connection, on the running asyncio loop."""

    MAX_CONNECTIONS = 32
    REQUEST_TIMEOUT = 5.0

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], bool],
                 not_ready_reason: Callable[[], str | None] | None = None):
        self.registry = registry
        self.ready = ready
        self.not_ready_reason = not_ready_reason  # the text after "not ready: " in a 503
        self._server: asyncio.base_events.Server | None = None
        self._active = 0
        self._tasks: set[asyncio.Task] = set()
        self.requests = 0

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._handle, sock=sock, limit=16384)

    @property
    def address(self) -> tuple:
        assert self._server is not None
        return self._server.sockets[0].getsockname()

    async def close(self) -> None:
        """Stop listening; give requests in flight a moment to finish, then cancel them."""
        if self._server is None:
            return
        self._server.close()
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=1.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._active += 1
        try:
            if self._active > self.MAX_CONNECTIONS:
                return
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.REQUEST_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
                return
            self.requests += 1
            status, ctype, body, head_only = self._respond(head)
            header = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(header if head_only else header + body)
            await asyncio.wait_for(writer.drain(), self.REQUEST_TIMEOUT)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        except asyncio.CancelledError:
            # A leaf task cancelled at shutdown: end quietly (Python 3.11's stream callback
            # logs a traceback for a handler task that ends cancelled).
            pass
        finally:
            self._active -= 1
            if task is not None:
                self._tasks.discard(task)
            writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass

    def _respond(self, head: bytes) -> tuple[int, str, bytes, bool]:
        text = "text/plain; charset=utf-8"
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, text, b"bad request\n", False
        method, target = parts[0], parts[1]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            return 405, text, b"method not allowed\n", False
        head_only = method == "HEAD"
        path = target.split("?", 1)[0]
        if path == "/metrics":
            encoder, ctype = choose_encoder(headers.get("accept", ""))
            return 200, ctype, encoder(self.registry), head_only
        if path == "/healthz":
            return 200, text, b"ok\n", head_only
        if path == "/readyz":
            if self.ready():
                return 200, text, b"ready\n", head_only
            why = (self.not_ready_reason() if self.not_ready_reason is not None else None) or "capture not open yet"
            return 503, text, f"not ready: {why}\n".encode(), head_only
        if path == "/":
            return 200, "text/html; charset=utf-8", (
                b"<html><body><h1>pmtud-relay</h1><a href=\"/metrics\">/metrics</a> "
                b"<a href=\"/healthz\">/healthz</a> <a href=\"/readyz\">/readyz</a></body></html>\n"
            ), head_only
        return 404, text, b"not found\n", head_only

"""Prometheus metrics, read at scrape time from plain counters; /metrics, /healthz, /readyz.

The packet path never touches a prometheus_client object. The daemon bumps plain integers
in a :class:`Stats` (dict keyed by ``(interface, family, reason)``, one ``dict.get`` + store
per frame) and a :class:`LatencyHistogram` (a list of bucket counts); a custom collector,
:class:`RelayCollector`, turns them into metric families only when Prometheus scrapes.
The collector lives in its own :class:`~prometheus_client.CollectorRegistry`, never the
library's global default one.

Labels are bounded: interface names, the address family, the closed :class:`Reason` enum,
the limiter bucket, errno names. Never an IP address or a port.

:class:`MetricsServer` is a minimal HTTP/1.1 server on the daemon's own asyncio loop:
``/metrics`` (Prometheus text or OpenMetrics by ``Accept``), ``/healthz`` (200 while the
loop answers) and ``/readyz`` (200 once capture is open on every configured interface, 503
with the reason before and while it waits for an interface). :func:`bind` opens
the listening socket synchronously so "address in use" is reported at start-up, naming
``metrics_address``.
"""

from __future__ import annotations

import asyncio
import bisect
import errno as _errno
import os
import platform
import resource
import socket
import struct
import time
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import choose_encoder

from pmtud_relay import __version__
from pmtud_relay.core.reasons import PARSE_REASONS, Reason

PREFIX = "pmtud_relay"

#: Processing latency buckets (seconds): 5 µs … 100 ms.
LATENCY_BUCKETS = (
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)

FAMILY_LABEL = {4: "ipv4", 6: "ipv6", 0: "unknown"}
_DROP_REASONS = tuple(r for r in Reason if r is not Reason.RELAYED)


class MetricsError(RuntimeError):
    """The metrics listener cannot start; the message names metrics_address."""


# -- plain counters, written on the packet path ----------------------------------------------


class LatencyHistogram:
    """A histogram without locks or objects per observation: bucket counts in a list.

    The daemon observes once per capture batch (see docs/metrics.md), not once per frame."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last: above the highest bound
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class Stats:
    """Everything the collector reports, as plain Python values the daemon updates.

    ``decisions[(ifname, family, reason)]``: family is 4, 6, or 0 when the frame did not
    parse as a PTB. ``send_errors[(ifname, errno_name)]``. ``overruns[ifname]``: frames the
    kernel dropped before the daemon read them; ``overrun_probes`` are polled at scrape time
    and added to it. ``capture_counters[ifname]`` returns an open capture's own cumulative
    counts ({kind: n}); :meth:`retire_capture` keeps a closed one's totals.
    """

    __slots__ = (
        "interfaces", "decisions", "send_errors", "overruns", "overrun_probes", "capture_counters",
        "_capture_retired", "latency", "internal_errors", "reloads", "last_reload_success", "ready", "started",
        "waiting",
    )

    def __init__(self, interfaces: Iterable[str] = ()):
        self.interfaces: list[str] = list(interfaces)  # zero-valued series are exported for these
        self.decisions: dict[tuple[str, int, Reason], int] = {}
        self.send_errors: dict[tuple[str, str], int] = {}
        self.overruns: dict[str, int] = {}
        self.overrun_probes: dict[str, Callable[[], int]] = {}
        self.capture_counters: dict[str, Callable[[], dict[str, int]]] = {}
        self._capture_retired: dict[tuple[str, str], int] = {}
        self.latency = LatencyHistogram()
        self.internal_errors = 0
        self.reloads = {"success": 0, "failure": 0}
        self.last_reload_success = time.time()  # the start-up load counts as one
        self.ready = False  # start-up done (sockets open, event loop serving)
        self.started = time.time()
        #: Configured interfaces with no open capture (absent, down, renamed away): the daemon
        #: binds each as soon as an interface of that name is up. Shared with the daemon.
        self.waiting: set[str] = set()

    def not_ready_reason(self) -> str | None:
        """Why /readyz says 503, or None when ready: still starting, or waiting for interfaces."""
        if not self.ready:
            return "capture not open yet"
        if self.waiting:
            return "waiting for interface " + ",".join(sorted(self.waiting)) + " (absent or down)"
        return None

    # Helpers; the hot path may inline the dict update instead of calling count().
    def count(self, ifname: str, decision) -> None:
        ptb = decision.ptb
        key = (ifname, ptb.family if ptb is not None else 0, decision.reason)
        d = self.decisions
        d[key] = d.get(key, 0) + 1

    def send_error(self, ifname: str, err: int) -> str:
        name = _errno.errorcode.get(err, "E" + str(err) if err > 0 else "EUNKNOWN")
        key = (ifname, name)
        self.send_errors[key] = self.send_errors.get(key, 0) + 1
        return name

    def reloaded(self, ok: bool) -> None:
        self.reloads["success" if ok else "failure"] += 1
        if ok:
            self.last_reload_success = time.time()

    def poll_overruns(self) -> None:
        for ifname, probe in list(self.overrun_probes.items()):
            try:
                n = probe()
            except OSError:
                continue
            if n:
                self.overruns[ifname] = self.overruns.get(ifname, 0) + n

    def capture_totals(self) -> dict[tuple[str, str], int]:
        """{(ifname, kind): n} over every capture an interface has had (one per re-binding)."""
        out = dict(self._capture_retired)
        for ifname, read in list(self.capture_counters.items()):
            for kind, n in read().items():
                out[(ifname, kind)] = out.get((ifname, kind), 0) + n
        return out

    def retire_capture(self, ifname: str) -> None:
        """The capture of ``ifname`` is closing: keep what it counted (the next one starts at 0)."""
        read = self.capture_counters.pop(ifname, None)
        if read is not None:
            retired = self._capture_retired
            for kind, n in read().items():
                retired[(ifname, kind)] = retired.get((ifname, kind), 0) + n

    def totals(self) -> dict[Reason, int]:
        out = dict.fromkeys(Reason, 0)
        for (_i, _f, reason), n in self.decisions.copy().items():
            out[reason] += n
        return out


SOL_PACKET = 263
PACKET_STATISTICS = 6
_TPACKET_STATS = struct.Struct("=II")  # struct tpacket_stats {tp_packets, tp_drops}


def afpacket_drops(sock: socket.socket) -> int:
    """Frames an AF_PACKET socket dropped (receive buffer full) since the previous call.

    PACKET_STATISTICS resets the kernel's counters on every read, so call it from one place
    only (:meth:`Stats.poll_overruns`).
    """
    raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
    _packets, drops = _TPACKET_STATS.unpack(raw[: _TPACKET_STATS.size])
    return drops


def delta_probe(total: Callable[[], int]) -> Callable[[], int]:
    """Turn a cumulative counter (e.g. ``lambda: nflog.lost``) into an overrun probe that
    returns what was added since the previous call."""
    last = [total()]

    def probe() -> int:
        now = total()
        delta, last[0] = now - last[0], now
        return max(delta, 0)

    return probe


# -- the collector --------------------------------------------------------------------------


class RelayCollector:
    """Builds metric families from a :class:`Stats` and the live relay at scrape time.

    ``relay`` returns the daemon's current :class:`pmtud_relay.core.Relay` (or None); its
    dedup table, rate limiter and policy are read for the table-size gauges.
    ``log_dropped`` returns the count of log lines dropped by the non-blocking log writer.
    """

    def __init__(self, stats: Stats, relay: Callable[[], object] | None = None,
                 log_dropped: Callable[[], int] | None = None, version: str = __version__):
        self.stats = stats
        self.relay = relay or (lambda: None)
        self.log_dropped = log_dropped
        self.version = version

    def describe(self):
        return []  # registration must not run collect()

    def collect(self):
        s = self.stats
        s.poll_overruns()
        decisions = s.decisions.copy()  # one C-level copy: safe against concurrent updates
        p = PREFIX

        received = CounterMetricFamily(f"{p}_ptb_received", "Frames the capture delivered (PTB candidates), "
                                       "by interface and address family; = relayed + dropped.",
                                       labels=["interface", "family"])
        relayed = CounterMetricFamily(f"{p}_ptb_relayed", "PTBs relayed (copies sent, or that "
                                      "would be sent in dry-run).", labels=["interface", "family"])
        dropped = CounterMetricFamily(f"{p}_ptb_dropped", "Frames not relayed, by reason "
                                      "(the closed set of pmtud_relay.core.reasons.Reason).",
                                      labels=["interface", "family", "reason"])
        rx: dict[tuple[str, str], int] = {}
        rel: dict[tuple[str, str], int] = {}
        drop: dict[tuple[str, str, str], int] = {}
        for ifname in s.interfaces:
            for fam in ("ipv4", "ipv6"):
                rx[(ifname, fam)] = 0
                rel[(ifname, fam)] = 0
            for reason in _DROP_REASONS:
                fams = ("unknown",) if reason in PARSE_REASONS else ("ipv4", "ipv6")
                for fam in fams:
                    drop[(ifname, fam, reason.value)] = 0
        limited = {"source": 0, "global": 0}
        deduplicated = 0
        for (ifname, family, reason), n in decisions.items():
            fam = FAMILY_LABEL.get(family, "unknown")
            rx[(ifname, fam)] = rx.get((ifname, fam), 0) + n
            if reason is Reason.RELAYED:
                rel[(ifname, fam)] = rel.get((ifname, fam), 0) + n
                continue
            drop[(ifname, fam, reason.value)] = drop.get((ifname, fam, reason.value), 0) + n
            if reason is Reason.RATE_LIMITED_SOURCE:
                limited["source"] += n
            elif reason is Reason.RATE_LIMITED_GLOBAL:
                limited["global"] += n
            elif reason is Reason.DUPLICATE:
                deduplicated += n
        for (ifname, fam), n in sorted(rx.items()):
            received.add_metric([ifname, fam], n)
        for (ifname, fam), n in sorted(rel.items()):
            relayed.add_metric([ifname, fam], n)
        for labels, n in sorted(drop.items()):
            dropped.add_metric(list(labels), n)
        yield received
        yield relayed
        yield dropped

        rl = CounterMetricFamily(f"{p}_ptb_rate_limited", "PTBs dropped by a rate limit, by bucket "
                                 "(source: per sending router; global: all relayed PTBs).", labels=["bucket"])
        for bucket in ("source", "global"):
            rl.add_metric([bucket], limited[bucket])
        yield rl
        yield CounterMetricFamily(f"{p}_ptb_deduplicated", "PTBs dropped as duplicates of one relayed "
                                  "within dedup_window.", value=deduplicated)

        se = CounterMetricFamily(f"{p}_send_errors", "Copies the kernel refused to send, by "
                                 "interface and errno name.", labels=["interface", "errno"])
        for (ifname, name), n in sorted(s.send_errors.copy().items()):
            se.add_metric([ifname, name], n)
        yield se
        ov = CounterMetricFamily(f"{p}_capture_overruns", "Frames the kernel dropped before the "
                                 "daemon read them (capture buffer full).", labels=["interface"])
        overruns = dict.fromkeys(s.interfaces, 0)
        overruns.update(s.overruns)
        for ifname, n in sorted(overruns.items()):
            ov.add_metric([ifname], n)
        yield ov
        cf = CounterMetricFamily(f"{p}_capture_faults", "AF_PACKET capture events that are not PTB "
                                 "decisions: frames larger than a ring slot (truncated) and ring "
                                 "resynchronisations (ring_resync: the reader's slot stayed empty while "
                                 "later slots held frames).", labels=["interface", "kind"])
        for (ifname, kind), n in sorted(s.capture_totals().items()):
            cf.add_metric([ifname, kind], n)
        yield cf

        h = s.latency
        yield HistogramMetricFamily(f"{p}_processing_seconds", "Time from the end of a capture read "
                                    "to the last decision (and send) of that batch: the latency of "
                                    "the batch's last frame, one observation per wake-up.",
                                    buckets=h.cumulative(), sum_value=h.sum)

        relay = self.relay()
        if relay is not None:
            yield GaugeMetricFamily(f"{p}_rate_limit_sources", "Sending routers tracked by the "
                                    "per-source rate limiter.", value=len(relay.limiter))
            yield GaugeMetricFamily(f"{p}_dedup_keys", "Keys in the dedup table.", value=len(relay.dedup))
            ev = CounterMetricFamily(f"{p}_table_evictions", "Entries evicted from a full table "
                                     "before they expired (since the table was last rebuilt).",
                                     labels=["table"])
            ev.add_metric(["dedup"], relay.dedup.evictions)
            ev.add_metric(["rate_limit_sources"], relay.limiter.evictions)
            ev.add_metric(["known_sources"], relay.limiter.known_evictions)
            yield ev
            yield GaugeMetricFamily(f"{p}_known_sources", "Sending routers known for the global "
                                    "reserve (had a PTB relayed recently).", value=relay.limiter.known_sources())
            yield CounterMetricFamily(f"{p}_ptb_relayed_from_reserve", "PTBs relayed with a token of "
                                      "the global reserve (the general part was empty; since the limiter "
                                      "was last rebuilt); part of ptb_relayed.", value=relay.limiter.reserve_relayed)
            vips = GaugeMetricFamily(f"{p}_vips", "Service addresses or prefixes in effect, by family "
                                     "(0: every PTB about that family is dropped as not_vip).", labels=["family"])
            networks = relay.policy.vips.networks
            for version, fam in ((4, "ipv4"), (6, "ipv6")):
                vips.add_metric([fam], sum(1 for n in networks if n.version == version))
            yield vips
            shunner = relay.shunner
            yield GaugeMetricFamily(f"{p}_kernel_held_sources", "Outer sources whose frames the AF_PACKET "
                                    "captures drop in the kernel now: each flooded far past its own rate "
                                    "limit (the shun list; always 0 with NFLOG capture).", value=len(shunner))
            yield CounterMetricFamily(f"{p}_kernel_holds", "Times a flooding source was put on the shun "
                                      "list (dropped in the kernel for a while).", value=shunner.shuns)

        yield CounterMetricFamily(f"{p}_internal_errors", "Exceptions caught on the packet path "
                                  "(the frame was skipped).", value=s.internal_errors)
        cr = CounterMetricFamily(f"{p}_config_reloads", "SIGHUP configuration reloads, by result.",
                                 labels=["result"])
        for result in ("success", "failure"):
            cr.add_metric([result], s.reloads[result])
        yield cr
        yield GaugeMetricFamily(f"{p}_config_last_reload_success_timestamp_seconds", "Unix time of "
                                "the last successful configuration load.", value=s.last_reload_success)
        if self.log_dropped is not None:
            yield CounterMetricFamily(f"{p}_log_lines_dropped", "Log lines dropped because stderr "
                                      "could not keep up.", value=self.log_dropped())
        yield GaugeMetricFamily(f"{p}_ready", "1 once start-up is done and every configured interface "
                                "is bound (what /readyz answers).", value=0 if s.not_ready_reason() else 1)
        yield GaugeMetricFamily(f"{p}_interfaces_waiting", "Configured interfaces the daemon waits for "
                                "(no such interface, or down): bound as soon as they are up.",
                                value=len(s.waiting))
        yield GaugeMetricFamily(f"{p}_start_time_seconds", "Unix time the daemon started.", value=s.started)
        info = InfoMetricFamily(f"{p}_build", "Version of pmtud-relay and of its Python.")
        info.add_metric([], {"version": self.version, "python": platform.python_version()})
        yield info


class SelfProcessCollector:
    """The standard ``process_*`` metrics from the process's own entries only.

    prometheus_client's ProcessCollector needs ``/proc/stat`` (boot time) and exports nothing
    when it is hidden, as systemd's ``ProcSubset=pid`` does. This one reads ``os.times()``,
    ``/proc/self/statm``, ``/proc/self/fd`` and the RLIMIT_NOFILE limit, which stay visible.
    """

    def __init__(self, started: float, proc: str = "/proc/self"):
        self.started = started
        self.proc = proc
        self.pagesize = os.sysconf("SC_PAGE_SIZE")

    def describe(self):
        return []

    def collect(self):
        t = os.times()
        yield CounterMetricFamily("process_cpu_seconds", "Total user and system CPU time spent in seconds.",
                                  value=t.user + t.system)
        try:
            with open(os.path.join(self.proc, "statm"), "rb") as f:
                size, resident = (int(x) for x in f.read().split()[:2])
            yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                                    value=size * self.pagesize)
            yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.",
                                    value=resident * self.pagesize)
        except (OSError, ValueError):
            pass
        try:
            yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.",
                                    value=len(os.listdir(os.path.join(self.proc, "fd"))))
        except OSError:
            pass
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:
            yield GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.", value=soft)
        yield GaugeMetricFamily("process_start_time_seconds", "Start time of the process since unix epoch "
                                "in seconds (when the daemon's metrics began).", value=self.started)


def build_registry(stats: Stats, relay: Callable[[], object] | None = None,
                   log_dropped: Callable[[], int] | None = None, process: bool = True) -> CollectorRegistry:
    """A private registry with the relay collector (and process_* metrics unless ``process``
    is false). Never the prometheus_client default registry."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(stats, relay, log_dropped))
    if process:
        registry.register(SelfProcessCollector(stats.started))
    return registry


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
        }.get(exc.errno, exc.strerror or str(exc))
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

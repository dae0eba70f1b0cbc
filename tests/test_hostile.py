"""Hostile input through the daemon's packet path, in process (no sockets, no root):

- each hostile-input drop (MTU below the floor, quoted packet not from a VIP, truncated quote,
  non-first fragment, ICMP about ICMP) has its own counted reason, in the relay's counts and in
  ``pmtud_relay_ptb_dropped_total``, and nothing is sent for it;
- send errors are counted (``pmtud_relay_send_errors_total``), never fatal;
- a flood of 1 M distinct spoofed sources keeps the per-source table and the dedup table at their
  caps (oldest evicted) while legitimate PTBs from other routers keep flowing (deterministic clock);
- the daemon logs through the non-blocking queue handler: a stalled stderr never blocks it.
"""

from __future__ import annotations

import errno
import io
import logging
import logging.handlers
import struct
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import ICMP
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6ExtHdrFragment

from pmtud_relay import logs, metrics
from pmtud_relay.core.policy import Policy, VipSet
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Relay, RelayConfig
from pmtud_relay.daemon import DaemonSettings, Port, RelayDaemon
from tests.support import frames as F
from tests.support.checksum import ones_complement_sum

MAC = F.mac(F.RELAY_MAC)
POLICY = Policy(vips=VipSet([F.VIP4, F.VIP6]))


class FakeCapture:
    """A Capture (pmtud_relay/capture/base.py) fed with bytes: ``batch`` is what the next drain returns."""

    holds_sources = False

    def __init__(self):
        self.batch: list[tuple[bytes, int]] = []
        self.ifname = "eth0"
        self.mac = MAC
        self.ifindex = 7
        self.fd: int | None = None  # a descriptor for the event loop, where serve() runs

    def fileno(self) -> int:
        assert self.fd is not None, "not served by an event loop in this test"
        return self.fd

    def drain(self, limit: int = 256):
        batch, self.batch = self.batch, []
        return batch

    def pending_error(self) -> int:
        return 0

    def counters(self) -> dict[str, int]:
        return {}

    def set_blocked(self, sources) -> None:
        raise AssertionError("holds_sources is False")

    def close(self) -> None:
        pass


class FakeEmitter:
    def __init__(self, error: int = 0):
        self.error = error
        self.sent: list[bytes] = []

    def queue(self, frame: bytes) -> int:
        if not self.error:
            self.sent.append(frame)
        return self.error

    def flush(self) -> int:
        return 0

    def refresh_mtu(self) -> None:
        pass

    def close(self) -> None:
        pass


def daemon_with_port(error: int = 0, **relay_kw) -> tuple[RelayDaemon, Port]:
    relay_kw.setdefault("policy", POLICY)
    d = RelayDaemon(DaemonSettings(interfaces=("eth0",), relay=RelayConfig(**relay_kw), discover_vips=False))
    port = Port("eth0", FakeCapture(), FakeEmitter(error))
    d.ports.append(port)
    return d, port


def feed(d: RelayDaemon, port: Port, frames: list[bytes]) -> None:
    port.capture.batch = [(f, 0) for f in frames]
    d.path.on_readable(port)  # what the event loop calls when the capture is readable


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text as {(sample name, sorted labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def scrape(d: RelayDaemon) -> dict[tuple[str, tuple], float]:
    from prometheus_client import generate_latest

    return samples(generate_latest(metrics.build_registry(d.stats, lambda: d.relay, logs.dropped)).decode())


def scrape_served(d: RelayDaemon, timeout: float = 10.0) -> tuple[str, int, int]:
    """``GET /metrics`` from the daemon's own metrics server: ``d.serve()`` runs (in process, on a
    real listening socket on 127.0.0.1) with the registry *it* builds, is scraped once over HTTP,
    then stopped. Returns (body, logs.dropped() before the scrape, logs.dropped() after it)."""
    import asyncio
    import signal
    import socket

    from pmtud_relay.daemon.sdnotify import Notifier

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    idle, _other_end = socket.socketpair()  # a descriptor that never becomes readable, for add_reader
    for port in d.ports:
        port.capture.fd = idle.fileno()
    d.notifier = Notifier(environ={})  # never the test runner's NOTIFY_SOCKET
    d.metrics_sock = metrics.bind("127.0.0.1:0")
    address = d.metrics_sock.getsockname()[:2]

    async def scrape_once() -> tuple[str, int, int]:
        serving = asyncio.create_task(d.serve())
        try:
            deadline = time.monotonic() + timeout
            while not d.stats.ready:  # set once serve() has started the metrics server and is ready
                assert not serving.done(), serving.exception()
                assert time.monotonic() < deadline, "the daemon never became ready"
                await asyncio.sleep(0.01)
            before = logs.dropped()
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), timeout)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
            response = await asyncio.wait_for(reader.read(), timeout)
            writer.close()
            after = logs.dropped()
        finally:
            d.stop()
            await asyncio.wait_for(serving, timeout)
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        return body.decode(), before, after

    try:
        return asyncio.run(scrape_once())
    finally:
        for sig, handler in saved.items():  # serve() leaves SIGTERM/SIGINT ignored when it stops
            signal.signal(sig, handler)
        d.metrics_sock.close()
        idle.close()
        _other_end.close()




HOSTILE = {
    "mtu below floor v4": (lambda: F.ptb_v4(mtu=551), Reason.MTU_BELOW_FLOOR, "ipv4"),
    "mtu below floor v6": (lambda: F.ptb_v6(mtu=1279), Reason.MTU_BELOW_FLOOR, "ipv6"),
    "quoted source not a VIP v4": (lambda: F.ptb_v4(outer_dst=F.VIP4_OTHER, src=F.VIP4_OTHER), Reason.NOT_VIP, "ipv4"),
    "quoted source not a VIP v6": (lambda: F.ptb_v6(outer_dst=F.VIP6_OTHER, src=F.VIP6_OTHER), Reason.NOT_VIP, "ipv6"),
    "truncated quote v4": (lambda: F.ptb_v4(quote=F.original_v4()[:19]), Reason.SHORT_QUOTE, "unknown"),
    "truncated quote v6": (lambda: F.ptb_v6(quote=F.original_v6()[:39]), Reason.SHORT_QUOTE, "unknown"),
    "non-first fragment v4": (lambda: F.ptb_v4(ip_fields={"frag": 185}), Reason.FRAGMENT, "unknown"),
    "non-first fragment v6": (lambda: F.ptb_v6(outer_ext=(IPv6ExtHdrFragment(offset=185, m=0),)), Reason.FRAGMENT,
                              "unknown"),
    "ICMP about ICMP v4": (lambda: F.ptb_v4(proto=ICMP(type=3, code=1)), Reason.INNER_ICMP_ERROR, "unknown"),
    "ICMP about ICMP v6": (lambda: F.ptb_v6(proto=ICMPv6DestUnreach()), Reason.INNER_ICMP_ERROR, "unknown"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_each_hostile_input_is_dropped_with_its_own_counted_reason(name):
    build, reason, family = HOSTILE[name]
    d, port = daemon_with_port()
    feed(d, port, [build(), build(), F.ptb_v4(dport=40001)])  # two hostile, then one good PTB
    assert d.relay.counts[reason] == 2
    assert {r: n for r, n in d.relay.counts.items() if n} == {reason: 2, Reason.RELAYED: 1}
    assert len(port.emitter.sent) == 1  # only the good one
    m = scrape(d)
    key = ("pmtud_relay_ptb_dropped_total", (("family", family), ("interface", "eth0"), ("reason", reason.value)))
    assert m[key] == 2
    assert sum(v for (n, _), v in m.items() if n == "pmtud_relay_ptb_dropped_total") == 2
    assert d.internal_errors == 0


def test_send_errors_are_counted_never_fatal():
    d, port = daemon_with_port(error=errno.ENETDOWN)
    feed(d, port, [F.ptb_v4(dport=40000 + i) for i in range(3)])
    assert d.relay.counts[Reason.RELAYED] == 3  # decided, then refused by the kernel
    assert d.stats.send_errors == {("eth0", "ENETDOWN"): 3}
    assert d.internal_errors == 0
    m = scrape(d)
    assert m[("pmtud_relay_send_errors_total", (("errno", "ENETDOWN"), ("interface", "eth0")))] == 3
    port.emitter.error = 0
    feed(d, port, [F.ptb_v4(dport=40010)])  # the next copy goes out
    assert len(port.emitter.sent) == 1


# --- floods ----------------------------------------------------------------------------------------
class BlockingCapture(FakeCapture):
    """A capture that can drop sources in the kernel (``set_blocked``) where ``holds_sources``
    says so: AF_PACKET can, NFLOG cannot (its rules limit in the kernel themselves)."""

    def __init__(self, holds_sources: bool):
        super().__init__()
        self.holds_sources = holds_sources
        self.blocked: list[frozenset] = []

    def set_blocked(self, sources) -> None:
        assert self.holds_sources
        self.blocked.append(frozenset(sources))


@pytest.mark.parametrize("capture", ["afpacket", "nflog"])
def test_a_flooding_source_goes_on_the_shun_list_only_where_the_capture_applies_it(capture, caplog):
    clock = [0.0]
    d = RelayDaemon(DaemonSettings(interfaces=("eth0",), relay=RelayConfig(policy=POLICY, shun_min_rate=100),
                                   discover_vips=False), clock=lambda: clock[0])
    port = Port("eth0", BlockingCapture(holds_sources=capture == "afpacket"), FakeEmitter())
    d.ports.append(port)
    flooder = "198.51.100.66"
    with caplog.at_level(logging.WARNING, logger=d.log.name):
        for step in range(4):  # 100 PTBs every 10 ms from one source: its bucket drops ~9 000/s
            clock[0] += 0.01
            feed(d, port, [F.ptb_v4(outer_src=flooder, dport=40000 + 100 * step + i) for i in range(100)])
    held = scrape(d)[("pmtud_relay_kernel_held_sources", ())]
    logged = [r for r in caplog.records if r.getMessage() == "flood_sources_dropped_in_kernel"]
    assert d.relay.counts[Reason.RATE_LIMITED_SOURCE] > 300
    if capture == "afpacket":
        # set_blocked got {source: N}. The fake capture drops nothing, so the held source's whole
        # flood still meets its bucket and the shunner may thin its sample (a second call, same set).
        assert port.capture.blocked and set(port.capture.blocked) == {frozenset({F.packed(flooder)})}
        assert held == 1 and len(logged) == len(port.capture.blocked)
        # ~9 000 drops/s over a bucket of 10/s: 1 in 512
        assert logged[0].kv == {"sources": flooder, "count": 1, "sample": "1/512"}
    else:
        assert port.capture.blocked == [] and held == 0 and logged == []
    assert d.internal_errors == 0


class SpoofedFlood:
    """Valid-looking IPv4 PTBs, each from a new outer source (10.0.0.0 upwards) about a new
    quoted flow; the IP header and ICMP checksums are recomputed from precomputed partial sums."""

    def __init__(self, quoted_src: str = F.VIP4):
        from pmtud_relay.core.packet import parse_frame

        t = bytearray(F.ptb_v4(src=quoted_src, outer_dst=quoted_src, outer_src="0.0.0.0", sport=0, dport=0))
        ptb = parse_frame(bytes(t))
        l3, icmp = ptb.l3_offset, ptb.icmp_offset
        end = l3 + (t[l3 + 2] << 8 | t[l3 + 3])
        assert (end - icmp) % 2 == 0
        self.ip_csum_at, self.icmp_csum_at = l3 + 10, icmp + 2
        self.src_at, self.ports_at = l3 + 12, icmp + 8 + 20  # outer source; quoted TCP ports
        t[self.ip_csum_at:self.ip_csum_at + 2] = t[self.icmp_csum_at:self.icmp_csum_at + 2] = b"\0\0"
        self.ip_base, self.icmp_base = ones_complement_sum(bytes(t[l3:icmp])), ones_complement_sum(bytes(t[icmp:end]))
        self.template = bytes(t)
        self._pack = struct.Struct("!H").pack_into

    @staticmethod
    def _fold(s: int) -> int:
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        return ~s & 0xFFFF

    def frame(self, i: int) -> bytes:
        f = bytearray(self.template)
        src = 0x0A000000 + i
        sport, dport = 1024 + (i // 60000) % 60000, 1 + i % 60000  # flows stay distinct
        f[self.src_at:self.src_at + 4] = src.to_bytes(4, "big")
        f[self.ports_at:self.ports_at + 4] = (sport << 16 | dport).to_bytes(4, "big")
        self._pack(f, self.ip_csum_at, self._fold(self.ip_base + (src >> 16) + (src & 0xFFFF)))
        self._pack(f, self.icmp_csum_at, self._fold(self.icmp_base + sport + dport))
        return bytes(f)


N_FLOOD = 1_000_000
CAP = 65536  # the defaults: rate-limit sources and dedup keys
LEGIT_ROUTERS = [f"198.51.100.{i}" for i in range(1, 21)]


def test_spoofed_flood_frames_are_what_they_claim():
    flood = SpoofedFlood()
    relay = Relay(RelayConfig(policy=POLICY, global_rate=1e9, global_burst=1e9))
    for i in (0, 1, 65535, 65536, 999_999):
        d = relay.handle(flood.frame(i), 0.0, MAC)
        assert d.relay, d.reason
        assert d.ptb.outer_src == (0x0A000000 + i).to_bytes(4, "big")


@pytest.mark.timeout(300)
def test_a_million_spoofed_sources_keep_tables_at_their_caps_and_legit_ptbs_flowing():
    """Global limit lifted (the worst case for memory: every flood PTB passes policy and limits,
    so each one creates a per-source bucket and a dedup entry)."""
    relay = Relay(RelayConfig(policy=POLICY, global_rate=1e9, global_burst=1e9))
    assert (relay.limiter.capacity, relay.dedup.capacity) == (CAP, CAP)
    flood = SpoofedFlood()
    legit_sent = legit_relayed = 0
    peak_sources = peak_keys = 0
    handle = relay.handle
    for i in range(N_FLOOD):
        now = i * 10e-6  # 100 000 spoofed PTBs a second, 10 s in all
        handle(flood.frame(i), now, MAC)
        if i % 5000 == 0:  # 20 legitimate routers, each about a new flow once a second
            k = i // 5000
            legit = F.ptb_v4(outer_src=LEGIT_ROUTERS[k % 20], dport=20000 + k) if k < 400 else None
            if legit is not None:
                legit_sent += 1
                legit_relayed += handle(legit, now, MAC).relay
            peak_sources = max(peak_sources, len(relay.limiter))
            peak_keys = max(peak_keys, len(relay.dedup))
    assert legit_sent == 200 and legit_relayed == legit_sent  # every legitimate PTB got through
    assert len(relay.limiter) == CAP and peak_sources <= CAP
    assert len(relay.dedup) == CAP and peak_keys <= CAP
    assert relay.limiter.evictions >= N_FLOOD - CAP  # the oldest sources went first ...
    sources = relay.limiter._sources
    assert (0x0A000000).to_bytes(4, "big") not in sources  # ... the first is long gone,
    assert (0x0A000000 + N_FLOOD - 1).to_bytes(4, "big") in sources  # the newest is there
    assert relay.dedup.evictions > 0
    assert relay.counts[Reason.RELAYED] == N_FLOOD + legit_sent


@pytest.mark.timeout(300)
def test_a_million_spoofed_sources_not_about_our_vips_create_no_state():
    """Default limits: PTBs that do not quote a VIP are dropped by policy before any table is
    touched, so such a flood costs CPU only, and legitimate PTBs flow at the default limits."""
    relay = Relay(RelayConfig(policy=POLICY))
    flood = SpoofedFlood(quoted_src="192.0.2.99")
    legit_relayed = 0
    handle = relay.handle
    for i in range(N_FLOOD):
        now = i * 10e-6
        handle(flood.frame(i), now, MAC)
        if i % 5000 == 0 and i // 5000 < 200:
            k = i // 5000
            legit_relayed += handle(F.ptb_v4(outer_src=LEGIT_ROUTERS[k % 20], dport=20000 + k), now, MAC).relay
    assert relay.counts[Reason.NOT_VIP] == N_FLOOD
    assert legit_relayed == 200
    assert len(relay.limiter) == len(LEGIT_ROUTERS) and len(relay.dedup) <= 200


# --- logging ---------------------------------------------------------------------------------------
class _Stalled(io.StringIO):
    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def write(self, s):
        self.release.wait()
        return super().write(s)


@pytest.fixture
def stalled_log(monkeypatch):
    monkeypatch.setattr(logs, "QUEUE_SIZE", 50)
    stream = _Stalled()
    logs.setup("debug", "logfmt", stream=stream)
    yield stream
    stream.release.set()
    logs.shutdown()


def test_the_daemon_logs_through_the_non_blocking_queue(stalled_log):
    d, port = daemon_with_port()
    handlers = [h for h in d.log.handlers if type(h).__name__ != "LogCaptureHandler"]  # pytest's own
    assert len(handlers) == 1 and isinstance(handlers[0], logging.handlers.QueueHandler)
    assert d.log is logging.getLogger(logs.LOGGER_NAME) and not d.log.propagate


def test_a_stalled_stderr_never_blocks_the_packet_path(stalled_log):
    """Debug logging on, stderr stalled: 2 000 relayed PTBs (a debug line each) are decided and
    sent without waiting; the lines that did not fit are dropped and counted."""
    d, port = daemon_with_port(source_burst=1e6, global_burst=1e6)
    flood = SpoofedFlood()
    frames = [flood.frame(i) for i in range(2000)]
    t0 = time.monotonic()
    for k in range(0, 2000, 100):
        feed(d, port, frames[k:k + 100])
    assert time.monotonic() - t0 < 5.0
    assert len(port.emitter.sent) == 2000
    assert logs.dropped() >= 2000 - 50 - 1
    # Through the daemon's own wiring (serve() builds the registry for its metrics server): the
    # metric is the logging queue's drop count. (serve() logs too, into the stalled queue, so the
    # count may grow while it runs: the scrape lies between the values read around it.)
    body, before, after = scrape_served(d)
    served = samples(body)[("pmtud_relay_log_lines_dropped_total", ())]
    assert before <= served <= after, (before, served, after)
    assert served >= 2000 - 50 - 1


# --- peer protocol: a wall clock stepped back must not re-open a replay ---------------------------
def test_a_replay_stays_refused_after_the_wall_clock_steps_back():
    from pmtud_relay.peers import wire as pp

    ring = pp.Keyring([(1, bytes(range(32)))])
    d = pp.PeerDecoder(ring, max_age=10)
    message = pp.encode(F.ptb_v4()[14:], ring, 1000.0, b"n" * 12)
    assert isinstance(d.decode(message, 1000.0), pp.Decoded)
    assert d.decode(message, 1000.0) is pp.PeerReason.REPLAY
    assert d.decode(message, 1011.0) is pp.PeerReason.STALE  # its nonce is forgotten here ...
    assert d.decode(message, 1000.5) is pp.PeerReason.REPLAY  # ... yet a step back does not re-open it
    assert isinstance(d.decode(pp.encode(F.ptb_v4()[14:], ring, 1000.5, b"m" * 12), 1000.5), pp.Decoded)

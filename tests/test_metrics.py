"""Metrics: names, bounded labels, scrape over HTTP on loopback, /healthz, /readyz, errors."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pmtud_relay import __version__, metrics
from pmtud_relay.core.policy import Policy, VipSet
from pmtud_relay.core.reasons import PARSE_REASONS, Reason
from pmtud_relay.core.relay import Relay, RelayConfig
from pmtud_relay.daemon import run_event_loop
from tests.support import frames as F

EXPECTED = {
    "pmtud_relay_ptb_received": ("counter", {"interface", "family"}),
    "pmtud_relay_ptb_relayed": ("counter", {"interface", "family"}),
    "pmtud_relay_ptb_dropped": ("counter", {"interface", "family", "reason"}),
    "pmtud_relay_ptb_rate_limited": ("counter", {"bucket"}),
    "pmtud_relay_ptb_deduplicated": ("counter", set()),
    "pmtud_relay_send_errors": ("counter", {"interface", "errno"}),
    "pmtud_relay_capture_overruns": ("counter", {"interface"}),
    "pmtud_relay_capture_faults": ("counter", {"interface", "kind"}),
    "pmtud_relay_processing_seconds": ("histogram", {"le"}),
    "pmtud_relay_rate_limit_sources": ("gauge", set()),
    "pmtud_relay_dedup_keys": ("gauge", set()),
    "pmtud_relay_table_evictions": ("counter", {"table"}),
    "pmtud_relay_known_sources": ("gauge", set()),
    "pmtud_relay_ptb_relayed_from_reserve": ("counter", set()),
    "pmtud_relay_vips": ("gauge", {"family"}),
    "pmtud_relay_kernel_held_sources": ("gauge", set()),
    "pmtud_relay_kernel_holds": ("counter", set()),
    "pmtud_relay_internal_errors": ("counter", set()),
    "pmtud_relay_config_reloads": ("counter", {"result"}),
    "pmtud_relay_config_last_reload_success_timestamp_seconds": ("gauge", set()),
    "pmtud_relay_log_lines_dropped": ("counter", set()),
    "pmtud_relay_ready": ("gauge", set()),
    "pmtud_relay_interfaces_waiting": ("gauge", set()),
    "pmtud_relay_start_time_seconds": ("gauge", set()),
    "pmtud_relay_build_info": ("gauge", {"version", "python"}),  # an Info metric, as text format 0.0.4 shows it
}


def busy_relay():
    """A relay and stats fed with relayed, dropped, duplicate, rate-limited and unparsable
    frames from many sources, ports and flows: the labels must stay bounded anyway."""
    policy = Policy(vips=VipSet([F.VIP4, F.VIP6]))
    relay = Relay(RelayConfig(policy=policy, source_rate=1, source_burst=1, global_rate=1000, global_burst=1000))
    stats = metrics.Stats(["eth0", "eth1"])
    mac = F.mac(F.RELAY_MAC)
    now = 0.0
    for i in range(20):
        for ifname, frame in (
            ("eth0", F.ptb_v4(outer_src=f"198.51.100.{i + 1}", sport=443, dport=50000 + i)),
            ("eth0", F.ptb_v4(outer_src="198.51.100.200", sport=443, dport=40000 + i)),  # one source: limited
            ("eth1", F.ptb_v6(outer_src=f"2001:db8:1::{i + 1:x}", dport=50000 + i)),
            ("eth1", F.ptb_v6(outer_src=f"2001:db8:1::{i + 1:x}", dport=50000 + i)),  # duplicate
            ("eth0", F.ptb_v4(outer_dst=F.VIP4_OTHER, src=F.VIP4_OTHER)),  # not a VIP
            ("eth0", F.arp_frame()),  # not IP
        ):
            now += 0.001
            decision = relay.handle(frame, now, mac)
            stats.count(ifname, decision)
            stats.latency.observe(0.00002)
    stats.send_error("eth0", errno.ENOBUFS)
    stats.send_error("eth1", errno.ENETDOWN)
    stats.overruns["eth1"] = 3
    return relay, stats


def parse(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_histogram_is_plain_and_cumulative():
    h = metrics.LatencyHistogram((0.001, 0.01))
    for v in (0.0005, 0.001, 0.002, 0.5):
        h.observe(v)
    assert h.cumulative() == [("0.001", 2), ("0.01", 3), ("+Inf", 4)]
    assert h.count == 4 and h.sum == pytest.approx(0.5035)
    assert metrics.LATENCY_BUCKETS[0] <= 0.00001 and metrics.LATENCY_BUCKETS[-1] >= 0.01


def test_collector_names_types_and_label_sets():
    relay, stats = busy_relay()
    registry = metrics.build_registry(stats, lambda: relay, log_dropped=lambda: 0, process=False)
    fams = parse(prometheus_client.generate_latest(registry).decode())
    for name, (kind, labels) in EXPECTED.items():
        assert name in fams, name
        assert fams[name].type == kind, name
        for sample in fams[name].samples:
            want = labels if sample.name.endswith("_bucket") or kind != "histogram" else set()
            assert set(sample.labels) == want, (name, sample)
    assert set(fams) == set(EXPECTED), set(fams) ^ set(EXPECTED)


def test_values_add_up_and_reasons_are_the_closed_enum():
    relay, stats = busy_relay()
    fams = parse(prometheus_client.generate_latest(metrics.build_registry(stats, lambda: relay)).decode())

    def total(name, **match):
        return sum(s.value for s in fams[name].samples
                   if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in match.items()))

    assert total("pmtud_relay_ptb_received") == 120 == sum(relay.counts.values())
    assert total("pmtud_relay_ptb_relayed") == relay.counts[Reason.RELAYED]
    assert total("pmtud_relay_ptb_received") == total("pmtud_relay_ptb_relayed") + total("pmtud_relay_ptb_dropped")
    assert total("pmtud_relay_ptb_dropped", reason="not_ip", family="unknown", interface="eth0") == 20
    assert total("pmtud_relay_ptb_dropped", reason="duplicate", family="ipv6") == relay.counts[Reason.DUPLICATE] == 20
    assert total("pmtud_relay_ptb_deduplicated") == 20
    assert total("pmtud_relay_ptb_rate_limited", bucket="source") == relay.counts[Reason.RATE_LIMITED_SOURCE] > 0
    assert total("pmtud_relay_ptb_rate_limited", bucket="global") == 0
    assert total("pmtud_relay_send_errors", errno="ENOBUFS", interface="eth0") == 1
    assert total("pmtud_relay_capture_overruns", interface="eth1") == 3
    assert total("pmtud_relay_capture_overruns", interface="eth0") == 0
    reasons = {s.labels["reason"] for s in fams["pmtud_relay_ptb_dropped"].samples}
    assert reasons == {r.value for r in Reason if r is not Reason.RELAYED}
    for s in fams["pmtud_relay_ptb_dropped"].samples:  # parse drops carry no family
        assert (s.labels["family"] == "unknown") == (Reason(s.labels["reason"]) in PARSE_REASONS)
    gauges = {n: fams[n].samples[0].value for n in ("pmtud_relay_rate_limit_sources", "pmtud_relay_dedup_keys")}
    assert gauges == {"pmtud_relay_rate_limit_sources": len(relay.limiter), "pmtud_relay_dedup_keys": len(relay.dedup)}
    assert {s.labels["family"]: s.value for s in fams["pmtud_relay_vips"].samples} == {"ipv4": 1, "ipv6": 1}
    hist = {s.labels.get("le"): s.value for s in fams["pmtud_relay_processing_seconds"].samples
            if s.name.endswith("_bucket")}
    assert hist["+Inf"] == 120 and hist["1e-05"] == 0 and hist["2.5e-05"] == 120
    info = fams["pmtud_relay_build_info"].samples[0]
    assert info.labels["version"] == __version__ and info.value == 1


def test_shun_list_is_visible_while_a_source_is_held_and_after():
    """A source flooding past its bucket is put on the kernel shun list (core/shun.py): the
    gauge shows it while held, the counter keeps the hold after its release."""
    policy = Policy(vips=VipSet([F.VIP4, F.VIP6]))
    relay = Relay(RelayConfig(policy=policy, source_rate=1, source_burst=1, shun_min_rate=100), now=0.0)
    stats = metrics.Stats(["eth0"])
    mac = F.mac(F.RELAY_MAC)

    def scrape():
        fams = parse(prometheus_client.generate_latest(metrics.build_registry(stats, lambda: relay)).decode())
        held = fams["pmtud_relay_kernel_held_sources"].samples[0].value
        holds = [s.value for s in fams["pmtud_relay_kernel_holds"].samples if s.name.endswith("_total")]
        return held, holds[0]

    assert scrape() == (0, 0)
    for i in range(50):  # 50 PTBs in 10 ms from one source: 49 dropped by its bucket, ~4 900/s
        stats.count("eth0", relay.handle(F.ptb_v4(outer_src="198.51.100.66", dport=40000 + i), 0.0002 * i, mac))
    assert relay.kernel_blocklist(0.03) == frozenset({F.packed("198.51.100.66")})
    assert scrape() == (1, 1)
    assert relay.kernel_blocklist(0.03 + relay.shunner.hold + 0.1) == frozenset()  # hold over, nothing new
    assert scrape() == (0, 1)


def _looks_like_address_or_port(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    try:
        ipaddress.ip_network(value, strict=False)
        return True
    except ValueError:
        pass
    return value.isdigit()


def test_no_label_value_is_an_address_or_a_port():
    relay, stats = busy_relay()
    text = prometheus_client.generate_latest(metrics.build_registry(stats, lambda: relay)).decode()
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            for label, value in sample.labels.items():
                if label == "le":
                    continue
                assert not _looks_like_address_or_port(value), (sample.name, label, value)
    for addr in ("198.51.100.", "2001:db8", "192.0.2.", '"443"', '"50000"'):
        assert addr not in text, addr


def test_label_cardinality_is_bounded_by_interfaces_not_traffic():
    relay, stats = busy_relay()
    reg = metrics.build_registry(stats, lambda: relay, process=False)
    before = sum(len(f.samples) for f in parse(prometheus_client.generate_latest(reg).decode()).values())
    mac = F.mac(F.RELAY_MAC)
    for i in range(200):  # 200 new sources, flows and ports
        stats.count("eth0", relay.handle(F.ptb_v4(outer_src=f"203.0.113.{i % 250 + 1}", dport=1024 + i), 10.0 + i, mac))
    after = sum(len(f.samples) for f in parse(prometheus_client.generate_latest(reg).decode()).values())
    assert after == before


def test_private_registry_never_the_global_default():
    relay, stats = busy_relay()
    metrics.build_registry(stats, lambda: relay)
    assert b"pmtud_relay_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


def test_collector_without_relay_or_interfaces():
    reg = metrics.build_registry(metrics.Stats(), process=False)
    fams = parse(prometheus_client.generate_latest(reg).decode())
    assert "pmtud_relay_dedup_keys" not in fams and "pmtud_relay_ptb_received" in fams


def test_overrun_probes_are_polled_at_scrape():
    stats = metrics.Stats(["eth0"])
    deltas = iter([2, 0, 5])
    stats.overrun_probes["eth0"] = lambda: next(deltas)
    reg = metrics.build_registry(stats, process=False)
    for expected in (2, 2, 7):
        fams = parse(prometheus_client.generate_latest(reg).decode())
        assert fams["pmtud_relay_capture_overruns"].samples[0].value == expected


def test_capture_faults_survive_a_capture_being_replaced():
    """A re-bound interface gets a new capture whose counts start at 0: the series must not
    go backwards, so a closing capture's totals are kept."""
    stats = metrics.Stats(["eth0"])
    first = {"truncated": 2, "ring_resync": 1}
    stats.capture_counters["eth0"] = lambda: dict(first)
    reg = metrics.build_registry(stats, process=False)

    def faults():
        fams = parse(prometheus_client.generate_latest(reg).decode())
        return {s.labels["kind"]: s.value for s in fams["pmtud_relay_capture_faults"].samples
                if s.labels["interface"] == "eth0" and s.name.endswith("_total")}

    assert faults() == {"truncated": 2, "ring_resync": 1}
    first["truncated"] = 5
    assert faults() == {"truncated": 5, "ring_resync": 1}
    stats.retire_capture("eth0")  # the link went down: the capture closes
    assert faults() == {"truncated": 5, "ring_resync": 1}
    stats.capture_counters["eth0"] = lambda: {"truncated": 1, "ring_resync": 0}  # re-bound
    assert faults() == {"truncated": 6, "ring_resync": 1}


@pytest.mark.netns
@pytest.mark.timeout(60)
@pytest.mark.parametrize("ring", [True, False], ids=["ring", "socket"])
def test_afpacket_drops_reads_packet_statistics(veth_netns, netns_program, ring):
    """The kernel really drops frames: a capture nobody reads while more frames arrive than it
    holds. afpacket_drops() returns tp_drops (not tp_packets, which counts drops as well) and
    only what was added since the previous call (PACKET_STATISTICS resets on read)."""
    from pmtud_relay.capture.afpacket import RING_BLOCK_SIZE, RING_BLOCKS, RING_FRAME_SIZE

    slots = RING_BLOCK_SIZE // RING_FRAME_SIZE * RING_BLOCKS  # 2 048: one small frame a slot
    burst, more = slots + 100, 7
    out = netns_program(veth_netns, "veth_probes", "afpacket-drops", payload=[ring, F.ptb_v4().hex(), burst, more],
                        timeout=40)
    assert out["idle"] == 0
    if ring:
        assert out["held"] == slots, out  # the ring was full: exactly the excess was dropped
        assert out["first"] == burst - slots, out
    else:  # a 128 KiB buffer holds some hundreds of these frames: the rest were dropped
        assert 0 < out["held"] < burst and out["first"] == burst - out["held"], out
    assert out["second"] == 0, out  # reset by the first read
    assert out["third"] == more, out  # only what was added since
    assert out["fourth"] == 0 and out["after"] == more, out


# -- HTTP -------------------------------------------------------------------------------------


async def http(port: int, request: bytes) -> tuple[int, dict, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def get(path: str, extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def test_scrape_over_http_health_and_readiness():
    relay, stats = busy_relay()
    registry = metrics.build_registry(stats, lambda: relay)

    async def scenario():
        sock = metrics.bind("127.0.0.1:0")
        server = metrics.MetricsServer(registry, ready=lambda: stats.not_ready_reason() is None,
                                       not_ready_reason=stats.not_ready_reason)
        await server.start(sock)
        port = server.address[1]
        try:
            status, headers, body = await http(port, get("/metrics"))
            assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
            assert int(headers["content-length"]) == len(body)
            fams = parse(body.decode())
            assert fams["pmtud_relay_ptb_received"].samples and "process_cpu_seconds" in fams

            status, headers, body = await http(
                port, get("/metrics", "Accept: application/openmetrics-text; version=1.0.0\r\n"))
            assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
            assert body.rstrip().endswith(b"# EOF")

            assert (await http(port, get("/healthz")))[0] == 200
            status, _, body = await http(port, get("/readyz"))
            assert status == 503 and b"not ready" in body
            stats.ready = True
            stats.waiting.add("eth9")  # a configured interface that is absent or down: not ready, and why
            status, _, body = await http(port, get("/readyz"))
            assert status == 503 and body == b"not ready: waiting for interface eth9 (absent or down)\n"
            page = parse((await http(port, get("/metrics")))[2].decode())
            assert page["pmtud_relay_interfaces_waiting"].samples[0].value == 1
            stats.waiting.clear()
            assert (await http(port, get("/readyz")))[0] == 200
            status, headers, body = await http(port, get("/readyz", method="HEAD"))
            assert status == 200 and body == b""
            assert (await http(port, get("/nope")))[0] == 404
            assert (await http(port, get("/metrics", method="POST")))[0] == 405
            assert (await http(port, b"garbage\r\n\r\n"))[0] == 400
            # a client that connects and says nothing does not block others
            idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
            assert (await http(port, get("/healthz")))[0] == 200
            idle_w.close()
        finally:
            await server.close()
        return server.requests

    assert asyncio.run(scenario()) >= 9


def _netlink_links() -> int:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return len(ipr.get_links())


@pytest.mark.parametrize("uvloop_run", ["uvloop.run", "without uvloop.run (uvloop < 0.18)"])
def test_serves_under_uvloop_too(uvloop_run, monkeypatch):
    uvloop = pytest.importorskip("uvloop")
    if uvloop_run != "uvloop.run":
        monkeypatch.delattr(uvloop, "run", raising=False)
    out = []

    async def scenario():
        loop = asyncio.get_running_loop()
        loop_module = type(loop).__module__
        # pyroute2 (0.8+) makes an asyncio loop of its own in the worker thread: that must work
        links = await loop.run_in_executor(None, _netlink_links)
        server = metrics.MetricsServer(metrics.build_registry(metrics.Stats(["lo"])), ready=lambda: True)
        await server.start(metrics.bind("127.0.0.1:0"))
        try:
            status, _, body = await http(server.address[1], get("/metrics"))
        finally:
            await server.close()
        out.append((loop_module, links, status, body))

    run_event_loop(scenario)
    (loop_module, links, status, body), = out
    assert loop_module.startswith("uvloop"), loop_module
    assert links >= 1  # lo at least
    assert status == 200 and b"pmtud_relay_ptb_received_total" in body
    assert asyncio.get_event_loop_policy().__class__.__module__.startswith("asyncio")


def test_port_in_use_is_a_clear_error_naming_metrics_address():
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        with pytest.raises(metrics.MetricsError) as info:
            metrics.bind(f"127.0.0.1:{port}")
        msg = str(info.value)
        assert msg.startswith(f"metrics_address 127.0.0.1:{port}: cannot listen: address already in use")
    finally:
        holder.close()


def test_bind_rejects_bad_addresses():
    with pytest.raises(metrics.MetricsError, match="metrics_address"):
        metrics.bind("localhost:9781")
    with pytest.raises(metrics.MetricsError, match="not an address of this host"):
        metrics.bind("192.0.2.1:0")  # TEST-NET-1: not configured here


def test_bind_ipv6_loopback():
    if not socket.has_ipv6 or not os.path.exists("/proc/net/if_inet6"):
        pytest.skip("no IPv6")
    try:
        sock = metrics.bind("[::1]:0")
    except metrics.MetricsError as exc:
        pytest.skip(f"IPv6 loopback unavailable: {exc}")
    with sock:
        assert sock.family == socket.AF_INET6


def test_every_metric_and_reason_is_documented():
    import pathlib

    doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    relay, stats = busy_relay()
    text = prometheus_client.generate_latest(metrics.build_registry(stats, lambda: relay, log_dropped=lambda: 0,
                                                                    process=False)).decode()
    for fam in text_string_to_metric_families(text):
        shown = fam.name + ("_total" if fam.type == "counter" else "")
        assert f"`{shown}`" in doc, shown
    for reason in Reason:
        if reason is not Reason.RELAYED:
            assert f"| `{reason.value}` |" in doc, reason.value


def test_delta_probe_for_cumulative_counters():
    class Nflog:
        lost = 5

    n = Nflog()
    stats = metrics.Stats(["eth0"])
    stats.overrun_probes["eth0"] = metrics.delta_probe(lambda: n.lost)  # counts from now on
    stats.poll_overruns()
    assert stats.overruns.get("eth0", 0) == 0
    n.lost = 9
    stats.poll_overruns()
    assert stats.overruns["eth0"] == 4


def test_process_metrics_need_only_the_process_own_proc_entries(tmp_path):
    fake = tmp_path / "self"
    (fake / "fd").mkdir(parents=True)
    for i in range(3):
        (fake / "fd" / str(i)).touch()
    (fake / "statm").write_text("100 25 0 0 0 0 0\n")
    reg = prometheus_client.CollectorRegistry()
    reg.register(metrics.SelfProcessCollector(started=1000.0, proc=str(fake)))  # no /proc/stat anywhere
    fams = parse(prometheus_client.generate_latest(reg).decode())
    page = os.sysconf("SC_PAGE_SIZE")
    assert fams["process_open_fds"].samples[0].value == 3
    assert fams["process_resident_memory_bytes"].samples[0].value == 25 * page
    assert fams["process_virtual_memory_bytes"].samples[0].value == 100 * page
    assert fams["process_start_time_seconds"].samples[0].value == 1000.0
    assert fams["process_cpu_seconds"].samples[0].value > 0

"""TTL-aware peer DNS: pmtud_relay.peers.dns (dnspython's stub resolver) against small DNS servers
on loopback (UDP and TCP, answers built with dnspython's message API) with a temporary
resolv.conf, and the re-resolve schedule of pmtud_relay.peers.sources.NameCache (injected clock: no
sleeping for TTLs). Loopback only; documentation addresses in the answers."""

from __future__ import annotations

import asyncio
import io
import os
import select
import socket
import struct
import threading
import time

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from pmtud_relay.peers.dns import Answer, DnsClient, DnsError, in_hosts_file
from pmtud_relay.peers.inbox import PeerSpec
from pmtud_relay.peers.service import PeerService, PeerSettings
from pmtud_relay.peers.sources import DNS_RETRY_MAX, NameCache, PeerDirectory

NAME = "peers.example"
BOTH = ("198.51.100.18", "2001:db8:5:2::2")


# -- a small DNS server -------------------------------------------------------------------------------
class ZoneServer:
    """An authoritative-looking server for ``zone`` on UDP and TCP, one port, one loopback address.

    ``zone`` maps an absolute name (text, lower case) to ``{type: (ttl, [rdata text, ...])}``; a
    CNAME entry is followed inside the answer. Names not in the zone get NXDOMAIN.
    ``mode``: answer | silent (never answers) | servfail | truncate (UDP answers carry TC and no
    records, TCP answers in full). ``asked`` records (transport, name, type) of every query."""

    TCP_TIMEOUT = 2.0
    JOIN_TIMEOUT = 5.0

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.zone: dict[str, dict[str, tuple[int, list[str]]]] = {}
        self.mode = "answer"
        self.asked: list[tuple[str, str, str]] = []
        self.tcp_errors: list[str] = []
        for _ in range(20):
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind((host, port))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                self.tcp.bind((host, self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
                if port:
                    raise
        self.tcp.listen(4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def count(self, transport: str) -> int:
        return sum(1 for t, _, _ in self.asked if t == transport)

    def respond(self, wire: bytes, transport: str) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        self.asked.append((transport, question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)))
        if self.mode == "silent":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA | dns.flags.RA
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        name = question.name
        if name.to_text().lower() not in self.zone:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        want = dns.rdatatype.to_text(question.rdtype)
        for _ in range(8):
            records = self.zone.get(name.to_text().lower(), {})
            if want in records:
                ttl, datas = records[want]
                response.answer.append(dns.rrset.from_text_list(name, ttl, "IN", want, datas))
                break
            if "CNAME" not in records:
                break
            ttl, (target,) = records["CNAME"]
            response.answer.append(dns.rrset.from_text_list(name, ttl, "IN", "CNAME", [target]))
            name = dns.name.from_text(target)
        if transport == "udp" and self.mode == "truncate":
            response.answer = []
            response.flags |= dns.flags.TC
        return response.to_wire()

    def _run(self):
        while not self._stop.is_set():
            ready, _, _ = select.select([self.udp, self.tcp], [], [], 0.05)
            if self.udp in ready:
                wire, client = self.udp.recvfrom(4096)
                reply = self.respond(wire, "udp")
                if reply is not None:
                    self.udp.sendto(reply, client)
            if self.tcp in ready:
                conn, _ = self.tcp.accept()
                with conn:
                    conn.settimeout(self.TCP_TIMEOUT)  # a stalled client must not hang the server
                    try:
                        (n,) = struct.unpack("!H", self._recv_exactly(conn, 2))
                        reply = self.respond(self._recv_exactly(conn, n), "tcp")
                        if reply is not None:
                            conn.sendall(struct.pack("!H", len(reply)) + reply)
                    except (OSError, EOFError) as exc:
                        self.tcp_errors.append(repr(exc))

    @staticmethod
    def _recv_exactly(conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"peer closed after {len(buf)} of {n} bytes")
            buf += chunk
        return buf

    def close(self):
        self._stop.set()
        self._thread.join(self.JOIN_TIMEOUT)
        self.udp.close()
        self.tcp.close()
        assert not self._thread.is_alive(), f"server thread still running {self.JOIN_TIMEOUT} s after close()"


PEERS_ZONE = {"peers.example.": {"A": (30, ["198.51.100.18"]), "AAAA": (60, ["2001:db8:5:2::2"])}}


@pytest.fixture
def server():
    s = ZoneServer()
    s.zone = {k: dict(v) for k, v in PEERS_ZONE.items()}
    yield s
    s.close()


def client_for(tmp_path, port: int, lines=("nameserver 127.0.0.1",), timeout: float = 2.0,
               hosts: str = "", lifetime: float = 5.0) -> DnsClient:
    conf = tmp_path / "resolv.conf"
    conf.write_text("".join(line + "\n" for line in lines))
    hosts_path = tmp_path / "hosts"
    hosts_path.write_text(hosts)
    return DnsClient(str(conf), str(hosts_path), port=port, timeout=timeout, lifetime=lifetime)


# -- the client -----------------------------------------------------------------------------------------
def test_addresses_a_then_aaaa_and_the_smallest_ttl(tmp_path, server):
    answer = client_for(tmp_path, server.port).resolve(NAME)
    assert answer == Answer(BOTH, 30)
    assert server.asked == [("udp", "peers.example.", "A"), ("udp", "peers.example.", "AAAA")]


def test_cname_ttls_count_and_nodata_has_no_ttl(tmp_path, server):
    server.zone = {
        "peers.example.": {"CNAME": (300, ["a.svc.example."])},
        "a.svc.example.": {"CNAME": (20, ["b.svc.example."])},
        "b.svc.example.": {"A": (120, ["198.51.100.50", "198.51.100.51"])},
    }
    assert client_for(tmp_path, server.port).resolve(NAME) == Answer(("198.51.100.50", "198.51.100.51"), 20)
    server.zone = {"peers.example.": {"TXT": (30, ['"no addresses"'])}}  # the name exists: NODATA
    assert client_for(tmp_path, server.port).resolve(NAME) == Answer((), None, False)


def test_nxdomain_is_an_answer_without_addresses(tmp_path, server):
    server.zone = {}
    assert client_for(tmp_path, server.port).resolve(NAME) == Answer((), None, True)
    assert server.asked == [("udp", "peers.example.", "A")]  # the name is gone: no AAAA query


def test_truncated_udp_answer_is_asked_again_over_tcp(tmp_path, server):
    many = [f"198.51.100.{i}" for i in range(1, 61)]  # 60 A records: > 512 bytes
    server.zone["peers.example."]["A"] = (40, many)
    server.mode = "truncate"
    answer = client_for(tmp_path, server.port).resolve(NAME)
    assert answer == Answer(tuple(many) + ("2001:db8:5:2::2",), 40)
    assert server.count("udp") == 2 and server.count("tcp") == 2 and server.tcp_errors == []


def test_dead_first_nameservers_are_skipped(tmp_path, server):
    silent = ZoneServer("127.0.0.3", server.port)
    silent.mode = "silent"
    try:
        # 127.0.0.2: nothing listens; 127.0.0.3: never answers; then the one that works
        lines = ("nameserver 127.0.0.2", "nameserver 127.0.0.3", "nameserver 127.0.0.1")
        client = client_for(tmp_path, server.port, lines, timeout=0.3)
        t0 = time.monotonic()
        assert client.resolve(NAME) == Answer(BOTH, 30)
        elapsed = time.monotonic() - t0
        assert silent.asked == [("udp", "peers.example.", "A")]  # AAAA goes to the server that answered A
        assert elapsed < 1.5, elapsed  # two 0.3 s timeouts for A, none for AAAA
    finally:
        silent.close()


def test_every_nameserver_failing_is_an_error_naming_them(tmp_path, server):
    server.mode = "servfail"
    silent = ZoneServer("127.0.0.3", server.port)
    silent.mode = "silent"
    try:
        client = client_for(tmp_path, server.port, ("nameserver 127.0.0.3", "nameserver 127.0.0.1"),
                            timeout=0.2, lifetime=1.0)
        with pytest.raises(DnsError) as exc:
            client.resolve(NAME)
        text = str(exc.value)
        assert "127.0.0.1" in text and "SERVFAIL" in text and "127.0.0.3" in text, text
    finally:
        silent.close()


def test_search_domains_and_ndots_of_resolv_conf(tmp_path, server):
    server.zone = {"pmtud-relay.kube-system.svc.cluster.local.": {"A": (5, ["198.51.100.7"])}}
    lines = ("search default.svc.cluster.local svc.cluster.local cluster.local",
             "nameserver 127.0.0.1", "options ndots:5")
    assert client_for(tmp_path, server.port, lines).resolve("pmtud-relay.kube-system") == Answer(("198.51.100.7",), 5)
    assert [(n, t) for _, n, t in server.asked] == [
        ("pmtud-relay.kube-system.default.svc.cluster.local.", "A"),  # NXDOMAIN: next suffix
        ("pmtud-relay.kube-system.svc.cluster.local.", "A"),
        ("pmtud-relay.kube-system.svc.cluster.local.", "AAAA"),  # the name the search settled on
    ]
    server.asked.clear()
    # a single label is completed from the search list; a trailing dot means "as is"
    server.zone["peers.svc.cluster.local."] = {"AAAA": (9, ["2001:db8::9"])}
    assert client_for(tmp_path, server.port, lines).resolve("peers").addresses == ("2001:db8::9",)
    assert client_for(tmp_path, server.port, lines).resolve("peers.").nxdomain
    assert server.asked[-1] == ("udp", "peers.", "A")


def test_resolv_conf_is_read_at_every_lookup(tmp_path, server):
    other = ZoneServer("127.0.0.4", server.port)
    other.zone = {"peers.example.": {"A": (30, ["203.0.113.4"])}}
    try:
        client = client_for(tmp_path, server.port)
        assert client.resolve(NAME).addresses == BOTH
        (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.4\n")
        assert client.resolve(NAME).addresses == ("203.0.113.4",)
    finally:
        other.close()


def test_some_names_are_left_to_getaddrinfo(tmp_path, server):
    client = client_for(tmp_path, server.port, hosts="198.51.100.18 peers.example\n")
    assert client.resolve(NAME) is None and client.resolve("PEERS.example.") is None  # in the hosts file
    assert client_for(tmp_path, server.port, ("domain .",)).resolve("other.example") is None  # no nameserver
    missing = DnsClient(str(tmp_path / "no-resolv.conf"), str(tmp_path / "hosts"), port=server.port)
    assert missing.resolve("other.example") is None
    assert server.asked == []
    hosts = tmp_path / "hosts2"
    hosts.write_text("127.0.0.1 localhost\n198.51.100.18 peers.example rack2  # comment\n#192.0.2.9 other.example\n")
    assert in_hosts_file("rack2", str(hosts)) and not in_hosts_file("other.example", str(hosts))


def test_a_name_that_cannot_be_asked_is_an_error(tmp_path, server):
    client = client_for(tmp_path, server.port)
    for bad in ("a..b", "x" * 64 + ".example", ".".join(["abcdefgh"] * 30)):
        with pytest.raises(DnsError):
            client.resolve(bad)
    assert server.asked == []


# -- the schedule ---------------------------------------------------------------------------------
def test_next_resolution_at_the_ttl_and_changes_are_picked_up(tmp_path, server):
    cache = NameCache(interval=10.0, client=client_for(tmp_path, server.port))
    assert cache.addresses(NAME, 100.0) == BOTH
    assert cache.next_due(NAME) == 130.0 and cache.ttl(NAME) == 30.0  # min(30, 60), not the interval
    server.zone["peers.example."] = {"A": (20, ["198.51.100.34"])}
    assert cache.addresses(NAME, 129.9) == BOTH and server.count("udp") == 2  # not due: not asked
    assert cache.addresses(NAME, 130.0) == ("198.51.100.34",)
    assert cache.next_due(NAME) == 150.0 and server.count("udp") == 4
    server.zone = {}  # NXDOMAIN: the peers are gone; asked again after the interval
    assert cache.addresses(NAME, 150.0) == () and cache.next_due(NAME) == 160.0 and not cache.errors


def test_unanswered_server_keeps_the_last_list_with_backoff(tmp_path, server):
    cache = NameCache(interval=10.0, client=client_for(tmp_path, server.port, timeout=0.2, lifetime=0.4))
    cache.addresses(NAME, 0.0)
    server.mode = "silent"
    assert cache.addresses(NAME, 30.0) == BOTH
    assert "timed out" in cache.errors[NAME] or "expired" in cache.errors[NAME], cache.errors
    assert cache.next_due(NAME) == 31.0
    cache.addresses(NAME, 31.0)
    assert cache.next_due(NAME) == 33.0  # 1, 2, 4 … seconds
    server.mode = "answer"
    assert cache.addresses(NAME, 33.0) == BOTH and NAME not in cache.errors
    assert cache.next_due(NAME) == 63.0


def test_peer_directory_keeps_its_peers_through_failures(tmp_path, server):
    d = PeerDirectory(dns=[PeerSpec(NAME, 2300)],
                      dns_client=client_for(tmp_path, server.port, timeout=0.2, lifetime=0.4))
    want = ["198.51.100.18:2300", "[2001:db8:5:2::2]:2300"]
    assert [str(p) for p in d.refresh(0.0)] == want and d.names.next_due(NAME) == 30.0
    server.mode = "servfail"
    assert [str(p) for p in d.refresh(30.0)] == want and d.errors() and NAME in d.errors()[0]
    server.mode = "silent"
    assert [str(p) for p in d.refresh(31.0)] == want
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\nsearch bad..example\n")  # unusable
    assert [str(p) for p in d.refresh(33.0)] == want and "resolv.conf" in d.errors()[0]
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    server.mode = "answer"
    server.zone = {}
    assert d.refresh(37.0) == () and d.errors() == []  # NXDOMAIN: the name's peers are gone


class FakeClient:
    def __init__(self, answer):
        self.answer = answer
        self.calls = 0

    def resolve(self, name):
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(("ttl", "interval", "delay"), [
    (0, 10.0, 5.0), (3, 10.0, 5.0), (7, 10.0, 7.0), (86400, 10.0, 300.0), (0, 2.0, 2.0), (30, 60.0, 30.0)])
def test_ttl_is_clamped(ttl, interval, delay):
    cache = NameCache(interval=interval, client=FakeClient(Answer(("192.0.2.1",), ttl)))
    cache.addresses(NAME, 0.0)
    assert cache.next_due(NAME) == delay


def test_backoff_is_capped():
    client = FakeClient(DnsError("no nameserver answered"))
    cache = NameCache(client=client)
    now, delays = 0.0, []
    for _ in range(10):
        cache.addresses(NAME, now)
        delays.append(cache.next_due(NAME) - now)
        now = cache.next_due(NAME)
    assert delays == [1, 2, 4, 8, 16, 32, DNS_RETRY_MAX, DNS_RETRY_MAX, DNS_RETRY_MAX, DNS_RETRY_MAX]
    assert client.calls == 10 and cache.addresses(NAME, now - 1) == ()  # not due: no call
    assert client.calls == 10


def test_names_the_client_declines_use_getaddrinfo_at_the_interval():
    calls = []

    def gai(host, *a):
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("198.51.100.18", 0))]

    cache = NameCache(interval=10.0, resolver=gai, client=FakeClient(None))
    assert cache.addresses(NAME, 0.0) == ("198.51.100.18",)
    assert calls == [NAME] and cache.next_due(NAME) == 10.0 and cache.ttl(NAME) is None


def test_the_default_client_is_dnspython_on_etc_resolv_conf():
    cache = NameCache()
    assert isinstance(cache.client, DnsClient) and cache.client.resolv_conf == "/etc/resolv.conf"


def test_the_peer_service_refresh_survives_dns_failures(tmp_path, server):
    """The daemon's refresh (pmtud_relay.peers.service.PeerService.refresh, in its worker thread) with
    a --peers-dns name: a silent nameserver or SERVFAIL keep the peers and report the error; it
    never raises into the daemon's loop. Only the directory's DNS client points at the test
    resolv.conf."""
    key = tmp_path / "peer.key"
    key.write_text("1:" + "5a" * 32 + "\n")
    os.chmod(key, 0o600)
    settings = PeerSettings(fanout="peers", peers_dns=(PeerSpec(NAME, 2300),), listen=(), key_file=str(key))
    clock = [0.0]
    svc = PeerService(settings, lambda: None, out=io.StringIO(), clock=lambda: clock[0], own_addresses=frozenset)
    svc.directory = PeerDirectory(dns=settings.peers_dns,
                                  dns_client=client_for(tmp_path, server.port, timeout=0.2, lifetime=0.4))
    want = ("198.51.100.18", "2001:db8:5:2::2")

    async def refresh_at(t):
        clock[0] = t
        await svc.refresh()
        return tuple(p.address for p in svc.table.peers)

    async def scenario():
        assert await refresh_at(0.0) == want and svc._last_errors == ()
        server.mode = "silent"
        assert await refresh_at(30.0) == want and NAME in svc._last_errors[0]
        server.mode = "servfail"
        assert await refresh_at(31.0) == want and "SERVFAIL" in svc._last_errors[0]
        server.mode = "answer"
        server.zone = {}
        assert await refresh_at(33.0) == () and svc._last_errors == ()  # NXDOMAIN: gone

    asyncio.run(scenario())

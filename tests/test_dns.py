"""TTL-aware peer DNS: the wire format (pmtud_relay.dnswire), the stub resolver against a tiny DNS
server on 127.0.0.1 (pmtud_relay.dnsresolve) and the re-resolve schedule of
pmtud_relay.peersource.NameCache (injected clock: no sleeping for TTLs). Loopback only."""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pmtud_relay import dnswire as w
from pmtud_relay.core.peers import PeerSpec
from pmtud_relay.dnsresolve import DnsClient, in_hosts_file, read_resolv_conf
from pmtud_relay.peersource import DNS_RETRY_MAX, NameCache, PeerDirectory

NAME = "peers.example"
KEY = w.name_key(NAME)


# -- building responses -----------------------------------------------------------------------------
def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, w.CLASS_IN, ttl, len(rdata)) + rdata


def rdata_of(rtype: int, data: str) -> bytes:
    if rtype == w.TYPE_CNAME:
        return w.encode_name(data)
    return ipaddress.ip_address(data).packed


QNAME_PTR = b"\xc0\x0c"  # the question's name, always at offset 12


def respond(query: bytes, records=(), rcode: int = 0, tc: bool = False, qid: int | None = None) -> bytes:
    """An answer to ``query``: records are (owner or None for the question name, type, ttl, data)."""
    (orig_id,) = struct.unpack_from("!H", query)
    flags = 0x8180 | rcode | (0x0200 if tc else 0)
    body = b"".join(rr(QNAME_PTR if owner is None else w.encode_name(owner), t, ttl, rdata_of(t, data))
                    for owner, t, ttl, data in records)
    header = struct.pack("!HHHHHH", orig_id if qid is None else qid, flags, 1, len(records), 0, 0)
    return header + query[12:] + body


def query_of(qtype: int = w.TYPE_A, qid: int = 0x1234) -> bytes:
    return w.build_query(NAME, qtype, qid)


# -- wire ---------------------------------------------------------------------------------------------
def test_build_query_bytes():
    q = w.build_query("peers.example.", w.TYPE_AAAA, 0xBEEF)
    assert q == (b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
                 b"\x05peers\x07example\x00\x00\x1c\x00\x01")
    for bad in ("a..b", "x" * 64 + ".example", ".".join(["abcdefgh"] * 30), "pe\u00e9rs.example"):
        with pytest.raises(w.DnsError):
            w.build_query(bad, w.TYPE_A, 1)
    with pytest.raises(w.DnsError):
        w.build_query(NAME, w.TYPE_A, 0x10000)


def test_parse_answers_with_compression_pointers():
    msg = respond(query_of(), [(None, w.TYPE_A, 30, "198.51.100.18"), (None, w.TYPE_A, 20, "198.51.100.34")])
    resp = w.parse_response(msg)
    assert resp.id == 0x1234 and resp.rcode == 0 and not resp.truncated
    assert resp.question == (KEY, w.TYPE_A, w.CLASS_IN)
    assert [r.name for r in resp.answers] == [KEY, KEY]
    assert w.extract(resp, KEY, w.TYPE_A) == w.Answer(("198.51.100.18", "198.51.100.34"), 20)


def test_pointer_to_a_suffix_and_case_insensitive_names():
    # "PEERS.Example" in the question; the answer owner is "peers" + pointer to "Example" (offset 18)
    q = bytearray(w.build_query("PEERS.Example", w.TYPE_AAAA, 7))
    msg = respond(bytes(q), [])
    owner = b"\x05peers\xc0\x12"
    msg = bytearray(msg)
    msg[7] = 1  # ancount
    msg += rr(owner, w.TYPE_AAAA, 45, ipaddress.ip_address("2001:db8:5:2::2").packed)
    resp = w.parse_response(bytes(msg))
    assert resp.question[0] == KEY
    assert w.extract(resp, KEY, w.TYPE_AAAA) == w.Answer(("2001:db8:5:2::2",), 45)


def test_cname_chain_inside_the_answer():
    msg = respond(query_of(), [
        (None, w.TYPE_CNAME, 300, "a.svc.example"),
        ("a.svc.example", w.TYPE_CNAME, 60, "b.svc.example"),
        ("b.svc.example", w.TYPE_A, 120, "198.51.100.50"),
        ("unrelated.example", w.TYPE_A, 1, "192.0.2.1"),
    ])
    assert w.extract(w.parse_response(msg), KEY, w.TYPE_A) == w.Answer(("198.51.100.50",), 60)
    # the chain's end is missing: no data, not an error
    msg = respond(query_of(), [(None, w.TYPE_CNAME, 300, "a.svc.example")])
    assert w.extract(w.parse_response(msg), KEY, w.TYPE_A) == w.Answer((), None)


def test_cname_loop_is_an_error():
    msg = respond(query_of(), [(None, w.TYPE_CNAME, 30, "a.example"), ("a.example", w.TYPE_CNAME, 30, NAME)])
    with pytest.raises(w.DnsError, match="CNAME loop"):
        w.extract(w.parse_response(msg), KEY, w.TYPE_A)


def test_compression_pointer_loop_is_an_error():
    msg = bytearray(respond(query_of(), [(None, w.TYPE_A, 30, "198.51.100.18")]))
    ans = 12 + len(query_of()) - 12
    msg[ans:ans + 2] = struct.pack("!H", 0xC000 | ans)  # the owner points at itself
    with pytest.raises(w.DnsError, match="pointer"):
        w.parse_response(bytes(msg))


def test_rcodes_nxdomain_nodata_servfail():
    nx = w.parse_response(respond(query_of(), rcode=3))
    assert w.extract(nx, KEY, w.TYPE_A) == w.Answer((), None, True)
    nodata = w.parse_response(respond(query_of()))
    assert w.extract(nodata, KEY, w.TYPE_A) == w.Answer((), None, False)
    with pytest.raises(w.DnsError, match="SERVFAIL"):
        w.extract(w.parse_response(respond(query_of(), rcode=2)), KEY, w.TYPE_A)


def test_truncated_messages():
    full = respond(query_of(), [(None, w.TYPE_A, 30, "198.51.100.18")])
    for cut in range(len(full)):
        with pytest.raises(w.DnsError):
            w.parse_response(full[:cut])
    tc = w.parse_response(respond(query_of(), [(None, w.TYPE_A, 30, "198.51.100.18")], tc=True))
    assert tc.truncated and tc.answers == ()
    with pytest.raises(w.DnsError, match="truncated"):
        w.extract(tc, KEY, w.TYPE_A)


def test_malformed_records_and_queries_are_refused():
    bad_a = respond(query_of(), []) + rr(QNAME_PTR, w.TYPE_A, 30, b"\x01\x02\x03")
    bad_a = bad_a[:7] + b"\x01" + bad_a[8:]
    with pytest.raises(w.DnsError, match="A record"):
        w.parse_response(bad_a)
    with pytest.raises(w.DnsError, match="not a response"):
        w.parse_response(query_of())
    high_ttl = respond(query_of(), [(None, w.TYPE_A, 0x80000001, "198.51.100.18")])
    assert w.parse_response(high_ttl).answers[0].ttl == 0  # RFC 2181: treated as zero


def _mutations():
    base = respond(query_of(), [(None, w.TYPE_CNAME, 30, "a.example"), ("a.example", w.TYPE_A, 30, "192.0.2.1"),
                                ("a.example", w.TYPE_AAAA, 30, "2001:db8::1")])
    edit = st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255))
    return st.builds(lambda edits, cut: _apply(base, edits, cut), st.lists(edit, max_size=6),
                     st.integers(0, len(base)))


def _apply(base: bytes, edits, cut: int) -> bytes:
    b = bytearray(base)
    for i, v in edits:
        b[i] = v
    return bytes(b[:cut] if cut >= 12 else b)


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.binary(max_size=700), _mutations()))
def test_arbitrary_bytes_raise_only_dns_error(data):
    try:
        resp = w.parse_response(data)
    except w.DnsError:
        return
    for qtype in (w.TYPE_A, w.TYPE_AAAA):
        try:
            w.extract(resp, KEY, qtype)
        except w.DnsError:
            pass


# -- resolv.conf / hosts ------------------------------------------------------------------------------
def test_read_resolv_conf(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("# k8s\nsearch ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10 \n"
                    "nameserver fe80::1%lo\noptions ndots:5 timeout:1\nnameserver 192.0.2.1\nnameserver 192.0.2.2\n")
    conf = read_resolv_conf(str(path))
    assert conf.nameservers == ["10.96.0.10", "fe80::1%lo", "192.0.2.1"]  # at most three, like glibc
    assert conf.search == ["ns.svc.cluster.local", "svc.cluster.local"] and conf.ndots == 5
    assert read_resolv_conf(str(tmp_path / "missing")).nameservers == []
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n198.51.100.18 peers.example rack2  # comment\n#192.0.2.9 other.example\n")
    assert in_hosts_file("PEERS.example.", str(hosts)) and not in_hosts_file("other.example", str(hosts))


# -- a tiny DNS server --------------------------------------------------------------------------------
class TinyDns:
    """UDP and TCP on one port. ``zone`` maps a query type to records (see :func:`respond`);
    ``mode``: answer | silent | servfail | truncate (UDP says TC, TCP answers) | spoof_first
    (a wrong-id answer precedes the real one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.zone: dict[int, list] = {}
        self.rcode = 0
        self.mode = "answer"
        self.udp_queries = 0
        self.tcp_queries = 0
        self.tcp_errors: list[str] = []  # TCP exchanges that timed out or were cut short
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
        self.tcp.listen(4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def answer(self, query: bytes, tc: bool = False) -> bytes:
        qtype = struct.unpack_from("!H", query, len(query) - 4)[0]
        if self.mode == "servfail":
            return respond(query, rcode=2)
        return respond(query, [] if tc else self.zone.get(qtype, []), rcode=self.rcode, tc=tc)

    def _run(self):
        while not self._stop.is_set():
            ready, _, _ = select.select([self.udp, self.tcp], [], [], 0.05)
            if self.udp in ready:
                query, client = self.udp.recvfrom(4096)
                self.udp_queries += 1
                if self.mode == "silent":
                    continue
                if self.mode == "spoof_first":
                    wrong = (struct.unpack_from("!H", query)[0] + 1) & 0xFFFF
                    self.udp.sendto(respond(query, [(None, 1, 1, "203.0.113.66")], qid=wrong), client)
                self.udp.sendto(self.answer(query, tc=self.mode == "truncate"), client)
            if self.tcp in ready:
                conn, _ = self.tcp.accept()
                with conn:
                    # A client that connects and stalls must not hang the server (and close()).
                    conn.settimeout(self.TCP_TIMEOUT)
                    try:
                        (n,) = struct.unpack("!H", self._recv_exactly(conn, 2))
                        query = self._recv_exactly(conn, n)
                        self.tcp_queries += 1
                        reply = self.answer(query)
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
                    except (OSError, EOFError) as exc:  # socket.timeout is an OSError
                        self.tcp_errors.append(repr(exc))

    TCP_TIMEOUT = 2.0  # per TCP socket operation
    JOIN_TIMEOUT = 5.0

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
        assert not self._thread.is_alive(), f"TinyDns thread still running {self.JOIN_TIMEOUT} s after close()"


@pytest.fixture
def dns(tmp_path):
    server = TinyDns()
    server.zone = {w.TYPE_A: [(None, w.TYPE_A, 30, "198.51.100.18")],
                   w.TYPE_AAAA: [(None, w.TYPE_AAAA, 60, "2001:db8:5:2::2")]}
    yield server
    server.close()


def client_for(tmp_path, port: int, servers=("127.0.0.1",), timeout: float = 2.0, hosts: str = "") -> DnsClient:
    conf = tmp_path / "resolv.conf"
    conf.write_text("".join(f"nameserver {s}\n" for s in servers))
    hosts_path = tmp_path / "hosts"
    hosts_path.write_text(hosts)
    return DnsClient(str(conf), str(hosts_path), port=port, timeout=timeout)


def test_resolver_returns_addresses_and_min_ttl(tmp_path, dns):
    answer = client_for(tmp_path, dns.port).resolve(NAME)
    assert answer == w.Answer(("198.51.100.18", "2001:db8:5:2::2"), 30)
    assert dns.udp_queries == 2 and dns.tcp_queries == 0


def test_resolver_falls_back_to_tcp_for_a_truncated_answer(tmp_path, dns):
    dns.mode = "truncate"
    dns.zone[w.TYPE_A] = [(None, w.TYPE_A, 40, f"198.51.100.{i}") for i in range(1, 41)]  # > 512 bytes
    answer = client_for(tmp_path, dns.port).resolve(NAME)
    assert len(answer.addresses) == 41 and answer.ttl == 40
    assert dns.tcp_queries == 2 and dns.tcp_errors == []


def test_resolver_ignores_answers_with_the_wrong_id(tmp_path, dns):
    dns.mode = "spoof_first"
    answer = client_for(tmp_path, dns.port).resolve(NAME)
    assert "203.0.113.66" not in answer.addresses and answer.addresses == ("198.51.100.18", "2001:db8:5:2::2")


def test_resolver_tries_the_next_nameserver(tmp_path, dns):
    silent = TinyDns("127.0.0.3", dns.port)
    silent.mode = "silent"
    try:
        # 127.0.0.2: nothing listens (refused); 127.0.0.3: never answers (timeout); then the good one
        client = client_for(tmp_path, dns.port, ("127.0.0.2", "127.0.0.3", "127.0.0.1"), timeout=0.3)
        assert client.resolve(NAME).addresses == ("198.51.100.18", "2001:db8:5:2::2")
        assert silent.udp_queries == 2
        dns.mode = "servfail"
        with pytest.raises(w.DnsError) as exc:
            client.resolve(NAME)
        assert "127.0.0.2" in str(exc.value) and "timed out" in str(exc.value) and "SERVFAIL" in str(exc.value)
    finally:
        silent.close()


def test_resolver_leaves_some_names_to_getaddrinfo(tmp_path, dns):
    client = client_for(tmp_path, dns.port, hosts="198.51.100.18 peers.example\n")
    assert client.resolve(NAME) is None  # in /etc/hosts
    assert client.resolve("peers") is None  # single label: search domains are not applied here
    assert client_for(tmp_path, dns.port, servers=()).resolve("other.example") is None  # no nameserver
    assert dns.udp_queries == 0


# -- the schedule -----------------------------------------------------------------------------------
def test_next_resolution_at_the_ttl_and_changes_are_picked_up(tmp_path, dns):
    cache = NameCache(interval=10.0, client=client_for(tmp_path, dns.port))
    assert cache.addresses(NAME, 100.0) == ("198.51.100.18", "2001:db8:5:2::2")
    assert cache.next_due(NAME) == 130.0 and cache.ttl(NAME) == 30.0  # min(30, 60), not the interval
    dns.zone[w.TYPE_A] = [(None, w.TYPE_A, 20, "198.51.100.34")]
    dns.zone[w.TYPE_AAAA] = []
    assert cache.addresses(NAME, 129.9) == ("198.51.100.18", "2001:db8:5:2::2") and dns.udp_queries == 2
    assert cache.addresses(NAME, 130.0) == ("198.51.100.34",)
    assert cache.next_due(NAME) == 150.0 and dns.udp_queries == 4
    dns.rcode = 3  # NXDOMAIN: the peers are gone; asked again after the interval
    assert cache.addresses(NAME, 150.0) == () and cache.next_due(NAME) == 160.0 and not cache.errors


def test_unanswered_server_keeps_the_last_list_with_backoff(tmp_path, dns):
    cache = NameCache(interval=10.0, client=client_for(tmp_path, dns.port, timeout=0.2))
    cache.addresses(NAME, 0.0)
    dns.mode = "silent"
    assert cache.addresses(NAME, 30.0) == ("198.51.100.18", "2001:db8:5:2::2")
    assert "timed out" in cache.errors[NAME] and cache.next_due(NAME) == 31.0
    cache.addresses(NAME, 31.0)
    assert cache.next_due(NAME) == 33.0  # 1, 2, 4 … seconds
    dns.mode = "answer"
    assert cache.addresses(NAME, 33.0) == ("198.51.100.18", "2001:db8:5:2::2") and NAME not in cache.errors
    assert cache.next_due(NAME) == 63.0


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
    cache = NameCache(interval=interval, client=FakeClient(w.Answer(("192.0.2.1",), ttl)))
    cache.addresses(NAME, 0.0)
    assert cache.next_due(NAME) == delay


def test_backoff_is_capped():
    client = FakeClient(w.DnsError("no nameserver answered"))
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


def test_peer_directory_uses_the_dns_client(tmp_path, dns):
    d = PeerDirectory(dns=[PeerSpec(NAME, 2300)], dns_client=client_for(tmp_path, dns.port))
    assert [str(p) for p in d.refresh(0.0)] == ["198.51.100.18:2300", "[2001:db8:5:2::2]:2300"]
    assert d.names.next_due(NAME) == 30.0

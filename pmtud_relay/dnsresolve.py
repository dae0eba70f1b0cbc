"""A minimal stub resolver that returns TTLs: A and AAAA queries over UDP (TCP when the answer is
truncated) to the nameservers of /etc/resolv.conf. Blocking; it runs in the peer refresh
worker thread.

It only handles what it can answer correctly: :meth:`DnsClient.resolve` returns ``None`` (the
caller then uses ``getaddrinfo``) when resolv.conf names no nameserver, when the name is a single
label (it would need ``search`` domains, which this client does not apply) or when the name is
listed in the hosts file. Every other name is queried as a fully qualified name, as given.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable

from pmtud_relay.dnswire import (
    CLASS_IN, TYPE_A, TYPE_AAAA, Answer, DnsError, Response, build_query, encode_name, extract,
    name_key, parse_response,
)
from pmtud_relay.safefile import FileRefused, open_regular, read_bounded

RESOLV_CONF = "/etc/resolv.conf"
HOSTS = "/etc/hosts"
DNS_PORT = 53
DEFAULT_TIMEOUT = 2.0  # seconds per nameserver, both queries together
MAX_NAMESERVERS = 3  # like glibc (MAXNS)
_MAX_FILE = 1 << 20


@dataclass
class ResolvConf:
    nameservers: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)  # read, not applied
    ndots: int = 1


def _read_text(path: str) -> str:
    """The file's first _MAX_FILE bytes as text (a hosts file may be large: read what fits, as
    before), or "" if it is missing or not a regular file (a FIFO would block the refresh thread
    for good)."""
    try:
        fd, _ = open_regular(path)
    except FileRefused:
        return ""
    try:
        return read_bounded(fd, _MAX_FILE)[:_MAX_FILE].decode("utf-8", "replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def read_resolv_conf(path: str = RESOLV_CONF) -> ResolvConf:
    """nameserver, search/domain and options ndots of a resolv.conf; a missing file is empty."""
    conf = ResolvConf()
    for raw in _read_text(path).splitlines():
        words = raw.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2:
            continue
        key, args = words[0], words[1:]
        if key == "nameserver" and len(conf.nameservers) < MAX_NAMESERVERS:
            conf.nameservers.append(args[0])
        elif key in ("search", "domain"):
            conf.search = args
        elif key == "options":
            for opt in args:
                if opt.startswith("ndots:") and opt[6:].isdigit():
                    conf.ndots = min(int(opt[6:]), 15)
    return conf


def in_hosts_file(name: str, path: str = HOSTS) -> bool:
    want = name.rstrip(".").lower()
    for raw in _read_text(path).splitlines():
        words = raw.split("#", 1)[0].split()
        if any(w.rstrip(".").lower() == want for w in words[1:]):
            return True
    return False


class DnsClient:
    """Resolves a name's A and AAAA records with their TTLs (see the module docstring)."""

    def __init__(self, resolv_conf: str = RESOLV_CONF, hosts: str = HOSTS, port: int = DNS_PORT,
                 timeout: float = DEFAULT_TIMEOUT, query_id: Callable[[], int] | None = None):
        self.resolv_conf = resolv_conf
        self.hosts = hosts
        self.port = port
        self.timeout = timeout
        self.query_id = query_id or (lambda: secrets.randbelow(0x10000))

    def resolve(self, name: str) -> Answer | None:
        """The addresses (A first, then AAAA) and the smallest TTL; ``None`` if this name is
        for getaddrinfo; DnsError (naming each nameserver's failure) if no nameserver answered
        both queries usably. resolv.conf is re-read every time (it is small, and may change)."""
        name = name.rstrip(".")
        if "." not in name or in_hosts_file(name, self.hosts):
            return None
        conf = read_resolv_conf(self.resolv_conf)
        if not conf.nameservers:
            return None
        encode_name(name)  # DnsError for a name that cannot be asked
        failures = []
        for server in conf.nameservers:
            try:
                responses = self._ask(server, name)
                parts = [extract(responses[t], name_key(name), t) for t in (TYPE_A, TYPE_AAAA)]
            except (DnsError, OSError) as exc:
                failures.append(f"{server}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")
                continue
            ttls = [p.ttl for p in parts if p.ttl is not None]
            addresses = tuple(dict.fromkeys(a for p in parts for a in p.addresses))
            return Answer(addresses, min(ttls) if ttls else None, all(p.nxdomain for p in parts))
        raise DnsError("no nameserver answered: " + "; ".join(failures))

    # -- one nameserver ------------------------------------------------------------------------------
    def _ask(self, server: str, name: str) -> dict[int, Response]:
        family, _, _, _, addr = socket.getaddrinfo(server, self.port, 0, socket.SOCK_DGRAM, 0,
                                                   socket.AI_NUMERICHOST)[0]
        deadline = time.monotonic() + self.timeout
        key = name_key(name)
        pending: dict[int, tuple[int, bytes]] = {}
        out: dict[int, Response] = {}
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)  # the kernel drops datagrams from any other source
            peer = sock.getpeername()
            for qtype in (TYPE_A, TYPE_AAAA):
                qid = self.query_id()
                while qid in pending:
                    qid = (qid + 1) & 0xFFFF
                query = build_query(name, qtype, qid)
                pending[qid] = (qtype, query)
                sock.send(query)
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DnsError("timed out")
                sock.settimeout(remaining)
                try:
                    data, source = sock.recvfrom(0xFFFF)
                except socket.timeout:
                    raise DnsError("timed out") from None
                if source[:2] != peer[:2]:
                    continue
                try:
                    response = parse_response(data)
                except DnsError:
                    continue  # garbage: keep waiting for the real answer
                entry = pending.get(response.id)
                if entry is None or response.question != (key, entry[0], CLASS_IN):
                    continue  # not an answer to a question we asked: ignored
                qtype, query = pending.pop(response.id)
                if response.truncated:
                    response = self._ask_tcp(family, addr, query, key, qtype, deadline)
                out[qtype] = response
        return out

    def _ask_tcp(self, family: int, addr, query: bytes, key, qtype: int, deadline: float) -> Response:
        """The same query over TCP (RFC 7766), for a truncated UDP answer."""
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                sock.connect(addr)
                sock.sendall(struct.pack("!H", len(query)) + query)
                (length,) = struct.unpack("!H", _recv_exactly(sock, 2, deadline))
                data = _recv_exactly(sock, length, deadline)
            except socket.timeout:
                raise DnsError("timed out over TCP") from None
        response = parse_response(data)
        qid = struct.unpack_from("!H", query)[0]
        if response.id != qid or response.question != (key, qtype, CLASS_IN):
            raise DnsError("TCP answer does not match the question")
        if response.truncated:
            raise DnsError("truncated answer over TCP")
        return response


def _recv_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout()
        sock.settimeout(remaining)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise DnsError("connection closed mid-answer")
        buf += chunk
    return bytes(buf)

"""A and AAAA lookups with TTLs for DNS peer names, through dnspython's stub resolver. Blocking;
it runs in the peer refresh worker thread, never on the packet path.

``socket.getaddrinfo`` hides TTLs, so :class:`DnsClient` asks the nameservers of
``/etc/resolv.conf`` itself (dnspython reads the file: ``nameserver`` lines in order,
``search``/``domain``, ``options ndots:``/``timeout:``; it retries a truncated UDP answer over
TCP and moves on to the next nameserver when one times out, refuses or fails).

It returns ``None`` (the caller then uses ``getaddrinfo``) for what it cannot answer as the C
library would: a resolv.conf without a usable nameserver, a name listed in the hosts file, and a
single-label name when resolv.conf gives no search list or domain to complete it.
"""

from __future__ import annotations

import io
import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pmtud_relay.safefile import FileRefused, open_regular, read_bounded

if TYPE_CHECKING:  # dnspython is imported when the first name is resolved, not at every CLI
    import dns.resolver  # start: most configurations have no DNS peers

RESOLV_CONF = "/etc/resolv.conf"
HOSTS = "/etc/hosts"
DNS_PORT = 53
DEFAULT_LIFETIME = 5.0  # seconds for one query (A or AAAA) over all nameservers and retries
_MAX_FILE = 1 << 20


class DnsError(Exception):
    """No usable answer: every nameserver failed, timed out, or the name cannot be asked."""


@dataclass(frozen=True)
class Answer:
    addresses: tuple[str, ...]  # A (in address order), then AAAA; no duplicates
    ttl: int | None  # smallest TTL of the records used (CNAMEs included); None without addresses
    nxdomain: bool = False


def _read_text(path: str) -> str | None:
    """The file's first _MAX_FILE bytes as text (a hosts file may be large: read what fits), or
    None if it is missing, unreadable or not a regular file (a FIFO would block the refresh
    worker for good: pmtud_relay/safefile.py)."""
    try:
        fd, _ = open_regular(path)
    except FileRefused:
        return None
    try:
        return read_bounded(fd, _MAX_FILE)[:_MAX_FILE].decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def in_hosts_file(name: str, path: str = HOSTS) -> bool:
    """Whether ``name`` is listed in the hosts file (dnspython does not read it; getaddrinfo does)."""
    want = name.rstrip(".").lower()
    text = _read_text(path)
    if text is None:
        return False
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if any(w.rstrip(".").lower() == want for w in words[1:]):
            return True
    return False


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class DnsClient:
    """Resolves a name's A and AAAA records with their TTLs (see the module docstring).

    ``port`` and ``timeout`` (seconds per nameserver try; default: resolv.conf's
    ``options timeout:``, else dnspython's 2 s) exist for tests and odd set-ups; resolv.conf
    cannot name a port. resolv.conf is re-read at every lookup (it is small and may change)."""

    def __init__(self, resolv_conf: str = RESOLV_CONF, hosts: str = HOSTS, port: int = DNS_PORT,
                 timeout: float | None = None, lifetime: float = DEFAULT_LIFETIME):
        self.resolv_conf = resolv_conf
        self.hosts = hosts
        self.port = port
        self.timeout = timeout
        self.lifetime = lifetime

    def _resolver(self) -> dns.resolver.Resolver | None:
        import dns.exception
        import dns.resolver

        text = _read_text(self.resolv_conf)  # read here, not by dnspython: never a FIFO, bounded
        if text is None:
            return None
        resolver = dns.resolver.Resolver(configure=False)
        try:
            resolver.read_resolv_conf(io.StringIO(text))
        except dns.resolver.NoResolverConfiguration:  # no nameserver line
            return None
        except (dns.exception.DNSException, ValueError) as exc:  # e.g. an unusable search domain
            raise DnsError(f"{self.resolv_conf}: {_error_text(exc)}") from None
        resolver.cache = None  # every lookup asks: the TTL is what we want to learn
        resolver.port = self.port
        if self.timeout is not None:
            resolver.timeout = self.timeout
        resolver.lifetime = max(self.lifetime, resolver.timeout)
        return resolver

    def resolve(self, name: str) -> Answer | None:
        """The addresses and smallest TTL of ``name``; ``None`` if the name is for getaddrinfo;
        DnsError if no nameserver answered usably. NXDOMAIN (after the search list) and an
        answer without records are answers, with no addresses."""
        import dns.exception
        import dns.name
        import dns.rdatatype
        import dns.resolver

        if in_hosts_file(name, self.hosts):
            return None
        resolver = self._resolver()
        if resolver is None:
            return None
        try:
            qname = dns.name.from_text(name, origin=None)
        except (dns.exception.DNSException, ValueError) as exc:
            raise DnsError(_error_text(exc)) from None
        if not qname.is_absolute() and len(qname) < 2 and not resolver.search and (
                resolver.domain is None or resolver.domain == dns.name.root):
            return None  # a bare host name and nothing to complete it with
        try:
            v4 = resolver.resolve(qname, dns.rdatatype.A, search=True, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return Answer((), None, True)
        except (dns.exception.DNSException, ValueError) as exc:  # timeouts, SERVFAIL from all, …
            raise DnsError(_error_text(exc)) from None
        # AAAA for the name the search list settled on, from the nameserver that just answered
        servers = list(resolver.nameservers)
        if v4.nameserver in servers:
            servers.remove(v4.nameserver)
            resolver.nameservers = [v4.nameserver] + servers
        try:
            v6 = resolver.resolve(v4.qname, dns.rdatatype.AAAA, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:  # gone between the two queries
            return Answer((), None, True)
        except (dns.exception.DNSException, ValueError) as exc:
            raise DnsError(_error_text(exc)) from None
        addresses: list[str] = []
        ttls = []
        for answer in (v4, v6):
            if answer.rrset is None or not len(answer.rrset):
                continue
            ttls.append(answer.chaining_result.minimum_ttl)
            addresses += map(str, sorted(ipaddress.ip_address(rdata.address) for rdata in answer.rrset))
        return Answer(tuple(dict.fromkeys(addresses)), min(ttls) if ttls else None)

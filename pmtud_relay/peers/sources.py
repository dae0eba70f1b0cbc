"""Where the peer list comes from: static entries, a watched file, DNS names. Blocking calls
(file reads, DNS queries, ``getaddrinfo``) happen here, in a worker thread; the result is a tuple of
:class:`~pmtud_relay.peers.inbox.Peer` for the sans-IO :class:`~pmtud_relay.peers.inbox.PeerTable`.

* Static (``--peer HOST[:PORT][=PREFIX,…]``, repeatable): addresses are used as given; names
  are resolved like DNS sources.
* File (``--peers-file PATH``): the same syntax, one entry per line, ``#`` comments. Watched by
  polling its identity (mtime, size, inode) every refresh, so an edit, a rename-into-place or a
  Kubernetes ConfigMap update is picked up without inotify. A file that fails to parse keeps the
  previous list (and the error is reported once per change).
* DNS (``--peers-dns NAME[:PORT][=PREFIX,…]``): every A and AAAA record of NAME is a peer, e.g.
  a Kubernetes headless Service. NAME is asked for through dnspython (pmtud_relay.peers.dns: the
  nameservers and search list of /etc/resolv.conf, TCP for truncated answers) and re-resolved
  when the answer's smallest TTL runs out, clamped to [5 s, 300 s] (the floor drops to
  ``dns_interval`` if that is smaller). A failure keeps the last answer and retries after 1, 2,
  4 … 60 s; NXDOMAIN / no records empties it (and is asked again after ``dns_interval``). Names
  in /etc/hosts, single-label names without a search list or domain, and hosts without a
  nameserver in resolv.conf use ``socket.getaddrinfo`` every ``dns_interval`` seconds (default
  10 s).

Own addresses are removed from the result, so a list shared by every host (or a headless
Service that includes this pod) never makes a host send to itself.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Callable

from pmtud_relay.peers.dns import DnsClient, DnsError
from pmtud_relay.peers.inbox import DEFAULT_PORT, Peer, PeerSpec, merge_peers, parse_peer_spec, peer_from_spec
from pmtud_relay.peers.keys import file_stamp
from pmtud_relay.safefile import FileRefused, read_regular

DEFAULT_DNS_INTERVAL = 10.0  # getaddrinfo names and answers without records
DNS_TTL_MIN = 5.0  # a TTL below this (e.g. 0) is treated as this (or as the interval, if smaller)
DNS_TTL_MAX = 300.0  # a longer TTL is treated as this
DNS_RETRY_MIN = 1.0  # after a failed lookup: 1, 2, 4, … seconds
DNS_RETRY_MAX = 60.0
MAX_PEERS_FILE = 1 << 20  # bytes

Resolver = Callable[..., list]  # socket.getaddrinfo's signature


class PeerSourceError(ValueError):
    """A peer entry or file that cannot be used; the message names the source."""


def parse_peers_text(text: str, source: str, default_port: int = DEFAULT_PORT) -> list[PeerSpec]:
    """Entries of a peers file: one ``HOST[:PORT][=PREFIX,…]`` per line, ``#`` comments."""
    specs = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            specs.append(parse_peer_spec(line, default_port))
        except ValueError as exc:
            raise PeerSourceError(f"{source}:{lineno}: {exc}") from None
    return specs


@dataclass
class _Resolution:
    addresses: tuple[str, ...] = ()
    at: float | None = None  # monotonic time of the last attempt
    due: float | None = None  # when to resolve again (None: now)
    ttl: float | None = None  # the TTL the last good answer was scheduled by (None: none known)
    failures: int = 0  # consecutive failed attempts
    error: str | None = None


_DEFAULT_CLIENT = object()


class NameCache:
    """Resolves DNS names, remembering the last good answer of each.

    With the default ``client`` (a :class:`~pmtud_relay.peers.dns.DnsClient`) a name is
    re-resolved when its answer's smallest TTL runs out, clamped to
    [min(DNS_TTL_MIN, interval), DNS_TTL_MAX]; a failure keeps the last answer and retries after
    DNS_RETRY_MIN, doubling up to DNS_RETRY_MAX. Names the client does not handle (no nameserver,
    in /etc/hosts, a bare host name with no search list) and answers without a TTL (no records) use ``resolver``
    (``socket.getaddrinfo``) and/or the fixed ``interval``.

    An injected ``resolver`` without a ``client`` means getaddrinfo only, at the fixed interval
    (the behaviour before TTLs were known).
    """

    def __init__(self, interval: float = DEFAULT_DNS_INTERVAL, resolver: Resolver | None = None,
                 client=_DEFAULT_CLIENT):
        if not interval > 0:
            raise ValueError("DNS re-resolve interval must be > 0")
        self.interval = interval
        if client is _DEFAULT_CLIENT:
            client = DnsClient() if resolver is None else None
        self.client = client
        self.resolver = resolver or socket.getaddrinfo
        self._names: dict[str, _Resolution] = {}
        self.errors: dict[str, str] = {}  # name -> last error text, cleared on success

    def next_due(self, name: str) -> float | None:
        """When ``name`` will be re-resolved (None: not known yet, or at the next refresh)."""
        res = self._names.get(name)
        return None if res is None else res.due

    def ttl(self, name: str) -> float | None:
        res = self._names.get(name)
        return None if res is None else res.ttl

    def addresses(self, name: str, now: float) -> tuple[str, ...]:
        res = self._names.get(name)
        if res is None:
            res = self._names[name] = _Resolution()
        if res.due is None or now >= res.due:
            res.at = now
            if not self._resolve_dns(name, res, now):
                self._resolve_getaddrinfo(name, res, now)
        return res.addresses

    def _resolve_dns(self, name: str, res: _Resolution, now: float) -> bool:
        """TTL-aware resolution; False if the client does not handle this name."""
        if self.client is None:
            return False
        try:
            answer = self.client.resolve(name)
        except (DnsError, OSError, UnicodeError) as exc:
            res.failures += 1
            self.errors[name] = str(exc)  # keep the last answer
            res.due = now + min(DNS_RETRY_MIN * 2 ** min(res.failures - 1, 16), DNS_RETRY_MAX)
            return True
        if answer is None:
            return False
        res.addresses = answer.addresses  # NXDOMAIN / no records: the peers are gone
        res.failures = 0
        self.errors.pop(name, None)
        if answer.ttl is None:
            res.ttl = None
            res.due = now + self.interval
        else:
            res.ttl = float(min(max(answer.ttl, min(DNS_TTL_MIN, self.interval)), DNS_TTL_MAX))
            res.due = now + res.ttl
        return True

    def _resolve_getaddrinfo(self, name: str, res: _Resolution, now: float) -> None:
        res.due = now + self.interval
        res.ttl = None
        try:
            infos = self.resolver(name, None, 0, socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                res.addresses = ()  # the name is gone: so are its peers
            self.errors[name] = str(exc)  # other failures: keep the last answer
        except (OSError, UnicodeError) as exc:
            self.errors[name] = str(exc)
        else:
            found = []
            for family, _type, _proto, _canon, sockaddr in infos:
                host = sockaddr[0]  # an address string for AF_INET/AF_INET6 (an int only for AF_TIPC etc.)
                if family in (socket.AF_INET, socket.AF_INET6) and isinstance(host, str):
                    try:
                        found.append(str(ipaddress.ip_address(host.split("%", 1)[0])))
                    except ValueError:
                        continue
            res.addresses = tuple(dict.fromkeys(found))
            self.errors.pop(name, None)

    def forget_except(self, names: Iterable[str]) -> None:
        keep = set(names)
        for name in list(self._names):
            if name not in keep:
                del self._names[name]
                self.errors.pop(name, None)


class PeersFile:
    """A peers file, re-read when its identity changes."""

    def __init__(self, path: str, default_port: int = DEFAULT_PORT):
        self.path = path
        self.default_port = default_port
        self.specs: list[PeerSpec] = []
        self._stamp: tuple | None = None
        self.error: str | None = None
        self.loads = 0  # successful (re)loads

    def poll(self) -> bool:
        """Re-read the file if it changed. True if the entries changed. A missing file counts
        as empty (peers come and go with it); an unreadable or malformed one keeps the old list."""
        stamp = file_stamp(self.path)
        if stamp == self._stamp and self.loads:
            return False
        self._stamp = stamp
        if stamp is None:
            self.error = f"{self.path}: no such file"
            changed = bool(self.specs)
            self.specs = []
            return changed
        try:
            # Never blocks (a FIFO is refused) and never reads more than the bound.
            data = read_regular(self.path, MAX_PEERS_FILE)
            specs = parse_peers_text(data.decode("utf-8"), self.path, self.default_port)
        except FileRefused as exc:
            self.error = str(exc)
            return False
        except (OSError, UnicodeDecodeError) as exc:
            self.error = f"{self.path}: {getattr(exc, 'strerror', None) or exc}"
            return False
        except PeerSourceError as exc:
            self.error = str(exc)
            return False
        self.error = None
        self.loads += 1
        changed = specs != self.specs
        self.specs = specs
        return changed


class PeerDirectory:
    """All peer sources together. :meth:`refresh` returns the merged, resolved peer list."""

    def __init__(
        self,
        static: Sequence[PeerSpec] = (),
        files: Sequence[str] = (),
        dns: Sequence[PeerSpec] = (),
        dns_interval: float = DEFAULT_DNS_INTERVAL,
        resolver: Resolver | None = None,
        default_port: int = DEFAULT_PORT,
        dns_client=_DEFAULT_CLIENT,
    ):
        self.static = list(static)
        self.files = [PeersFile(p, default_port) for p in files]
        self.dns = list(dns)
        self.names = NameCache(dns_interval, resolver, dns_client)

    def errors(self) -> list[str]:
        out = [f.error for f in self.files if f.error]
        out += [f"{name}: {err}" for name, err in self.names.errors.items()]
        return out

    def refresh(self, now: float, exclude: Iterable[str] = ()) -> tuple[Peer, ...]:
        """Poll files, re-resolve names that are due, and return the peers (own addresses in
        ``exclude`` removed)."""
        for f in self.files:
            f.poll()
        specs = self.static + [s for f in self.files for s in f.specs] + self.dns
        peers: list[Peer] = []
        names = []
        for spec in specs:
            if spec.is_address:
                peers.append(peer_from_spec(spec, spec.host))
            else:
                names.append(spec.host)
                peers.extend(peer_from_spec(spec, a) for a in self.names.addresses(spec.host, now))
        self.names.forget_except(names)
        return merge_peers(peers, exclude)


def local_addresses() -> frozenset[str]:
    """Every address configured on this host's interfaces (to never send to ourselves)."""
    try:
        from pyroute2 import IPRoute
    except ImportError:  # pragma: no cover - pyroute2 is a dependency
        return frozenset()
    out = set()
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if text:
                try:
                    out.add(str(ipaddress.ip_address(text.split("%", 1)[0])))
                except ValueError:
                    continue
    return frozenset(out)

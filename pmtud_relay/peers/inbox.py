"""Peers: who gets a relayed PTB (per-service targeting, per-peer rate limits) and what a
receiver does with one (verify → parse → the same policy → dedup → limits). Sans-IO.

A peer is an (address, port) with an optional set of VIP prefixes it serves. A PTB goes to
every peer that serves its quoted source address (the VIP the big packet came from); a peer
without prefixes serves every VIP. Each peer has its own token bucket, so one busy service
cannot starve the others, and an unreachable peer costs only its own send.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import NamedTuple, Union

from pmtud_relay.core import dedup as _dedup
from pmtud_relay.core.packet import PTB, ParseResult, parse_ipv4, parse_ipv6
from pmtud_relay.core.policy import PACKET_HOST, Policy, VipSet
from pmtud_relay.core.quoted import quoted_tag
from pmtud_relay.core.ratelimit import RateLimiter, TokenBucket
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.slots import slotted
from pmtud_relay.peers import injection as _injection
from pmtud_relay.peers.wire import PeerDecoder, PeerReason

DEFAULT_PORT = 2106  # UDP; this project's choice, not an IANA assignment (docs/peers.md, "Port")
DEFAULT_PEER_RATE = 20.0  # datagrams per second to one peer
DEFAULT_PEER_BURST = 40.0


# -- peer specifications ---------------------------------------------------------------------
@dataclass(frozen=True)
class PeerSpec:
    """A configured peer before name resolution: ``HOST[:PORT][=PREFIX,PREFIX]``."""

    host: str  # an IP address literal or a DNS name
    port: int = DEFAULT_PORT
    prefixes: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None  # None: every VIP

    @property
    def is_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{host}:{self.port}"
        if self.prefixes is not None:
            text += "=" + ",".join(str(p) for p in self.prefixes)
        return text


def _valid_hostname(name: str) -> bool:
    if not name or len(name) > 253 or not name.isascii():
        return False
    labels = name.rstrip(".").split(".")
    return all(
        0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
        and all(c.isalnum() or c in "-_" for c in label)
        for label in labels
    )


def parse_peer_spec(text: str, default_port: int = DEFAULT_PORT) -> PeerSpec:
    """Parse ``HOST[:PORT][=PREFIX,PREFIX]``. HOST is an IPv4 address, an IPv6 address (in
    brackets when a port follows: ``[2001:db8::1]:2106``) or a DNS name. ValueError on error."""
    text = text.strip()
    hostport, eq, prefix_text = text.partition("=")
    hostport = hostport.strip()
    prefixes = None
    if eq:
        items = [p.strip() for p in prefix_text.split(",") if p.strip()]
        if not items:
            raise ValueError(f"{text!r}: '=' must be followed by one or more VIP prefixes")
        try:
            prefixes = tuple(ipaddress.ip_network(p, strict=False) for p in items)
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
    port = default_port
    if hostport.startswith("["):
        host, close, rest = hostport[1:].partition("]")
        if not close:
            raise ValueError(f"{text!r}: missing ']'")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':PORT' after ']'")
            port = _parse_port(rest[1:], text)
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError(f"{text!r}: brackets hold an IPv6 address") from None
    elif hostport.count(":") > 1:  # a bare IPv6 address, no port
        host = hostport
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: not an IPv6 address (write [ADDRESS]:PORT to add a port)") from None
    else:
        host, colon, port_text = hostport.partition(":")
        if colon:
            port = _parse_port(port_text, text)
    if not host:
        raise ValueError(f"{text!r}: no host")
    try:
        host = str(ipaddress.ip_address(host))  # canonical spelling of a literal
    except ValueError:
        if not _valid_hostname(host):
            raise ValueError(f"{text!r}: {host!r} is neither an IP address nor a DNS name") from None
        host = host.lower()
    return PeerSpec(host, port, prefixes)


def _parse_port(port_text: str, text: str) -> int:
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: port must be a number within 1..65535")
    return int(port_text)


# -- resolved peers and targeting --------------------------------------------------------------
@dataclass(frozen=True)
class Peer:
    """A resolved peer. ``name`` is where it came from (the configured host or DNS name)."""

    address: str  # canonical IP address text
    port: int = DEFAULT_PORT
    prefixes: VipSet | None = None  # None: serves every VIP
    name: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    def serves(self, vip: bytes) -> bool:
        return self.prefixes is None or vip in self.prefixes

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


def peer_from_spec(spec: PeerSpec, address: str) -> Peer:
    return Peer(
        str(ipaddress.ip_address(address)),
        spec.port,
        VipSet(spec.prefixes) if spec.prefixes is not None else None,
        spec.host,
    )


def merge_peers(peers: Iterable[Peer], exclude: Iterable[str] = ()) -> tuple[Peer, ...]:
    """Deduplicate by (address, port), drop excluded (own) addresses, sort for a stable order.

    The same peer listed twice with different prefixes serves the union of them (a peer listed
    once without prefixes serves every VIP)."""
    skip = {str(ipaddress.ip_address(a)) for a in exclude}
    merged: dict[tuple[str, int], Peer] = {}
    for peer in peers:
        if peer.address in skip:
            continue
        old = merged.get(peer.key)
        if old is None:
            merged[peer.key] = peer
        elif old.prefixes is not None:
            if peer.prefixes is None:
                merged[peer.key] = Peer(old.address, old.port, None, old.name)
            else:
                merged[peer.key] = Peer(old.address, old.port,
                                        VipSet(old.prefixes.networks + peer.prefixes.networks), old.name)
    return tuple(sorted(merged.values(), key=lambda p: (p.family, ipaddress.ip_address(p.address), p.port)))


class Targets(NamedTuple):
    send: list[Peer]  # peers that serve the VIP and have a token
    limited: list[Peer]  # peers that serve the VIP but whose bucket is empty


class PeerTable:
    """The current peers and a token bucket per peer. Swap peers with :meth:`update`; buckets of
    peers that stay are kept (a list refresh must not hand out a fresh burst)."""

    __slots__ = ("peers", "rate", "burst", "_buckets", "sent", "limited")

    def __init__(self, peers: Iterable[Peer] = (), rate: float = DEFAULT_PEER_RATE,
                 burst: float = DEFAULT_PEER_BURST, now: float = 0.0):
        if not rate > 0 or burst < 1:
            raise ValueError("peer rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.peers: tuple[Peer, ...] = ()
        self._buckets: dict[tuple[str, int], TokenBucket] = {}
        self.sent: dict[tuple[str, int], int] = {}
        self.limited: dict[tuple[str, int], int] = {}
        self.update(peers, now)

    def update(self, peers: Iterable[Peer], now: float) -> bool:
        """Install a new peer list. True if it differs from the current one."""
        peers = tuple(peers)
        changed = peers != self.peers
        self.peers = peers
        keys = {p.key for p in peers}
        self._buckets = {k: b for k, b in self._buckets.items() if k in keys}
        for key in keys:
            if key not in self._buckets:
                self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        self.sent = {k: v for k, v in self.sent.items() if k in keys}
        self.limited = {k: v for k, v in self.limited.items() if k in keys}
        return changed

    def serving(self, vip: bytes) -> list[Peer]:
        """Peers that serve ``vip`` (packed address), ignoring rate limits."""
        return [p for p in self.peers if p.serves(vip)]

    def targets(self, vip: bytes, now: float) -> Targets:
        """Peers to send a PTB about ``vip`` to, spending one token from each."""
        send: list[Peer] = []
        limited: list[Peer] = []
        for peer in self.peers:
            if not peer.serves(vip):
                continue
            bucket = self._buckets[peer.key]
            if bucket.has_token(now):
                bucket.tokens -= 1.0
                send.append(peer)
                self.sent[peer.key] = self.sent.get(peer.key, 0) + 1
            else:
                limited.append(peer)
                self.limited[peer.key] = self.limited.get(peer.key, 0) + 1
        return Targets(send, limited)


# -- the receiver's pipeline ---------------------------------------------------------------------
InboxReason = Union[PeerReason, Reason]


class InboxDecision(NamedTuple):
    """What to do with one datagram from a peer. ``packet`` is the IP packet to inject when
    ``inject`` is true; ``ptb`` is set whenever the packet parsed as a PTB."""

    inject: bool
    reason: InboxReason  # PeerReason.ACCEPTED when injected
    ptb: PTB | None
    packet: bytes | None
    key_id: int | None


@slotted
@dataclass(frozen=True)
class InboxConfig:
    dedup_window: float = _dedup.DEFAULT_WINDOW
    dedup_capacity: int = _dedup.DEFAULT_CAPACITY
    sender_rate: float = 2 * DEFAULT_PEER_RATE  # per sending address; 2x the senders' own limit
    sender_burst: float = 2 * DEFAULT_PEER_BURST
    global_rate: float = 200.0
    global_burst: float = 400.0
    sender_capacity: int = 4096


def parse_packet(packet: bytes) -> ParseResult:
    """Parse a PTB's IP packet (no L2 header) at offset 0: a PTB or a Reason."""
    if not packet:
        return Reason.TOO_SHORT
    version = packet[0] >> 4
    if version == 4:
        return parse_ipv4(packet, 0)
    if version == 6:
        return parse_ipv6(packet, 0)
    return Reason.BAD_IP


def _declared_end(ptb: PTB) -> int:
    pkt = ptb.frame
    if ptb.family == 4:
        return (pkt[2] << 8) | pkt[3]
    return 40 + ((pkt[4] << 8) | pkt[5])


class PeerInbox:
    """Datagram from a peer → decision to inject the PTB into this host's receive path.

    A PTB this host's kernel would not accept from the wire (a source route, a loopback outer
    source: core/injection.py; injection through lo skips those checks) is refused with its own
    reason. The PTB is then re-checked with
    this host's own :class:`Policy` (its quoted source must be one of
    *this* host's VIPs, the outer destination the quoted source, the MTU plausible, …): a valid
    MAC proves who sent the message, not that the PTB is right for this host. Then dedup (the
    same PTB from two peers is injected once: see core/dedup.py) and a token bucket per sending address
    (bounds what even a compromised peer can make this host inject).

    ``now`` is a monotonic clock (dedup, limits); ``wall`` the wall clock (message freshness).
    A decision never leads to a relay: the receive path has no way to call the fan-out.
    """

    def __init__(self, decoder: PeerDecoder, config: InboxConfig | None = None, now: float = 0.0):
        self.decoder = decoder
        self.config = c = config or InboxConfig()
        self.dedup = _dedup.Deduplicator(c.dedup_window, c.dedup_capacity)
        self.limiter = RateLimiter(c.sender_rate, c.sender_burst, c.global_rate, c.global_burst,
                                   c.sender_capacity, now)
        self.counts: dict[InboxReason, int] = {}

    def set_dedup(self, window: float, capacity: int) -> None:
        """Reload: follow a new dedup window or capacity (a fresh table, as the relay's own dedup
        gets on such a change); nothing happens when neither changed."""
        c = self.config
        if (c.dedup_window, c.dedup_capacity) != (window, capacity):
            self.config = replace(c, dedup_window=window, dedup_capacity=capacity)
            self.dedup = _dedup.Deduplicator(window, capacity)

    def _count(self, reason: InboxReason) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def handle(self, data: bytes, now: float, wall: float, sender: str | bytes, policy: Policy) -> InboxDecision:
        decoded = self.decoder.decode(data, wall)
        if isinstance(decoded, PeerReason):
            self._count(decoded)
            return InboxDecision(False, decoded, None, None, None)
        packet = decoded.packet
        ptb = parse_packet(packet)
        if isinstance(ptb, Reason):
            self._count(ptb)
            return InboxDecision(False, ptb, None, None, decoded.key_id)
        if _declared_end(ptb) != len(packet):
            self._count(PeerReason.BAD_LENGTH)
            return InboxDecision(False, PeerReason.BAD_LENGTH, ptb, None, decoded.key_id)
        refused = _injection.refusal(ptb)  # what the kernel would discard: never "injected"
        if refused is not None:
            self._count(refused)
            return InboxDecision(False, refused, ptb, None, decoded.key_id)
        reason = policy.check(ptb, PACKET_HOST)
        if reason is None:
            key = _dedup.dedup_key(ptb)
            tag = quoted_tag(ptb)
            if self.dedup.is_duplicate(key, now, tag, _dedup.span_of(ptb)):
                reason = Reason.DUPLICATE
            else:
                reason = self.limiter.check(sender if isinstance(sender, bytes) else sender.encode(), now)
                if reason is None:
                    self.dedup.remember(key, now, tag)
                    self._count(PeerReason.ACCEPTED)
                    return InboxDecision(True, PeerReason.ACCEPTED, ptb, packet, decoded.key_id)
        self._count(reason)
        return InboxDecision(False, reason, ptb, None, decoded.key_id)

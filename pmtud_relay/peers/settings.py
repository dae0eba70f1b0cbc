"""Peer relay settings: the validated options (:class:`PeerSettings`) and their check.

:func:`build_settings` takes the options as typed (flags, environment variables and TOML keys
generated from ``pmtud_relay.config.SCHEMA``) and refuses a bad one with :class:`PeerConfigError`
naming it; None means the peer relay is off entirely.
"""

from __future__ import annotations

from dataclasses import dataclass

from pmtud_relay.core import dedup as _dedup
from pmtud_relay.peers import wire as peerproto
from pmtud_relay.peers.inbox import DEFAULT_PEER_BURST, DEFAULT_PEER_RATE, DEFAULT_PORT, PeerSpec, parse_peer_spec
from pmtud_relay.peers.keys import KeyFileError, load_keyring
from pmtud_relay.peers.sources import DEFAULT_DNS_INTERVAL

FANOUT_MODES = ("l2", "peers", "both")
DEFAULT_REFRESH = 2.0  # seconds between polls of the peers file and the key file
DEFAULT_LISTEN = ("", DEFAULT_PORT)  # every address, dual-stack
_OFF = ("none", "off", "")
#: Acks per second a host sends at most: what one sender may send it (docs/peers.md, "Acknowledgements").
DEFAULT_ACK_RATE = 2 * DEFAULT_PEER_RATE


class PeerConfigError(ValueError):
    """A bad peer option; the message names the option."""


@dataclass(frozen=True)
class PeerSettings:
    fanout: str = "l2"
    peers: tuple[PeerSpec, ...] = ()
    peers_files: tuple[str, ...] = ()
    peers_dns: tuple[PeerSpec, ...] = ()
    dns_interval: float = DEFAULT_DNS_INTERVAL
    listen: tuple[tuple[str, int], ...] = ()
    key_file: str | None = None
    rate: float = DEFAULT_PEER_RATE
    burst: float = DEFAULT_PEER_BURST
    max_age: float = peerproto.DEFAULT_MAX_AGE
    refresh: float = DEFAULT_REFRESH
    acks: bool = True  # acknowledge owned PTBs received; track acks for PTBs sent
    ack_rate: float = DEFAULT_ACK_RATE  # acks per second this host sends at most (burst: 2x)
    dedup_window: float = _dedup.DEFAULT_WINDOW  # the receiver's dedup: the relay's dedup_window
    dedup_capacity: int = _dedup.DEFAULT_CAPACITY

    @property
    def sends(self) -> bool:
        return self.fanout in ("peers", "both")

    @property
    def l2(self) -> bool:
        return self.fanout in ("l2", "both")


def build_settings(
    fanout: str = "l2",
    peers=(),
    peers_files=(),
    peers_dns=(),
    listen=None,
    key_file: str | None = None,
    rate: float = DEFAULT_PEER_RATE,
    burst: float = DEFAULT_PEER_BURST,
    max_age: float = peerproto.DEFAULT_MAX_AGE,
    dns_interval: float = DEFAULT_DNS_INTERVAL,
    refresh: float = DEFAULT_REFRESH,
    check_key_file: bool = True,
    acks: bool = True,
    ack_rate: float = DEFAULT_ACK_RATE,
    dedup_window: float = _dedup.DEFAULT_WINDOW,
    dedup_capacity: int = _dedup.DEFAULT_CAPACITY,
) -> PeerSettings | None:
    """Validate peer options (strings as typed); None when the peer relay is off entirely.
    PeerConfigError names the option at fault. The flags, environment variables and TOML keys
    that feed it are generated from pmtud_relay.config.SCHEMA (``config.peer_settings``)."""
    from pmtud_relay.peers.receiver import parse_listen

    if fanout not in FANOUT_MODES:
        raise PeerConfigError(f"--fanout: must be one of {', '.join(FANOUT_MODES)}, got {fanout!r}")
    try:
        static = tuple(parse_peer_spec(p) for p in peers or ())
    except ValueError as exc:
        raise PeerConfigError(f"--peer: {exc}") from None
    try:
        dns = tuple(parse_peer_spec(p) for p in peers_dns or ())
    except ValueError as exc:
        raise PeerConfigError(f"--peers-dns: {exc}") from None
    for spec in dns:
        if spec.is_address:
            raise PeerConfigError(f"--peers-dns: {spec.host} is an address, not a name (use --peer)")
    files = tuple(peers_files or ())
    for name, value in (("--peer-rate", rate), ("--peers-dns-interval", dns_interval),
                        ("--peer-max-age", max_age), ("--peers-refresh", refresh),
                        ("--peer-ack-rate", ack_rate)):
        if not value > 0:
            raise PeerConfigError(f"{name}: must be > 0, got {value}")
    if burst < 1:
        raise PeerConfigError(f"--peer-burst: must be >= 1, got {burst}")
    sends = fanout in ("peers", "both")
    has_sources = bool(static or dns or files)
    if sends and not has_sources:
        raise PeerConfigError(f"--fanout {fanout}: name the peers with --peer, --peers-file or --peers-dns")
    if not sends and has_sources:
        raise PeerConfigError("--peer/--peers-file/--peers-dns: peers are only sent to with --fanout peers or both")
    addresses: tuple[tuple[str, int], ...]
    if listen is None or list(listen) == []:
        addresses = (DEFAULT_LISTEN,) if sends else ()
    elif any(str(v).strip().lower() in _OFF for v in listen):
        if len(listen) > 1:
            raise PeerConfigError("--peer-listen: 'none' cannot be combined with addresses")
        addresses = ()
    else:
        try:
            addresses = tuple(dict.fromkeys(parse_listen(v) for v in listen))
        except ValueError as exc:
            raise PeerConfigError(f"--peer-listen: {exc}") from None
    if not sends and not addresses:
        return None
    if not key_file:
        raise PeerConfigError("--peer-key-file: required for the peer relay (one or two KEYID:HEXKEY lines)")
    if check_key_file:
        try:
            load_keyring(key_file)
        except KeyFileError as exc:
            raise PeerConfigError(f"--peer-key-file: {exc}") from None
    return PeerSettings(fanout, static, files, dns, dns_interval, addresses, key_file, rate, burst, max_age, refresh,
                        bool(acks), ack_rate, dedup_window, dedup_capacity)

"""Delivery acknowledgements in the peer protocol. Sans-IO.

A peer that received a relayed PTB, injected it and found the socket that owns the quoted flow
(``pmtud_relay.confirm``) answers the sender with one acknowledgement: a version-1 peer message
with the ``ACK`` flag (:data:`~pmtud_relay.peers.wire.FLAG_ACK`), its own fresh timestamp and
nonce, signed with the same keyring, whose 16-byte body is::

     0                12        13         14             16
    +-----------------+---------+----------+--------------+
    |  acked nonce    | verdict | reserved | delay (ms)   |
    |       12        |    1    |    1     |      2       |
    +-----------------+---------+----------+--------------+

``acked nonce`` is the nonce of the relayed datagram (unique per PTB fan-out); ``verdict`` is an
:class:`AckVerdict`; ``delay`` is the receiver's time from receipt to verdict, saturating at
65535 ms. The whole message is 80 bytes: shorter than any relay datagram (64 bytes of overhead plus
a PTB of at least 56), and the receiver checks that anyway before it sends (:class:`AckGate`).

Two halves:

* :class:`AckGate`, on the receiving host: may this verdict be acknowledged? Only an owner's
  (never an orphan's: with N peers that would be N-1 answers per PTB), at most once per datagram,
  never larger than the datagram, within a token bucket.
* :class:`AckTracker`, on the sending host: a bounded table of the datagrams it sent (keyed by
  nonce, expiring after ``expiry`` seconds) and the acknowledgements it accepts for them. Anything
  else is counted by :class:`AckDrop` and dropped. Each fan-out ends exactly once: ``delivered``
  at its first owner ack, ``not_delivered`` when it expires without one, ``evicted`` when the table
  was full.
"""

from __future__ import annotations

import enum
import struct
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, NamedTuple, Union

from pmtud_relay.core.ratelimit import TokenBucket
from pmtud_relay.peers import wire as peerproto
from pmtud_relay.peers.wire import (
    FLAG_ACK,
    HEADER_LEN,
    MAGIC,
    NONCE_LEN,
    OVERHEAD,
    Keyring,
    PeerDecoder,
    PeerReason,
)

ACK_BODY = struct.Struct("!12sBBH")  # acked nonce, verdict, reserved, delay (ms)
ACK_LEN = OVERHEAD + ACK_BODY.size  # 80
DEFAULT_EXPIRY = 5.0  # seconds a sent datagram waits for its acknowledgements
DEFAULT_PENDING_CAPACITY = 4096  # fan-outs awaiting acks (the relay's global limit: 100/s, burst 500)
_MAX_DELAY_MS = 0xFFFF


class AckVerdict(enum.IntEnum):
    """What the owner found. Wire values are stable; ``label`` is the metric/log label."""

    APPLIED = 1  # the owner's socket took the PMTU
    NOT_APPLIED = 2  # the owner exists, its PMTU did not drop (e.g. a sequence number out of window)

    @property
    def label(self) -> str:
        return self.name.lower()


_VERDICTS = {int(v): v for v in AckVerdict}


class AckDrop(enum.Enum):
    """Why an acknowledgement was dropped. Values are stable metric/log labels."""

    TOO_SHORT = "too_short"
    BAD_MAGIC = "bad_magic"
    BAD_VERSION = "bad_version"
    BAD_FLAGS = "bad_flags"  # not an acknowledgement (e.g. a relay datagram sent to the send socket)
    BAD_LENGTH = "bad_length"
    UNKNOWN_KEY = "unknown_key"
    BAD_MAC = "bad_mac"
    STALE = "stale"
    FUTURE = "future"
    REPLAY = "replay"
    BAD_VERDICT = "bad_verdict"  # a verdict code or reserved byte this version does not define
    UNSOLICITED = "unsolicited"  # names a datagram this host did not send (or forgot: restart, eviction)
    LATE = "late"  # names a datagram whose wait expired
    WRONG_PEER = "wrong_peer"  # from an address the datagram was not sent to
    DUPLICATE = "duplicate"  # a second ack from the same peer for the same datagram

    def __str__(self) -> str:
        return self.value


_FROM_PEER_REASON = {PeerReason(r.value): r for r in AckDrop if r.value in PeerReason._value2member_map_}


class AckBody(NamedTuple):
    acked: bytes  # the relay datagram's nonce
    verdict: AckVerdict
    delay: float  # seconds from receipt to verdict on the acknowledging host


def encode_ack(acked: bytes, verdict: AckVerdict, delay: float, keyring: Keyring, now: float,
               nonce: bytes) -> bytes:
    """One acknowledgement of the datagram whose nonce is ``acked``; signed, stamped ``now``
    (seconds since the epoch), with its own ``nonce`` (12 unpredictable bytes, never reused)."""
    if len(acked) != NONCE_LEN:
        raise ValueError(f"acked nonce must be {NONCE_LEN} bytes")
    delay_ms = min(_MAX_DELAY_MS, max(0, int(delay * 1000)))
    body = ACK_BODY.pack(acked, int(AckVerdict(verdict)), 0, delay_ms)
    return peerproto.sign(FLAG_ACK, body, keyring, now, nonce)


class AckDecoder(PeerDecoder):
    """Verifies acknowledgements: same checks as :class:`PeerDecoder` (MAC, freshness, its own
    replay cache), but only messages with the ACK flag and a 16-byte body pass."""

    __slots__ = ()
    FLAGS = FLAG_ACK

    def _decode(self, data: bytes, now: float):
        if len(data) > ACK_LEN:
            return PeerReason.BAD_LENGTH
        return super()._decode(data, now)


def parse_body(body: bytes) -> AckBody | AckDrop:
    if len(body) != ACK_BODY.size:
        return AckDrop.BAD_LENGTH
    acked, code, reserved, delay_ms = ACK_BODY.unpack(body)
    verdict = _VERDICTS.get(code)
    if verdict is None or reserved:
        return AckDrop.BAD_VERDICT
    return AckBody(acked, verdict, delay_ms / 1000.0)


# -- receiving host ---------------------------------------------------------------------------------
class AckGate:
    """The receiving host's rules for answering. ``allow`` spends a token only when every other
    rule passed. ``counts``: acks allowed and refused (``rate_limited``, ``larger_than_datagram``,
    ``repeat``)."""

    __slots__ = ("bucket", "_acked", "_order", "capacity", "counts")

    def __init__(self, rate: float, burst: float, now: float, capacity: int = 4096):
        self.bucket = TokenBucket(rate, burst, now)
        self._acked: set[bytes] = set()  # nonces already answered (bounded, oldest forgotten first)
        self._order: list[bytes] = []
        self.capacity = capacity
        self.counts: dict[str, int] = {"sent": 0, "rate_limited": 0, "larger_than_datagram": 0, "repeat": 0}

    def allow(self, acked: bytes, ack_len: int, datagram_len: int, now: float) -> str | None:
        """None: send it (the token is spent, ``acked`` remembered); else the refusal reason."""
        counts = self.counts
        if ack_len > datagram_len:
            counts["larger_than_datagram"] += 1
            return "larger_than_datagram"
        if acked in self._acked:  # the replay cache already refuses a second copy; belt and braces
            counts["repeat"] += 1
            return "repeat"
        bucket = self.bucket
        if not bucket.has_token(now):
            counts["rate_limited"] += 1
            return "rate_limited"
        bucket.tokens -= 1.0
        self._acked.add(acked)
        self._order.append(acked)
        if len(self._order) > self.capacity:
            drop = self._order[: len(self._order) // 2]
            del self._order[: len(drop)]
            self._acked.difference_update(drop)
        counts["sent"] += 1
        return None


# -- sending host -----------------------------------------------------------------------------------
class Pending:
    """One fan-out awaiting acknowledgements."""

    __slots__ = ("sent", "peers", "info", "acks")

    def __init__(self, sent: float, peers: frozenset[str], info: Any):
        self.sent = sent  # monotonic seconds
        self.peers = peers  # addresses the datagram went to
        self.info = info  # the caller's description of the PTB (for its log line)
        self.acks: dict[str, AckVerdict] = {}


class AckEvent(NamedTuple):
    """An accepted acknowledgement."""

    peer: str
    verdict: AckVerdict
    rtt: float  # seconds from send to this ack (sender's monotonic clock)
    delay: float  # the acknowledging host's receipt-to-verdict time
    first: bool  # the first owner ack of this fan-out
    info: Any


AckResult = Union[AckEvent, AckDrop]


class AckTracker:
    """Datagrams this host sent, and the acknowledgements it accepts for them.

    Checks, cheapest first so a flood of junk costs no HMAC: structure and magic; the acked nonce
    names a pending datagram (else ``late`` if it expired recently, else ``unsolicited``); then
    the full :class:`AckDecoder` checks (key, MAC, freshness, replay); then the verdict; then the
    sender is one the datagram went to and has not acknowledged it before.
    """

    def __init__(self, decoder: AckDecoder, expiry: float = DEFAULT_EXPIRY,
                 capacity: int = DEFAULT_PENDING_CAPACITY):
        if not expiry > 0 or capacity < 1:
            raise ValueError("expiry must be > 0 and capacity >= 1")
        self.decoder = decoder
        self.expiry = expiry
        self.capacity = capacity
        self._pending: OrderedDict[bytes, Pending] = OrderedDict()
        self._expired: OrderedDict[bytes, float] = OrderedDict()  # nonce -> when it expired
        self.acks: dict[AckVerdict, int] = dict.fromkeys(AckVerdict, 0)
        self.drops: dict[AckDrop, int] = dict.fromkeys(AckDrop, 0)
        self.fanouts: dict[str, int] = {"delivered": 0, "not_delivered": 0, "evicted": 0}

    def __len__(self) -> int:
        return len(self._pending)

    def sent(self, nonce: bytes, peers: Iterable[str], now: float, info: Any = None) -> None:
        """Register a datagram sent to ``peers`` (addresses) at monotonic ``now``."""
        self.expire(now)
        pending = self._pending
        while len(pending) >= self.capacity:
            old_nonce, old = pending.popitem(last=False)
            if not old.acks:
                self.fanouts["evicted"] += 1
            self._remember_expired(old_nonce, now)
        pending[nonce] = Pending(now, frozenset(peers), info)

    def expire(self, now: float) -> list[Pending]:
        """End the fan-outs whose wait is over; return those no owner acknowledged."""
        pending, horizon = self._pending, now - self.expiry
        unacked = []
        while pending:
            nonce, entry = next(iter(pending.items()))
            if entry.sent > horizon:
                break
            del pending[nonce]
            if not entry.acks:
                self.fanouts["not_delivered"] += 1
                unacked.append(entry)
            self._remember_expired(nonce, now)
        expired = self._expired
        while expired:
            nonce, when = next(iter(expired.items()))
            if when > horizon and len(expired) <= self.capacity:
                break
            del expired[nonce]
        return unacked

    def _remember_expired(self, nonce: bytes, now: float) -> None:
        self._expired[nonce] = now
        self._expired.move_to_end(nonce)

    def _drop(self, reason: AckDrop) -> AckDrop:
        self.drops[reason] += 1
        return reason

    def handle(self, data: bytes, sender: str, now: float, wall: float) -> AckResult:
        """One datagram that arrived on a send socket from ``sender`` (a normalised address);
        ``now`` monotonic, ``wall`` seconds since the epoch."""
        self.expire(now)
        entry = None
        if len(data) == ACK_LEN and data[:4] == MAGIC:
            acked = bytes(data[HEADER_LEN:HEADER_LEN + NONCE_LEN])
            entry = self._pending.get(acked)
            if entry is None:
                return self._drop(AckDrop.LATE if acked in self._expired else AckDrop.UNSOLICITED)
        result = self.decoder.decode(data, wall)
        if isinstance(result, PeerReason):
            return self._drop(_FROM_PEER_REASON[result])
        body = parse_body(result.packet)
        if isinstance(body, AckDrop):
            return self._drop(body)
        if entry is None:  # unreachable: a decoded ack is ACK_LEN long; kept total for safety
            return self._drop(AckDrop.UNSOLICITED)
        if sender not in entry.peers:
            return self._drop(AckDrop.WRONG_PEER)
        if sender in entry.acks:
            return self._drop(AckDrop.DUPLICATE)
        first = not entry.acks
        entry.acks[sender] = body.verdict
        self.acks[body.verdict] += 1
        if first:
            self.fanouts["delivered"] += 1
        return AckEvent(sender, body.verdict, now - entry.sent, body.delay, first, entry.info)

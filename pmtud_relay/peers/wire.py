"""The peer relay protocol: one authenticated UDP datagram per relayed PTB. Sans-IO.

Wire format (network byte order; docs/peers.md has the diagram and the rationale)::

     0      4       5       6         8            16          28       30       32
    +------+-------+-------+---------+------------+-----------+--------+--------+----------+-----+
    |"PMTR"|version| flags | key id  | timestamp  |   nonce   | length |reserved| packet   | MAC |
    |  4   |   1   |   1   |    2    | 8 (ms UTC) |    12     |   2    |   2    | length   | 32  |
    +------+-------+-------+---------+------------+-----------+--------+--------+----------+-----+

``packet`` is the PTB's IP packet exactly as received (outer IP header onwards, no L2, no
padding); ``MAC`` is HMAC-SHA256 over everything before it, keyed with the key ``key id``
names. Version 1 defines one flag, ``ACK`` (bit 0): without it the message is a relayed PTB as
above; with it, an acknowledgement (:mod:`pmtud_relay.peers.ack`) whose payload is a fixed
16-byte body instead of a packet. Other flag bits and ``reserved`` must be 0.

Nothing here opens a socket, reads a clock or draws random numbers: the caller passes the
wall-clock time (seconds since the epoch) and the nonce. :class:`PeerDecoder` is total: for any
input it returns a :class:`Decoded` or a :class:`PeerReason`; it never raises.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import hmac
import struct
from collections.abc import Iterable
from typing import NamedTuple, Union

from pmtud_relay.core.packet import PTB

MAGIC = b"PMTR"
VERSION = 1
FLAG_ACK = 0x01  # the message is an acknowledgement (core/peerack.py), not a relayed PTB
HEADER = struct.Struct("!4sBBHQ12sHH")  # magic, version, flags, key id, ts (ms), nonce, length, reserved
HEADER_LEN = HEADER.size  # 32
NONCE_LEN = 12
NONCE_OFFSET = 16  # where the nonce sits in the header
MAC_LEN = 32  # HMAC-SHA256, untruncated
OVERHEAD = HEADER_LEN + MAC_LEN  # 64
#: Largest packet one datagram carries: an IPv4 UDP datagram's payload limit minus the overhead.
MAX_PACKET = 65507 - OVERHEAD
MIN_KEY_LEN = 16  # bytes (128 bits)
MAX_KEY_LEN = 64  # bytes: one SHA-256 block, so HMAC never hashes the key first
MAX_KEYS = 2  # the current key and the next (or previous) one: rotation without a flag day

DEFAULT_MAX_AGE = 10.0  # seconds a message stays acceptable either side of the receiver's clock
DEFAULT_REPLAY_CAPACITY = 16384  # nonces remembered

_U16 = struct.Struct("!H").unpack_from


class PeerReason(enum.Enum):
    """Why a peer datagram was accepted or rejected. Values are stable metric/log labels."""

    ACCEPTED = "accepted"
    TOO_SHORT = "too_short"  # shorter than header + MAC, or than the length field says
    BAD_MAGIC = "bad_magic"  # not our protocol at all
    BAD_VERSION = "bad_version"  # a version this build does not speak
    BAD_FLAGS = "bad_flags"  # flags or reserved bits this version does not define
    BAD_LENGTH = "bad_length"  # longer than the length field says, or an empty packet
    UNKNOWN_KEY = "unknown_key"  # key id not among the active keys
    BAD_MAC = "bad_mac"  # HMAC does not verify: forged, tampered or the wrong key
    STALE = "stale"  # timestamp older than max_age
    FUTURE = "future"  # timestamp more than max_age ahead (clock skew or a forged stamp)
    REPLAY = "replay"  # nonce seen within the window (or older than the replay cache reaches)
    # After the PTB parsed (core/injection.py): PTBs the kernel would not accept from the wire.
    SOURCE_ROUTED = "source_routed"  # IPv4 LSRR/SSRR or IPv6 routing type 0, outer or quoted
    LOOPBACK_SOURCE = "loopback_source"  # outer source in 127.0.0.0/8 or ::1

    def __str__(self) -> str:
        return self.value


class Decoded(NamedTuple):
    """An authenticated, fresh, first-seen message."""

    key_id: int
    timestamp: float  # seconds since the epoch (sender's clock)
    nonce: bytes
    packet: bytes  # the PTB's IP packet (an acknowledgement's body for FLAG_ACK)


DecodeResult = Union[Decoded, PeerReason]


# -- keys ------------------------------------------------------------------------------------
class Keyring:
    """One or two active HMAC keys. The first signs what this host sends; all verify.

    Rotation (docs/peers.md): add the new key second everywhere; then make it first everywhere;
    then drop the old one. At every step every sender's key is known to every receiver.
    """

    __slots__ = ("_keys", "send_id", "send_key")

    def __init__(self, keys: Iterable[tuple[int, bytes]]):
        pairs = [(int(k), bytes(v)) for k, v in keys]
        if not 1 <= len(pairs) <= MAX_KEYS:
            raise ValueError(f"need 1 or {MAX_KEYS} keys, got {len(pairs)}")
        ids = [k for k, _ in pairs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate key id {ids[0]}")
        for key_id, key in pairs:
            if not 0 <= key_id <= 0xFFFF:
                raise ValueError(f"key id must be within 0..65535, got {key_id}")
            if not MIN_KEY_LEN <= len(key) <= MAX_KEY_LEN:
                raise ValueError(
                    f"key {key_id}: {len(key)} bytes; a key must be {MIN_KEY_LEN}..{MAX_KEY_LEN} bytes "
                    f"({2 * MIN_KEY_LEN}..{2 * MAX_KEY_LEN} hex digits)"
                )
        self._keys = dict(pairs)
        self.send_id, self.send_key = pairs[0]

    def get(self, key_id: int) -> bytes | None:
        return self._keys.get(key_id)

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(self._keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keyring) and self.send_id == other.send_id and self._keys == other._keys

    def __hash__(self) -> int:
        return hash((self.send_id, tuple(sorted(self._keys.items()))))

    def __repr__(self) -> str:  # never print key material
        return f"Keyring(ids={list(self._keys)}, send={self.send_id})"


def parse_keyring(text: str) -> Keyring:
    """Parse a key file: one or two ``keyid:hexkey`` lines; blank lines and ``#`` comments ignored.

    ``keyid`` is a decimal number 0..65535. Raises ValueError naming the line (never the key).
    """
    pairs: list[tuple[int, bytes]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key_id_text, sep, hex_text = line.partition(":")
        key_id_text, hex_text = key_id_text.strip(), hex_text.strip()
        if not sep or not key_id_text.isascii() or not key_id_text.isdigit():
            raise ValueError(f"line {lineno}: expected KEYID:HEXKEY with a decimal key id")
        key_id = int(key_id_text)
        if key_id > 0xFFFF:
            raise ValueError(f"line {lineno}: key id must be within 0..65535")
        if not hex_text.isascii() or len(hex_text) % 2:
            raise ValueError(f"line {lineno}: the key must be an even number of hex digits")
        try:
            key = bytes.fromhex(hex_text)
        except ValueError:
            raise ValueError(f"line {lineno}: the key is not hexadecimal") from None
        if any(key_id == k for k, _ in pairs):
            raise ValueError(f"line {lineno}: key id {key_id} appears twice")
        pairs.append((key_id, key))
    if not pairs:
        raise ValueError("no key found (expected one or two KEYID:HEXKEY lines)")
    if len(pairs) > MAX_KEYS:
        raise ValueError(f"{len(pairs)} keys; at most {MAX_KEYS} may be active (current and next)")
    try:
        return Keyring(pairs)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


# -- encoding ----------------------------------------------------------------------------------
def ptb_packet(ptb: PTB) -> bytes:
    """The PTB's IP packet: from its outer IP header to the end its length field states
    (no L2 header, no Ethernet padding)."""
    frame, l3 = ptb.frame, ptb.l3_offset
    if ptb.family == 4:
        end = l3 + _U16(frame, l3 + 2)[0]
    else:
        end = l3 + 40 + _U16(frame, l3 + 4)[0]
    return bytes(frame[l3:end])


def encode(packet: bytes, keyring: Keyring, now: float, nonce: bytes) -> bytes:
    """One datagram carrying ``packet``, stamped ``now`` (seconds since the epoch), signed with
    the keyring's send key. ``nonce`` must be 12 unpredictable bytes, never reused."""
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes")
    if not 0 < len(packet) <= MAX_PACKET:
        raise ValueError(f"packet must be 1..{MAX_PACKET} bytes, got {len(packet)}")
    return sign(0, packet, keyring, now, nonce)


def sign(flags: int, payload: bytes, keyring: Keyring, now: float, nonce: bytes) -> bytes:
    """Header (``flags``, fresh stamp, ``nonce``) + ``payload`` + HMAC over both."""
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"nonce must be {NONCE_LEN} bytes")
    stamp = int(now * 1000)
    if not 0 <= stamp < 1 << 64:
        raise ValueError("timestamp out of range")
    head = HEADER.pack(MAGIC, VERSION, flags, keyring.send_id, stamp, nonce, len(payload), 0)
    body = head + payload
    return body + hmac.new(keyring.send_key, body, hashlib.sha256).digest()


# -- decoding ----------------------------------------------------------------------------------
class ReplayCache:
    """Nonces of accepted messages, each kept until its timestamp leaves the acceptance window.

    Bounded: when full, the entry with the oldest timestamp is evicted and becomes the *floor*:
    from then on any message stamped at or before the floor is refused as a possible replay
    (its nonce may have been forgotten). So the bound never opens a replay hole; under a flood
    of valid traffic it can at worst refuse some old-but-fresh messages, which is safe.
    """

    __slots__ = ("capacity", "_seen", "_heap", "floor", "evictions")

    def __init__(self, capacity: int = DEFAULT_REPLAY_CAPACITY):
        if capacity < 1:
            raise ValueError("replay cache capacity must be >= 1")
        self.capacity = capacity
        self._seen: set[bytes] = set()
        self._heap: list[tuple[int, bytes]] = []  # (timestamp ms, nonce): min-heap by timestamp
        self.floor = -1  # ms; messages stamped <= floor are refused
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._seen)

    def expire(self, horizon_ms: int) -> None:
        """Forget nonces stamped before ``horizon_ms`` (they are refused as stale anyway) and
        raise the floor to them: should the wall clock step back later, a forgotten message is
        still refused instead of becoming fresh, and first-time, again."""
        heap, seen = self._heap, self._seen
        while heap and heap[0][0] < horizon_ms:
            stamp, nonce = heapq.heappop(heap)
            seen.discard(nonce)
            if stamp > self.floor:
                self.floor = stamp

    def seen(self, nonce: bytes, stamp_ms: int) -> bool:
        return stamp_ms <= self.floor or nonce in self._seen

    def add(self, nonce: bytes, stamp_ms: int) -> None:
        heap, seen = self._heap, self._seen
        while len(seen) >= self.capacity:
            old_stamp, old_nonce = heapq.heappop(heap)
            seen.discard(old_nonce)
            if old_stamp > self.floor:
                self.floor = old_stamp
            self.evictions += 1
        seen.add(nonce)
        heapq.heappush(heap, (stamp_ms, nonce))


class PeerDecoder:
    """Verify and decode datagrams. Holds the keyring and the replay cache.

    ``decode`` checks, in order: size, magic, version, flags, length, key id, MAC (constant
    time), timestamp (stale / future, ``max_age`` seconds either way) and replay. Only a message
    that passed the MAC check can enter the replay cache, so unauthenticated traffic cannot
    evict anything. ``counts`` tallies every outcome.
    """

    __slots__ = ("keyring", "max_age", "_max_age_ms", "replay", "counts")

    #: The flags a message this decoder accepts carries: 0 (a relayed PTB). Any other value,
    #: an acknowledgement included, is BAD_FLAGS here (acks go to the sender's send socket).
    FLAGS = 0

    def __init__(
        self,
        keyring: Keyring,
        max_age: float = DEFAULT_MAX_AGE,
        replay_capacity: int = DEFAULT_REPLAY_CAPACITY,
    ):
        if not max_age > 0:
            raise ValueError("max_age must be > 0")
        self.keyring = keyring
        self.max_age = max_age
        self._max_age_ms = int(max_age * 1000)
        self.replay = ReplayCache(replay_capacity)
        self.counts: dict[PeerReason, int] = dict.fromkeys(PeerReason, 0)

    def set_keyring(self, keyring: Keyring) -> None:
        """Swap keys (rotation). The replay cache is kept: nonces are unique across keys."""
        self.keyring = keyring

    def decode(self, data: bytes, now: float) -> DecodeResult:
        result = self._decode(data, now)
        self.counts[result if isinstance(result, PeerReason) else PeerReason.ACCEPTED] += 1
        return result

    def _decode(self, data: bytes, now: float) -> DecodeResult:
        n = len(data)
        if n < OVERHEAD:
            return PeerReason.TOO_SHORT
        magic, version, flags, key_id, stamp, nonce, length, reserved = HEADER.unpack_from(data, 0)
        if magic != MAGIC:
            return PeerReason.BAD_MAGIC
        if version != VERSION:
            return PeerReason.BAD_VERSION
        if flags != self.FLAGS or reserved:
            return PeerReason.BAD_FLAGS
        end = HEADER_LEN + length
        if n < end + MAC_LEN:
            return PeerReason.TOO_SHORT
        if n > end + MAC_LEN or length == 0:
            return PeerReason.BAD_LENGTH
        key = self.keyring.get(key_id)
        if key is None:
            return PeerReason.UNKNOWN_KEY
        body = data[:end]
        if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), data[end:]):
            return PeerReason.BAD_MAC
        now_ms = int(now * 1000)
        replay = self.replay
        replay.expire(now_ms - self._max_age_ms)
        if stamp < now_ms - self._max_age_ms:
            return PeerReason.STALE
        if stamp > now_ms + self._max_age_ms:
            return PeerReason.FUTURE
        if replay.seen(nonce, stamp):
            return PeerReason.REPLAY
        replay.add(nonce, stamp)
        return Decoded(key_id, stamp / 1000.0, nonce, bytes(body[HEADER_LEN:]))

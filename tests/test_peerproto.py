"""The peer relay wire protocol (pmtud_relay.peers.wire): encode, verify, reject, rotate."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmtud_relay.core.packet import parse_frame
from pmtud_relay.peers import wire as pp
from pmtud_relay.peers.injection import INJECTION_REASONS
from pmtud_relay.peers.wire import (
    HEADER_LEN,
    MAC_LEN,
    OVERHEAD,
    Decoded,
    Keyring,
    PeerDecoder,
    PeerReason,
    ReplayCache,
    encode,
    parse_keyring,
    ptb_packet,
)
from tests.support.frames import ptb_v4, ptb_v6

KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 132))
RING = Keyring([(1, KEY1)])
NOW = 1_700_000_000.0
PACKET = ptb_v4()[14:]
NONCES = (i.to_bytes(12, "big") for i in range(1, 1 << 30))


def nonce() -> bytes:
    return next(NONCES)


def msg(packet: bytes = PACKET, ring: Keyring = RING, now: float = NOW, n: bytes | None = None) -> bytes:
    return encode(packet, ring, now, n or nonce())


def resign(data: bytes, key: bytes = KEY1) -> bytes:
    """Recompute the MAC after editing a header field (what a key holder could do)."""
    body = data[:-MAC_LEN]
    return body + hmac.new(key, body, hashlib.sha256).digest()


def test_layout_is_the_documented_one():
    data = encode(PACKET, RING, 1234.5678, b"\xab" * 12)
    assert len(data) == OVERHEAD + len(PACKET) == 64 + len(PACKET)
    assert data[0:4] == b"PMTR"
    assert data[4] == 1 and data[5] == 0
    assert struct.unpack("!H", data[6:8])[0] == 1
    assert struct.unpack("!Q", data[8:16])[0] == 1234567  # milliseconds
    assert data[16:28] == b"\xab" * 12
    assert struct.unpack("!HH", data[28:32]) == (len(PACKET), 0)
    assert data[32:32 + len(PACKET)] == PACKET
    assert data[-32:] == hmac.new(KEY1, data[:-32], hashlib.sha256).digest()


@pytest.mark.parametrize("packet", [ptb_v4()[14:], ptb_v6()[14:]], ids=["ipv4", "ipv6"])
def test_round_trip(packet):
    n = nonce()
    result = PeerDecoder(RING).decode(encode(packet, RING, NOW, n), NOW + 0.5)
    assert result == Decoded(1, NOW, n, packet)


def test_ptb_packet_strips_l2_and_padding():
    frame = ptb_v4(trailer=b"\x00" * 18, vlans=((0x8100, 7),))
    ptb = parse_frame(frame)
    assert ptb_packet(ptb) == frame[18:-18]
    frame6 = ptb_v6(trailer=b"\x00" * 4)
    assert ptb_packet(parse_frame(frame6)) == frame6[14:-4]


def test_each_rejection_reason():
    d = PeerDecoder(RING, max_age=5.0)
    good = msg()
    assert d.decode(good[:OVERHEAD - 1], NOW) is PeerReason.TOO_SHORT
    assert d.decode(b"", NOW) is PeerReason.TOO_SHORT
    assert d.decode(b"XMTR" + good[4:], NOW) is PeerReason.BAD_MAGIC
    assert d.decode(good[:4] + b"\x02" + good[5:], NOW) is PeerReason.BAD_VERSION
    assert d.decode(resign(good[:5] + b"\x01" + good[6:]), NOW) is PeerReason.BAD_FLAGS
    assert d.decode(resign(good[:30] + b"\x00\x01" + good[32:]), NOW) is PeerReason.BAD_FLAGS
    assert d.decode(good[:-1], NOW) is PeerReason.TOO_SHORT  # shorter than length + MAC
    assert d.decode(good + b"\x00", NOW) is PeerReason.BAD_LENGTH  # trailing bytes
    empty = resign(good[:28] + b"\x00\x00" + good[30:32] + good[-32:])
    assert d.decode(empty, NOW) is PeerReason.BAD_LENGTH
    assert d.decode(msg(ring=Keyring([(9, KEY1)])), NOW) is PeerReason.UNKNOWN_KEY
    assert d.decode(msg(ring=Keyring([(1, KEY2)])), NOW) is PeerReason.BAD_MAC  # same id, wrong key
    tampered = bytearray(good)
    tampered[HEADER_LEN + 25] ^= 0x01  # a byte of the PTB
    assert d.decode(bytes(tampered), NOW) is PeerReason.BAD_MAC
    assert d.decode(good[:-1] + bytes([good[-1] ^ 1]), NOW) is PeerReason.BAD_MAC
    assert d.decode(msg(now=NOW - 5.001), NOW) is PeerReason.STALE
    assert d.decode(msg(now=NOW + 5.001), NOW) is PeerReason.FUTURE
    assert isinstance(d.decode(msg(now=NOW - 4.9), NOW), Decoded)
    assert isinstance(d.decode(msg(now=NOW + 4.9), NOW), Decoded)
    assert isinstance(d.decode(good, NOW), Decoded)
    assert d.decode(good, NOW + 1) is PeerReason.REPLAY
    # every reason was counted
    # (the injection checks run after decoding, in the inbox: tests/test_unmatchable.py)
    decoder_reasons = [r for r in PeerReason if r not in INJECTION_REASONS]
    assert all(d.counts[r] for r in decoder_reasons), {r: n for r, n in d.counts.items() if not n}


def test_stale_window_is_configurable():
    old = msg(now=NOW - 30)
    assert PeerDecoder(RING, max_age=10).decode(old, NOW) is PeerReason.STALE
    assert isinstance(PeerDecoder(RING, max_age=60).decode(old, NOW), Decoded)
    with pytest.raises(ValueError):
        PeerDecoder(RING, max_age=0)


def test_a_replay_is_refused_also_after_a_key_swap():
    d = PeerDecoder(RING)
    data = msg()
    assert isinstance(d.decode(data, NOW), Decoded)
    d.set_keyring(Keyring([(1, KEY1), (2, KEY2)]))
    assert d.decode(data, NOW + 2) is PeerReason.REPLAY


def test_a_replay_after_the_window_is_stale_not_accepted():
    d = PeerDecoder(RING, max_age=5)
    data = msg()
    assert isinstance(d.decode(data, NOW), Decoded)
    assert d.decode(data, NOW + 5.5) is PeerReason.STALE
    assert len(d.replay) == 0  # expired with the window


def test_rotation_with_two_keys():
    old, new = (1, KEY1), (2, KEY2)
    a_before = Keyring([old])  # everyone starts with key 1
    step1 = Keyring([old, new])  # step 1: add key 2 second everywhere (still signing with 1)
    step2 = Keyring([new, old])  # step 2: sign with key 2, still accept 1
    step3 = Keyring([new])  # step 3: drop key 1
    assert step1.send_id == 1 and step2.send_id == 2
    # during every step, a message from a host one step behind or ahead is accepted
    for sender, receiver in [(a_before, step1), (step1, a_before), (step1, step2), (step2, step1),
                             (step2, step3), (step3, step2)]:
        out = PeerDecoder(receiver).decode(msg(ring=sender), NOW)
        assert isinstance(out, Decoded), (sender, receiver, out)
        assert out.key_id == sender.send_id
    # two steps apart is exactly what the procedure forbids
    assert PeerDecoder(step3).decode(msg(ring=a_before), NOW) is PeerReason.UNKNOWN_KEY


def test_replay_cache_is_bounded_and_never_reopens_a_replay():
    d = PeerDecoder(RING, max_age=100, replay_capacity=8)
    sent = [msg(now=NOW + i * 0.01) for i in range(20)]
    for data in sent:
        assert isinstance(d.decode(data, NOW), Decoded)
    assert len(d.replay) == 8
    assert d.replay.evictions == 12
    for data in sent:  # evicted or remembered: every one of them is still refused
        assert d.decode(data, NOW) is PeerReason.REPLAY
    # a new message stamped after the floor is fine
    assert isinstance(d.decode(msg(now=NOW + 1), NOW), Decoded)


def test_replay_cache_expires_by_time():
    cache = ReplayCache(capacity=4)
    cache.add(b"a" * 12, 1000)
    cache.add(b"b" * 12, 2000)
    cache.expire(1500)
    assert len(cache) == 1 and not cache.seen(b"a" * 12, 1600) and cache.seen(b"b" * 12, 2000)
    with pytest.raises(ValueError):
        ReplayCache(0)


def test_unauthenticated_traffic_never_enters_the_replay_cache():
    d = PeerDecoder(RING)
    for i in range(50):
        d.decode(msg(ring=Keyring([(1, KEY2)])), NOW)
    assert len(d.replay) == 0


@pytest.mark.parametrize(
    "text, error",
    [
        ("", "no key"),
        ("# only a comment\n", "no key"),
        ("1:" + "00" * 8, "16..64 bytes"),
        ("1:" + "00" * 65, "16..64 bytes"),
        ("1:" + "0" * 33, "even number"),
        ("1:" + "zz" * 16, "not hexadecimal"),
        ("x:" + "00" * 16, "decimal key id"),
        ("70000:" + "00" * 16, "0..65535"),
        ("00" * 16, "KEYID:HEXKEY"),
        ("1:" + "00" * 16 + "\n1:" + "11" * 16, "appears twice"),
        ("1:{k}\n2:{k}\n3:{k}".format(k="00" * 16), "at most 2"),
    ],
)
def test_key_file_syntax_errors(text, error):
    with pytest.raises(ValueError, match=error):
        parse_keyring(text)


def test_key_file_parses_and_never_shows_keys():
    ring = parse_keyring(f"# rotation in progress\n7:{KEY2.hex()}  # new\n\n3:{KEY1.hex().upper()}\n")
    assert ring.send_id == 7 and ring.ids == (7, 3)
    assert ring.get(3) == KEY1 and ring.get(7) == KEY2 and ring.get(1) is None
    assert KEY1.hex() not in repr(ring) and KEY2.hex() not in repr(ring)
    assert ring == Keyring([(7, KEY2), (3, KEY1)]) and ring != Keyring([(3, KEY1), (7, KEY2)])


def test_encode_refuses_bad_arguments():
    with pytest.raises(ValueError):
        encode(PACKET, RING, NOW, b"short")
    with pytest.raises(ValueError):
        encode(b"", RING, NOW, nonce())
    with pytest.raises(ValueError):
        encode(b"x" * (pp.MAX_PACKET + 1), RING, NOW, nonce())


# -- properties ---------------------------------------------------------------------------------
VALID = msg(n=b"\x00" * 11 + b"\x01")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_decode_never_raises_on_arbitrary_bytes(data):
    out = PeerDecoder(RING).decode(data, NOW)
    assert isinstance(out, PeerReason) and out is not PeerReason.ACCEPTED
    assert not isinstance(out, Decoded)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_decode_never_raises_on_bytes_with_our_header(tail):
    head = struct.pack("!4sBBHQ12sHH", b"PMTR", 1, 0, 1, int(NOW * 1000), b"\x01" * 12, len(tail), 0)
    out = PeerDecoder(RING).decode(head + tail, NOW)
    assert isinstance(out, PeerReason)


@st.composite
def mutations(draw):
    data = bytearray(VALID)
    kind = draw(st.sampled_from(["flip", "set", "truncate", "extend", "splice"]))
    if kind == "flip":
        for pos in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=4, unique=True)):
            data[pos] ^= draw(st.integers(1, 255))
    elif kind == "set":
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255).filter(lambda b: b != VALID[pos]))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=40))
    else:
        start = draw(st.integers(0, len(data) - 1))
        data[start:start + draw(st.integers(1, 16))] = draw(st.binary(min_size=0, max_size=16))
    return bytes(data)


@settings(max_examples=800, deadline=None)
@given(mutations())
def test_a_tampered_message_is_never_accepted(data):
    out = PeerDecoder(RING).decode(data, NOW)
    if data == VALID:
        return
    assert isinstance(out, PeerReason) and out is not PeerReason.ACCEPTED, (data.hex(), out)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=1500), st.floats(0, 2**40), st.binary(min_size=12, max_size=12))
def test_any_packet_round_trips(packet, now, n):
    data = encode(packet, RING, now, n)
    out = PeerDecoder(RING).decode(data, now)
    assert out == Decoded(1, int(now * 1000) / 1000.0, n, packet)

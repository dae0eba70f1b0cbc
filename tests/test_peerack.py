"""Acknowledgements in the peer protocol (core/peerack.py): pure tests over bytes."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from pmtud_relay.peers import wire as peerproto
from pmtud_relay.peers.ack import (
    ACK_BODY,
    ACK_LEN,
    AckDecoder,
    AckDrop,
    AckEvent,
    AckGate,
    AckTracker,
    AckVerdict,
    encode_ack,
    parse_body,
)
from pmtud_relay.peers.wire import FLAG_ACK, Keyring, PeerDecoder, PeerReason, encode

KEY = Keyring([(7, bytes(range(32)))])
OTHER = Keyring([(7, bytes(range(1, 33)))])
WALL = 1_700_000_000.0
DATA_NONCE = b"D" * 12
S2, S3 = "192.0.2.2", "192.0.2.3"
# The smallest PTB a peer accepts: IPv4 header + ICMP header + quoted IPv4 header + 8 bytes.
SMALLEST_PTB = bytes(20 + 8 + 20 + 8)


def ack(verdict=AckVerdict.APPLIED, acked=DATA_NONCE, keyring=KEY, wall=WALL, nonce=b"A" * 12, delay=0.003):
    return encode_ack(acked, verdict, delay, keyring, wall, nonce)


def tracker(expiry=5.0, capacity=16, sent_to=(S2, S3), now=100.0):
    t = AckTracker(AckDecoder(KEY), expiry=expiry, capacity=capacity)
    t.sent(DATA_NONCE, sent_to, now, info="flow")
    return t


# -- wire ------------------------------------------------------------------------------------------
def test_ack_layout_and_mac_over_whole_message():
    data = ack(AckVerdict.NOT_APPLIED, delay=1.234)
    assert len(data) == ACK_LEN == 80
    magic, version, flags, key_id, stamp, nonce, length, reserved = peerproto.HEADER.unpack_from(data)
    assert (magic, version, flags, key_id, stamp, nonce, length, reserved) == (
        b"PMTR", 1, FLAG_ACK, 7, int(WALL * 1000), b"A" * 12, ACK_BODY.size, 0)
    assert ACK_BODY.unpack_from(data, 32) == (DATA_NONCE, 2, 0, 1234)
    assert data[-32:] == hmac.new(bytes(range(32)), data[:-32], hashlib.sha256).digest()


def test_ack_never_larger_than_the_smallest_relay_datagram():
    smallest = encode(SMALLEST_PTB, KEY, WALL, DATA_NONCE)
    assert len(ack()) < len(smallest)


def test_decode_roundtrip_and_delay_saturates():
    decoded = AckDecoder(KEY).decode(ack(AckVerdict.NOT_APPLIED, delay=500.0), WALL + 1)
    body = parse_body(decoded.packet)
    assert body.acked == DATA_NONCE and body.verdict is AckVerdict.NOT_APPLIED and body.delay == 65.535


def test_relay_decoder_refuses_an_ack_and_ack_decoder_refuses_a_relay_datagram():
    assert PeerDecoder(KEY).decode(ack(), WALL) is PeerReason.BAD_FLAGS
    relay = encode(SMALLEST_PTB, KEY, WALL, DATA_NONCE)
    assert AckDecoder(KEY).decode(relay, WALL) is PeerReason.BAD_LENGTH  # longer than any ack
    relay_short = peerproto.sign(0, bytes(16), KEY, WALL, DATA_NONCE)  # an ack's size, no ACK flag
    assert AckDecoder(KEY).decode(relay_short, WALL) is PeerReason.BAD_FLAGS


def test_unknown_verdict_is_refused():
    body = ACK_BODY.pack(DATA_NONCE, 9, 0, 0)
    data = peerproto.sign(FLAG_ACK, body, KEY, WALL, b"A" * 12)
    t = tracker()
    assert t.handle(data, S2, 100.1, WALL) is AckDrop.BAD_VERDICT
    assert parse_body(ACK_BODY.pack(DATA_NONCE, 1, 1, 0)) is AckDrop.BAD_VERDICT


# -- sender: the tracker ------------------------------------------------------------------------------
def test_accepts_one_ack_per_peer_and_counts_the_fanout_once():
    t = tracker()
    ev = t.handle(ack(nonce=b"1" * 12), S2, 100.25, WALL)
    assert isinstance(ev, AckEvent) and ev.peer == S2 and ev.verdict is AckVerdict.APPLIED
    assert ev.first and ev.info == "flow" and ev.rtt == pytest.approx(0.25) and ev.delay == 0.003
    ev3 = t.handle(ack(AckVerdict.NOT_APPLIED, nonce=b"3" * 12), S3, 100.3, WALL)
    assert isinstance(ev3, AckEvent) and not ev3.first
    assert t.handle(ack(nonce=b"4" * 12), S2, 100.4, WALL) is AckDrop.DUPLICATE
    assert t.acks == {AckVerdict.APPLIED: 1, AckVerdict.NOT_APPLIED: 1}
    assert t.fanouts == {"delivered": 1, "not_delivered": 0, "evicted": 0}
    t.expire(200.0)
    assert t.fanouts == {"delivered": 1, "not_delivered": 0, "evicted": 0}


def test_replayed_ack_is_refused():
    t = tracker(sent_to=(S2,))
    data = ack()
    assert isinstance(t.handle(data, S2, 100.1, WALL), AckEvent)
    assert t.handle(data, S2, 100.2, WALL) is AckDrop.REPLAY


def test_unsolicited_ack_costs_no_mac_and_is_counted():
    t = tracker()
    assert t.handle(ack(acked=b"X" * 12), S2, 100.1, WALL) is AckDrop.UNSOLICITED
    assert t.decoder.counts[PeerReason.BAD_MAC] == 0 and sum(t.decoder.counts.values()) == 0
    assert t.drops[AckDrop.UNSOLICITED] == 1


def test_wrong_key_is_bad_mac():
    t = tracker()
    assert t.handle(ack(keyring=OTHER), S2, 100.1, WALL) is AckDrop.BAD_MAC
    tampered = bytearray(ack())
    tampered[44] ^= 1  # the verdict byte
    assert t.handle(bytes(tampered), S2, 100.1, WALL) is AckDrop.BAD_MAC


def test_stale_and_future_acks():
    t = tracker()
    assert t.handle(ack(wall=WALL - 60), S2, 100.1, WALL) is AckDrop.STALE
    assert t.handle(ack(wall=WALL + 60), S2, 100.1, WALL) is AckDrop.FUTURE


def test_ack_after_expiry_is_late_and_the_fanout_not_delivered():
    t = tracker(expiry=5.0)
    assert t.fanouts["not_delivered"] == 0
    unacked = t.expire(105.0)
    assert [p.info for p in unacked] == ["flow"]
    assert t.fanouts == {"delivered": 0, "not_delivered": 1, "evicted": 0}
    assert t.handle(ack(), S2, 105.1, WALL) is AckDrop.LATE
    # Long after, the nonce is forgotten too: unsolicited.
    t.expire(200.0)
    assert t.handle(ack(nonce=b"Z" * 12), S2, 200.0, WALL) is AckDrop.UNSOLICITED


def test_ack_from_an_address_the_datagram_did_not_go_to():
    t = tracker(sent_to=(S2,))
    assert t.handle(ack(), S3, 100.1, WALL) is AckDrop.WRONG_PEER
    assert t.fanouts["delivered"] == 0


def test_pending_table_is_bounded():
    t = AckTracker(AckDecoder(KEY), expiry=5.0, capacity=4)
    for i in range(10):
        t.sent(bytes([i]) * 12, (S2,), 100.0 + i * 0.01)
    assert len(t) == 4 and t.fanouts["evicted"] == 6
    assert t.handle(ack(acked=bytes([5]) * 12), S2, 100.2, WALL) is AckDrop.LATE
    # The memory of evicted/expired nonces is bounded too: the oldest is forgotten.
    assert t.handle(ack(acked=bytes([0]) * 12), S2, 100.2, WALL) is AckDrop.UNSOLICITED
    assert isinstance(t.handle(ack(acked=bytes([9]) * 12), S2, 100.2, WALL), AckEvent)


def test_junk_of_every_shape_is_dropped_never_raises():
    t = tracker()
    good = ack()
    for data in (b"", b"PMTR", good[:-1], good + b"x", b"XXXX" + good[4:], bytes(80), bytes(300)):
        assert isinstance(t.handle(data, S2, 100.1, WALL), AckDrop)
    assert sum(t.acks.values()) == 0


# -- receiver: the gate -------------------------------------------------------------------------------
def test_gate_rate_limits_with_a_token_bucket():
    g = AckGate(rate=2.0, burst=3.0, now=0.0)
    allowed = [g.allow(bytes([i]) * 12, 80, 200, 0.0) for i in range(5)]
    assert allowed == [None, None, None, "rate_limited", "rate_limited"]
    assert g.allow(b"x" * 12, 80, 200, 0.5) is None  # one token back after 0.5 s at 2/s
    assert g.allow(b"y" * 12, 80, 200, 0.5) == "rate_limited"
    assert g.counts == {"sent": 4, "rate_limited": 3, "larger_than_datagram": 0, "repeat": 0}


def test_gate_one_ack_per_datagram_and_never_larger():
    g = AckGate(rate=100.0, burst=100.0, now=0.0)
    assert g.allow(DATA_NONCE, 80, 80, 0.0) is None
    assert g.allow(DATA_NONCE, 80, 200, 0.0) == "repeat"
    assert g.allow(b"n" * 12, 81, 80, 0.0) == "larger_than_datagram"
    assert g.counts["sent"] == 1


def test_gate_memory_is_bounded():
    g = AckGate(rate=1e6, burst=1e6, now=0.0, capacity=8)
    for i in range(100):
        assert g.allow(i.to_bytes(12, "big"), 80, 200, 0.0) is None
    assert len(g._acked) <= 8


# -- totality: any bytes, any mutation of a genuine ack ---------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_tracker_is_total_over_arbitrary_bytes(data):
    t = tracker()
    assert isinstance(t.handle(data, S2, 100.1, WALL), AckDrop)
    assert sum(t.acks.values()) == 0


@settings(max_examples=300, deadline=None)
@given(st.integers(0, ACK_LEN - 1), st.integers(1, 255))
def test_any_single_byte_change_of_a_genuine_ack_is_refused(at, xor):
    t = tracker()
    data = bytearray(ack())
    data[at] ^= xor
    assert isinstance(t.handle(bytes(data), S2, 100.1, WALL), AckDrop)
    assert isinstance(t.handle(ack(), S2, 100.1, WALL), AckEvent)  # the genuine one still passes

"""atheris target: the peer relay protocol decoder and the receiver's pipeline (``PeerInbox``).

Input: byte 0 picks the mode.

- even: the rest is a datagram as received from the network, taken as it is. Without the key
  the fuzzer cannot forge a MAC, so beyond the seeds (validly signed) everything must be refused.
- odd: the rest is a message *body* (header + packet) that the target signs with one of the two
  test keys (the one its key id names, when known) before decoding: this drives the fuzzer past
  the MAC check into the length, timestamp, replay and inner-PTB checks. With bit 1 set too, the
  inner packet's IPv4 header and ICMP checksums are recomputed before signing.

The receiver's wall clock advances 1 ms per input (never backwards) and its replay cache is small
(32 nonces) so eviction and the replay floor run too.

Asserted: nothing raises; every outcome is a Decoded or a PeerReason; an accepted datagram carries
a MAC that an independent HMAC computation verifies, a timestamp within max_age of the clock, and
(key id, nonce, timestamp) never accepted before (no replay is ever accepted); a PTB the inbox
decides to inject passes the independent re-check of its IP packet (checksums, no fragment, quoted
source one of this host's VIPs, outer destination = quoted source, MTU in range).

    python fuzz/fuzz_peer.py fuzz/corpus/peer -runs=1000000
"""

import hashlib
import hmac
import sys

import _common
import atheris

with atheris.instrument_imports(include=["pmtud_relay"]):
    from pmtud_relay.core.policy import PACKET_HOST  # noqa: F401 - instrumented with the rest
    from pmtud_relay.peers import wire as pp
    from pmtud_relay.peers.inbox import InboxConfig, PeerInbox

KEYS = _common.PEER_KEYS
KEYRING = pp.Keyring(sorted(KEYS.items()))
START = _common.PEER_START  # the seeds are stamped at it
MAX_AGE = 10.0
DECODER = pp.PeerDecoder(KEYRING, max_age=MAX_AGE, replay_capacity=32)
INBOX = PeerInbox(DECODER, InboxConfig(sender_rate=1e6, sender_burst=1e6, global_rate=1e6, global_burst=1e6,
                                       dedup_capacity=64, sender_capacity=64))
POLICY = _common.relay_config().policy
ACCEPTED: set[tuple[int, bytes, int]] = set()
_tick = [0]


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    _tick[0] += 1
    wall = START + _tick[0] * 0.001
    now = _tick[0] * 0.001
    body = bytes(data[1:])
    if data[0] & 2 and len(body) > pp.HEADER_LEN:  # fix the inner packet's checksums first
        body = body[:pp.HEADER_LEN] + _common.fix_checksums(body[pp.HEADER_LEN:], 0)
    if data[0] & 1 and len(body) >= pp.HEADER_LEN:
        key_id = body[6] << 8 | body[7]
        datagram = body + hmac.new(KEYS.get(key_id, KEYS[1]), body, hashlib.sha256).digest()
    else:
        datagram = body
    decision = INBOX.handle(datagram, now, wall, b"\xc0\x00\x02\x01", POLICY)
    reason = decision.reason
    assert isinstance(reason, (pp.PeerReason, _common_reason())), reason
    decoded_ok = decision.key_id is not None
    if decoded_ok:  # the decoder accepted the datagram (MAC, freshness, replay)
        n = len(datagram)
        assert n >= pp.OVERHEAD
        key_id = datagram[6] << 8 | datagram[7]
        key = KEYS.get(key_id)
        assert key is not None and decision.key_id == key_id
        body, mac = datagram[:-pp.MAC_LEN], datagram[-pp.MAC_LEN:]
        assert hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), mac), "accepted a bad MAC"
        stamp = int.from_bytes(datagram[8:16], "big")
        assert abs(stamp - int(wall * 1000)) <= MAX_AGE * 1000 + 1, "accepted a stale or future message"
        nonce = datagram[16:28]
        ident = (key_id, nonce, stamp)
        assert ident not in ACCEPTED, "accepted a replay"
        ACCEPTED.add(ident)
    if decision.inject:
        packet = decision.packet
        assert packet == datagram[pp.HEADER_LEN:-pp.MAC_LEN]
        family, mtu, outer_dst, quoted_src, qlen, _ = _common.check_ptb_packet(packet, 0, len(packet))
        assert outer_dst == quoted_src and _common.is_vip(quoted_src), "injected a PTB not about our VIPs"
        assert (_common.FLOOR_V4 if family == 4 else _common.FLOOR_V6) <= mtu < qlen


def _common_reason():
    from pmtud_relay.core.reasons import Reason

    return Reason


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()

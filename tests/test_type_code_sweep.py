"""Only ICMPv4 3/4 and ICMPv6 2/0 are PTBs: every other type/code pair is rejected as ``not_ptb``
by the parser itself, by ``Relay.handle`` and by the peer receiver (issue 18, item 7).

The capture paths have filters in front of the parser (the BPF program, the NFLOG rules), so a
parser that accepted, say, 3/3 (port unreachable) survived a suite that only fed it what the
filters pass. Here every pair 0-255 x 0-255 is fed straight in, with a correct ICMP checksum
(recomputed for each pair and checked independently below), so a rejection can only be for the
type/code. Each family is swept in two layouts: the one the parser's fast path reads (20-byte
IPv4 headers; IPv6 without extension headers) and one only its general path reads (an outer
IPv4 option; an outer IPv6 hop-by-hop header), so a mutation in either path fails.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IPOption_NOP
from scapy.layers.inet6 import IPv6ExtHdrHopByHop

from pmtud_relay.core.packet import PTB, parse_frame
from pmtud_relay.core.policy import Policy, VipSet
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Relay, RelayConfig
from pmtud_relay.peers.inbox import InboxConfig, PeerInbox, parse_packet
from pmtud_relay.peers.wire import Keyring, PeerDecoder, PeerReason, encode
from tests.support import frames as F
from tests.support.checksum import fold, ones_complement_sum

POLICY = Policy(vips=VipSet([F.VIP4, F.VIP6]))
RING = Keyring([(1, bytes(range(32)))])
WALL = 1_700_000_000.0
SRC_MAC = F.mac(F.RELAY_MAC)

LAYOUTS = {
    "v4 fast": (4, lambda: F.ptb_v4()),
    "v4 general (outer option)": (4, lambda: F.ptb_v4(ip_fields={"options": [IPOption_NOP()] * 4})),
    "v6 fast": (6, lambda: F.ptb_v6()),
    "v6 general (outer hop-by-hop)": (6, lambda: F.ptb_v6(outer_ext=(IPv6ExtHdrHopByHop(),))),
}
PTB_PAIR = {4: (3, 4), 6: (2, 0)}


def _offsets(frame: bytes, family: int) -> tuple[int, int]:
    """(ICMP offset, end of the IP packet) of a frame built by tests/support/frames.py (no VLAN tag)."""
    l3 = 14
    if family == 4:
        return l3 + (frame[l3] & 0x0F) * 4, l3 + int.from_bytes(frame[l3 + 2:l3 + 4], "big")
    end = l3 + 40 + int.from_bytes(frame[l3 + 4:l3 + 6], "big")
    nh, off = frame[l3 + 6], l3 + 40
    while nh != 58:  # the layouts above: hop-by-hop at most
        nh, off = frame[off], off + (frame[off + 1] + 1) * 8
    return off, end


def checksum_valid(frame: bytes, family: int) -> bool:
    """An independent check (a plain word loop, not core/checksum.py) of the ICMP checksum."""
    icmp, end = _offsets(frame, family)
    total = ones_complement_sum(frame[icmp:end])
    if family == 6:
        total = fold(total + ones_complement_sum(frame[14 + 8:14 + 40]) + (end - icmp) + 58)
    return total == 0xFFFF


def with_type_code(frame: bytes, family: int, icmp: int, icmp_type: int, code: int) -> bytes:
    """``frame`` with its ICMP type/code replaced and the checksum updated (RFC 1624, eqn. 3)."""
    old_word = frame[icmp] << 8 | frame[icmp + 1]
    new_word = icmp_type << 8 | code
    old_sum = frame[icmp + 2] << 8 | frame[icmp + 3]
    new_sum = ~fold((~old_sum & 0xFFFF) + (~old_word & 0xFFFF) + new_word) & 0xFFFF
    return b"".join((frame[:icmp], bytes((icmp_type, code)), new_sum.to_bytes(2, "big"), frame[icmp + 4:]))


def sweep(layout: str):
    """Every (type, code, frame) of ``layout`` but the PTB pair; checks the base frame first."""
    family, build = LAYOUTS[layout]
    base = build()
    icmp, _ = _offsets(base, family)
    assert (base[icmp], base[icmp + 1]) == PTB_PAIR[family] and checksum_valid(base, family)
    # The control: the base frame is a PTB every path accepts, so only type/code can reject.
    assert isinstance(parse_frame(base), PTB)
    assert Relay(RelayConfig(policy=POLICY)).handle(base, 0.0, SRC_MAC).reason is Reason.RELAYED
    data, stamp = Signer()(base[14:])
    assert inbox().handle(data, 0.0, stamp, "198.51.100.2", POLICY).reason is PeerReason.ACCEPTED
    for icmp_type in range(256):
        for code in range(256):
            if (icmp_type, code) != PTB_PAIR[family]:
                yield icmp_type, code, with_type_code(base, family, icmp, icmp_type, code)


def inbox() -> PeerInbox:
    return PeerInbox(PeerDecoder(RING), InboxConfig(sender_rate=1e9, sender_burst=1e9, global_rate=1e9,
                                                    global_burst=1e9))


class Signer:
    """Signs each packet with a fresh nonce and a timestamp 1 ms after the previous one (the
    wire's resolution): the replay cache (16 384 nonces) evicts its oldest entry without ever
    refusing a later stamp, so a datagram can only be refused for its PTB."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, packet: bytes) -> tuple[bytes, float]:
        self.n += 1
        stamp = WALL + self.n / 1000
        return encode(packet, RING, stamp, self.n.to_bytes(12, "big")), stamp


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_other_type_code_is_not_a_ptb_for_parser_and_relay(layout):
    family = LAYOUTS[layout][0]
    relay = Relay(RelayConfig(policy=POLICY))
    wrong = []
    checked = 0
    for icmp_type, code, frame in sweep(layout):
        if checked % 4099 == 0:  # the checksum update is right (sampled: a full sum per frame is slow)
            assert checksum_valid(frame, family), (icmp_type, code)
        if parse_frame(frame) is not Reason.NOT_PTB:
            wrong.append((icmp_type, code, "parse_frame"))
        d = relay.handle(frame, 0.0, SRC_MAC)
        if d.reason is not Reason.NOT_PTB or d.relay:
            wrong.append((icmp_type, code, f"Relay.handle: {d.reason}"))
        checked += 1
    assert checked == 65535
    assert not wrong, wrong[:20]
    assert relay.counts[Reason.NOT_PTB] == 65535 and relay.counts[Reason.RELAYED] == 0


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_other_type_code_is_refused_by_the_peer_receiver(layout):
    box = inbox()
    signed = Signer()
    wrong = []
    for icmp_type, code, frame in sweep(layout):
        packet = frame[14:]
        if parse_packet(packet) is not Reason.NOT_PTB:
            wrong.append((icmp_type, code, "parse_packet"))
        data, stamp = signed(packet)
        d = box.handle(data, 0.0, stamp, "198.51.100.2", POLICY)
        if d.reason is not Reason.NOT_PTB or d.inject:
            wrong.append((icmp_type, code, f"PeerInbox.handle: {d.reason}"))
    assert not wrong, wrong[:20]
    assert box.counts == {Reason.NOT_PTB: 65535}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_checksum_update_is_exact(layout):
    """Every swept frame carries a valid checksum (a full independent sum, one pair per type)."""
    family = LAYOUTS[layout][0]
    for icmp_type, code, frame in sweep(layout):
        if code == icmp_type:  # 256 pairs spread over every type and code value
            assert checksum_valid(frame, family), (icmp_type, code)
            broken = frame[:-1] + bytes([frame[-1] ^ 1])
            assert not checksum_valid(broken, family)

"""Duplicate suppression: the Deduplicator on its own and inside Relay."""

from __future__ import annotations

import pytest
from scapy.layers.inet import TCP
from scapy.layers.inet6 import IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop

from pmtud_relay.core.dedup import DEFAULT_CAPACITY, DEFAULT_WINDOW, SEQ_SPAN, Deduplicator, dedup_key, span_of
from pmtud_relay.core.packet import parse_frame
from pmtud_relay.core.policy import Policy, VipSet
from pmtud_relay.core.quoted import quoted_tag
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Relay, RelayConfig
from tests.support import frames as F

SRC_MAC = F.mac(F.RELAY_MAC)


def key(n: int) -> tuple:
    return (4, b"\xc0\x00\x02\x0a", b"\xcb\x00\x71\x07", 6, 443, n, 1400)


# -- dedup_key -------------------------------------------------------------------------


def test_key_is_the_sender_and_the_inner_flow_and_mtu():
    ptb = parse_frame(F.ptb_v4(mtu=1400))
    assert dedup_key(ptb) == (
        F.packed(F.ROUTER4),
        F.packed(F.VIP4),
        1400,
        F.packed(F.VIP4),
        F.packed(F.CLIENT4),
        6,
        F.SERVICE_PORT,
        F.CLIENT_PORT,
    )


def test_key_ignores_the_l2_envelope():
    a = parse_frame(F.ptb_v4())
    b = parse_frame(F.ptb_v4(vlans=((0x8100, 7),), src_mac="00:00:5e:00:53:aa"))
    assert dedup_key(a) == dedup_key(b)


@pytest.mark.parametrize(
    "change",
    [
        {"sport": 8443},
        {"dport": 40000},
        {"dst": "203.0.113.8"},
        {"proto": "udp"},
        {"mtu": 1300},
        {"outer_src": "198.51.100.2"},  # another router: never the same event
    ],
)
def test_key_differs_for_another_sender_flow_or_mtu(change):
    assert dedup_key(parse_frame(F.ptb_v4())) != dedup_key(parse_frame(F.ptb_v4(**change)))


def test_key_differs_between_families():
    assert len(dedup_key(parse_frame(F.ptb_v4()))[0]) == 4
    assert len(dedup_key(parse_frame(F.ptb_v6()))[0]) == 16


def _tcp(seq: int, sport: int = F.SERVICE_PORT, dport: int = F.CLIENT_PORT):
    return TCP(sport=sport, dport=dport, flags="A", seq=seq)


@pytest.mark.parametrize("build", [F.ptb_v4, F.ptb_v6], ids=["v4", "v6"])
def test_quoted_tag_is_the_tcp_sequence_number(build):
    assert quoted_tag(parse_frame(build(proto=_tcp(0xDEADBEEF)))) == 0xDEADBEEF


def test_quoted_tag_behind_quoted_ipv6_extension_headers():
    ptb = parse_frame(F.ptb_v6(ext=(IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()), proto=_tcp(0x12345678)))
    assert ptb.proto == 6 and ptb.sport == F.SERVICE_PORT
    assert quoted_tag(ptb) == 0x12345678


def test_quoted_tag_behind_quoted_ipv4_options():
    ptb = parse_frame(F.ptb_v4(proto=_tcp(0x0BADF00D), options=b"\x94\x04\x00\x00"))
    assert ptb.sport == F.SERVICE_PORT
    assert quoted_tag(ptb) == 0x0BADF00D


@pytest.mark.parametrize("build", [F.ptb_v4, F.ptb_v6], ids=["v4", "v6"])
def test_quoted_tag_is_the_sctp_verification_tag(build):
    assert quoted_tag(parse_frame(build(proto="sctp"))) == 0x0A0B0C0D


@pytest.mark.parametrize("proto", ["udp", "udplite"])
def test_quoted_tag_is_zero_where_the_kernel_matches_ports_only(proto):
    assert quoted_tag(parse_frame(F.ptb_v4(proto=proto))) == 0


def test_a_quote_without_the_sequence_number_never_reaches_dedup():
    # 20-byte IP header, then only the ports: the parser refuses it (no kernel can match it), so
    # every PTB that reaches dedup quotes the TCP sequence number.
    assert parse_frame(F.ptb_v4(quote_len=24)) is Reason.SHORT_L4_QUOTE


@pytest.mark.parametrize("build", [F.ptb_v4, F.ptb_v6], ids=["v4", "v6"])
def test_bytes_after_the_ip_packet_are_not_read_as_the_sequence_number(build):
    # A quote that stops after the ports, followed by Ethernet padding: the padding is not the
    # rest of the quote (the length checks use the IP length, not the frame's).
    quote_len = 24 if build is F.ptb_v4 else 44
    assert parse_frame(build(quote_len=quote_len, trailer=b"\xab" * 64)) is Reason.SHORT_L4_QUOTE


@pytest.mark.parametrize("seq", [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x12345678])
@pytest.mark.parametrize(
    "build",
    [
        lambda tcp: F.ptb_v4(proto=tcp),
        lambda tcp: F.ptb_v4(proto=tcp, quote_len=48),  # exactly the 8 L4 bytes
        lambda tcp: F.ptb_v4(proto=tcp, options=b"\x94\x04\x00\x00"),  # quoted options
        lambda tcp: F.ptb_v4(proto=tcp, ip_fields={"options": b"\x94\x04\x00\x00"}),  # outer options
        lambda tcp: F.ptb_v4(proto=tcp, vlans=((0x8100, 5),)),
        lambda tcp: F.ptb_v6(proto=tcp),
        lambda tcp: F.ptb_v6(proto=tcp, quote_len=48),
        lambda tcp: F.ptb_v6(proto=tcp, ext=(IPv6ExtHdrHopByHop(),)),
        lambda tcp: F.ptb_v6(proto=tcp, outer_ext=(IPv6ExtHdrHopByHop(),)),
        lambda tcp: F.ptb_v6(proto=tcp, vlans=((0x8100, 5), (0x8100, 6))),
    ],
    ids=["v4", "v4-8-bytes", "v4-quoted-options", "v4-outer-options", "v4-vlan", "v6", "v6-8-bytes",
         "v6-quoted-ext", "v6-outer-ext", "v6-qinq"],
)
def test_quoted_tag_on_every_layout(build, seq):
    assert quoted_tag(parse_frame(build(_tcp(seq)))) == seq


def test_span_is_seq_span_for_tcp_only():
    assert span_of(parse_frame(F.ptb_v4())) == SEQ_SPAN
    assert span_of(parse_frame(F.ptb_v4(proto="sctp"))) == 1
    assert span_of(parse_frame(F.ptb_v4(proto="udp"))) == 1


# -- Deduplicator ----------------------------------------------------------------------


def test_defaults():
    d = Deduplicator()
    assert (d.window, d.capacity) == (DEFAULT_WINDOW, DEFAULT_CAPACITY)


def test_duplicate_within_window_only():
    d = Deduplicator(window=1.0)
    assert not d.is_duplicate(key(1), 10.0)
    d.remember(key(1), 10.0)
    assert d.is_duplicate(key(1), 10.0)
    assert d.is_duplicate(key(1), 10.999)
    assert not d.is_duplicate(key(1), 11.0)  # exactly one window later: relay again
    assert not d.is_duplicate(key(1), 12.0)
    assert not d.is_duplicate(key(2), 10.5)


def test_remember_restamps_and_moves_to_the_back():
    d = Deduplicator(window=1.0, capacity=2)
    d.remember(key(1), 0.0)
    d.remember(key(2), 0.1)
    d.remember(key(1), 0.2)  # key 1 is now the newest
    d.remember(key(3), 0.3)  # over capacity: the oldest (key 2) goes
    assert d.is_duplicate(key(1), 0.3)
    assert d.is_duplicate(key(3), 0.3)
    assert not d.is_duplicate(key(2), 0.3)
    assert d.evictions == 1
    assert d.is_duplicate(key(1), 1.1)  # stamped at 0.2, not 0.0


def test_expiry_follows_the_oldest_stamp_after_restamping_the_front():
    # remember() looks at the front of the table only once the oldest entry can have expired;
    # restamping that entry must neither expire it early nor keep the others past their time.
    d = Deduplicator(window=1.0, capacity=100)
    d.remember(key(1), 0.0)
    d.remember(key(2), 0.5)
    d.remember(key(1), 0.6)  # the front entry moves to the back
    d.remember(key(3), 1.05)  # past key 1's first stamp + window: a sweep that finds nothing
    assert len(d) == 3
    d.remember(key(4), 1.55)  # key 2 (0.5) has expired, key 1 (0.6) has not
    assert len(d) == 3
    assert not d.is_duplicate(key(2), 1.55) and d.is_duplicate(key(1), 1.55)
    d.remember(key(5), 1.65)  # now key 1 has expired too
    assert len(d) == 3 and not d.is_duplicate(key(1), 1.65)


def test_capacity_bound_and_eviction_count():
    d = Deduplicator(window=60.0, capacity=3)
    for i in range(10):
        d.remember(key(i), 1.0 + i * 0.001)
        assert len(d) <= 3
    assert len(d) == 3
    assert d.evictions == 7
    assert [d.is_duplicate(key(i), 2.0) for i in range(10)] == [False] * 7 + [True] * 3


def test_expired_entries_are_not_counted_as_evictions():
    d = Deduplicator(window=1.0, capacity=2)
    d.remember(key(1), 0.0)
    d.remember(key(2), 0.1)
    d.remember(key(3), 5.0)  # both older keys expired: dropped, not evicted
    assert len(d) == 1
    assert d.evictions == 0


def test_expiry_keeps_memory_low():
    d = Deduplicator(window=1.0, capacity=100_000)
    for i in range(5000):
        d.remember(key(i), i * 0.0001)  # 5000 keys within half a second
    assert len(d) == 5000
    d.remember(key(-1), 10.0)
    assert len(d) == 1
    assert d.evictions == 0


def test_steady_stream_holds_about_one_window_of_keys():
    d = Deduplicator(window=1.0, capacity=100_000)
    for i in range(10_000):
        d.remember(key(i), i * 0.01)  # 100 new keys per second
        assert len(d) <= 101
    assert len(d) == 100


def test_zero_window_never_deduplicates_and_holds_nothing():
    d = Deduplicator(window=0.0)
    d.remember(key(1), 1.0)
    assert not d.is_duplicate(key(1), 1.0)
    assert len(d) == 0


def test_a_word_within_the_span_after_the_remembered_one_is_a_duplicate():
    d = Deduplicator(window=1.0)
    d.remember(key(1), 0.0, 1000)
    assert d.is_duplicate(key(1), 0.1, 1000, SEQ_SPAN)  # the same segment again
    assert d.is_duplicate(key(1), 0.1, 1000 + 9 * 1448, SEQ_SPAN)  # a later segment of the flight
    assert d.is_duplicate(key(1), 0.1, 1000 + SEQ_SPAN - 1, SEQ_SPAN)
    assert not d.is_duplicate(key(1), 0.1, 1000 + SEQ_SPAN, SEQ_SPAN)
    assert not d.is_duplicate(key(1), 0.1, 999, SEQ_SPAN)  # before it: not covered
    assert not d.is_duplicate(key(1), 0.1, 1001, 1)  # span 1: the same word only
    assert d.is_duplicate(key(1), 0.1, 1000, 1)
    assert not d.is_duplicate(key(1), 1.0, 1000, SEQ_SPAN)  # the window still ends it


def test_the_span_wraps_around_the_sequence_space():
    d = Deduplicator(window=1.0)
    d.remember(key(1), 0.0, 0xFFFFFF00)
    assert d.is_duplicate(key(1), 0.1, 0x100, SEQ_SPAN)
    assert not d.is_duplicate(key(1), 0.1, 0xFFFFFEFF, SEQ_SPAN)


def test_remember_rebases_the_word():
    d = Deduplicator(window=1.0)
    d.remember(key(1), 0.0, 1000)
    d.remember(key(1), 0.2, 0x80000000)
    assert not d.is_duplicate(key(1), 0.3, 1000, SEQ_SPAN)
    assert d.is_duplicate(key(1), 0.3, 0x80000000 + 1448, SEQ_SPAN)
    assert d.is_duplicate(key(1), 1.1, 0x80000000, 1)  # stamped at 0.2


@pytest.mark.parametrize("kwargs", [{"window": -0.001}, {"capacity": 0}, {"capacity": -5}])
def test_validation(kwargs):
    with pytest.raises(ValueError, match="dedup"):
        Deduplicator(**kwargs)


# -- inside the relay ------------------------------------------------------------------


def relay(**kw) -> Relay:
    kw.setdefault("source_burst", 1000.0)
    kw.setdefault("global_burst", 1000.0)
    return Relay(RelayConfig(policy=Policy(vips=VipSet([F.VIP4, F.VIP6])), **kw))


@pytest.mark.parametrize("build", [F.ptb_v4, F.ptb_v6], ids=["v4", "v6"])
def test_relay_drops_duplicates_within_the_window_and_relays_after(build):
    r = relay(dedup_window=2.0)
    frame = build()
    assert r.handle(frame, 100.0, SRC_MAC).relay
    assert r.handle(frame, 100.5, SRC_MAC).reason is Reason.DUPLICATE
    assert r.handle(frame, 101.99, SRC_MAC).reason is Reason.DUPLICATE
    assert r.handle(frame, 102.0, SRC_MAC).relay
    assert r.handle(frame, 102.1, SRC_MAC).reason is Reason.DUPLICATE


def test_relay_the_same_ptb_from_another_router_is_relayed_too():
    r = relay()
    assert r.handle(F.ptb_v4(outer_src=F.ROUTER4), 0.0, SRC_MAC).relay
    assert r.handle(F.ptb_v4(outer_src="198.51.100.2"), 0.1, SRC_MAC).relay


def _seq(build, seq: int, **kw) -> bytes:
    return build(proto=TCP(sport=F.SERVICE_PORT, dport=F.CLIENT_PORT, flags="A", seq=seq), **kw)


@pytest.mark.parametrize("build", [F.ptb_v4, F.ptb_v6], ids=["v4", "v6"])
def test_relay_a_spoofed_ptb_relayed_first_never_suppresses_the_routers(build):
    """Issue 18, item 1: a PTB for the same flow and MTU from another address, or from the
    router's own address with a wrong sequence number, relayed first, used to make the router's
    genuine PTB a duplicate: the owner discarded the forged one and never saw the genuine one."""
    router = F.ROUTER4 if build is F.ptb_v4 else F.ROUTER6
    spoofer = "203.0.113.66" if build is F.ptb_v4 else "2001:db8:66::1"
    genuine = 0x10000000
    r = relay()
    assert r.handle(_seq(build, genuine ^ 0x80000000, outer_src=spoofer), 0.0, SRC_MAC).relay
    assert r.handle(_seq(build, genuine + 0x100000, outer_src=router), 0.01, SRC_MAC).relay
    d = r.handle(_seq(build, genuine, outer_src=router), 0.02, SRC_MAC)
    assert d.relay, d.reason
    # ... while the router's own repeats still collapse: a retransmission of the segment,
    # the next segments of the flight.
    for i, seq in enumerate((genuine, genuine + 1448, genuine + 9 * 1448)):
        assert r.handle(_seq(build, seq, outer_src=router), 0.03 + i / 100, SRC_MAC).reason is Reason.DUPLICATE
    # The forger's own repeats collapse the same way (their own key).
    assert r.handle(_seq(build, genuine ^ 0x80000000, outer_src=spoofer), 0.1, SRC_MAC).reason is Reason.DUPLICATE


def test_relay_a_guess_within_the_span_below_the_genuine_number_does_suppress_it():
    # The residual risk documented in core/dedup.py and docs/security.md: odds 2^-16 a guess.
    r = relay()
    assert r.handle(_seq(F.ptb_v4, 5000 - 1), 0.0, SRC_MAC).relay
    assert r.handle(_seq(F.ptb_v4, 5000), 0.01, SRC_MAC).reason is Reason.DUPLICATE


def test_relay_sctp_collapses_on_the_same_verification_tag_only():
    from scapy.layers.sctp import SCTP

    r = relay()
    assert r.handle(F.ptb_v4(proto=SCTP(sport=F.SERVICE_PORT, dport=F.CLIENT_PORT, tag=7)), 0.0, SRC_MAC).relay
    assert r.handle(F.ptb_v4(proto=SCTP(sport=F.SERVICE_PORT, dport=F.CLIENT_PORT, tag=8)), 0.1, SRC_MAC).relay
    d = r.handle(F.ptb_v4(proto=SCTP(sport=F.SERVICE_PORT, dport=F.CLIENT_PORT, tag=8)), 0.2, SRC_MAC)
    assert d.reason is Reason.DUPLICATE


def test_relay_udp_collapses_per_router_whatever_the_datagram():
    r = relay()
    assert r.handle(F.ptb_v4(proto="udp", length=1500), 0.0, SRC_MAC).relay
    assert r.handle(F.ptb_v4(proto="udp", length=1480), 0.1, SRC_MAC).reason is Reason.DUPLICATE
    assert r.handle(F.ptb_v4(proto="udp", outer_src="198.51.100.2"), 0.1, SRC_MAC).relay


def test_relay_one_source_flood_overlapping_the_legitimate_flows_loses_none():
    """The measurement of issue 18 in process, default limits: one source floods valid-looking
    PTBs quoting the legitimate flows with wrong sequence numbers at 2 000/s, each flow's forged
    PTB arriving 100 ms before the router's genuine one; 80 legitimate PTBs, one per flow."""
    r = relay(source_burst=50.0, global_burst=500.0)  # the defaults
    flows = [(20000 + i, 0x01000000 * (i + 1)) for i in range(80)]
    forged = [F.ptb_v4(proto=TCP(sport=F.SERVICE_PORT, dport=port, flags="A", seq=seq ^ 0x80000000),
                       outer_src="203.0.113.66") for port, seq in flows]
    legit_relayed = 0
    now = 0.0
    for i, (port, seq) in enumerate(flows):
        for j in range(200):  # 100 ms of flood, cycling over every flow
            r.handle(forged[(i + j) % len(flows)], now, SRC_MAC)
            now += 0.0005
        d = r.handle(F.ptb_v4(proto=TCP(sport=F.SERVICE_PORT, dport=port, flags="A", seq=seq)), now, SRC_MAC)
        legit_relayed += d.relay
    assert legit_relayed == 80
    assert r.counts[Reason.RATE_LIMITED_SOURCE] > 0  # the flood was held by its own bucket


@pytest.mark.parametrize("change", [{"sport": 8443}, {"dport": 40001}, {"mtu": 1300}, {"dst": "203.0.113.99"}])
def test_relay_does_not_deduplicate_other_flows_or_mtus(change):
    r = relay()
    assert r.handle(F.ptb_v4(), 0.0, SRC_MAC).relay
    decision = r.handle(F.ptb_v4(**change), 0.0, SRC_MAC)
    assert decision.relay, decision.reason


def test_relay_dedup_capacity_is_bounded():
    r = relay(dedup_capacity=4, dedup_window=60.0)
    for sport in range(1000, 1010):
        assert r.handle(F.ptb_v4(sport=sport, quote_len=28), 0.0, SRC_MAC).relay
    assert len(r.dedup) == 4
    assert r.dedup.evictions == 6
    # Evicted keys can be relayed again; remembered ones cannot.
    assert r.handle(F.ptb_v4(sport=1000, quote_len=28), 0.0, SRC_MAC).relay
    assert r.handle(F.ptb_v4(sport=1009, quote_len=28), 0.0, SRC_MAC).reason is Reason.DUPLICATE

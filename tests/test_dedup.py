"""Duplicate suppression: the Deduplicator on its own and inside Relay."""

from __future__ import annotations

import pytest

import frames as F
from pmtud_relay.core.dedup import DEFAULT_CAPACITY, DEFAULT_WINDOW, Deduplicator, dedup_key
from pmtud_relay.core.packet import parse_frame
from pmtud_relay.core.policy import Policy, VipSet
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Relay, RelayConfig

SRC_MAC = F.mac(F.RELAY_MAC)


def key(n: int) -> tuple:
    return (4, b"\xc0\x00\x02\x0a", b"\xcb\x00\x71\x07", 6, 443, n, 1400)


# -- dedup_key -------------------------------------------------------------------------


def test_key_is_the_inner_flow_and_mtu():
    ptb = parse_frame(F.ptb_v4(mtu=1400))
    assert dedup_key(ptb) == (
        4,
        F.packed(F.VIP4),
        F.packed(F.CLIENT4),
        6,
        F.SERVICE_PORT,
        F.CLIENT_PORT,
        1400,
    )


def test_key_ignores_the_router_and_the_l2_envelope():
    # The same flow and MTU announced by two routers, on two VLANs, is one event.
    a = parse_frame(F.ptb_v4(outer_src=F.ROUTER4))
    b = parse_frame(F.ptb_v4(outer_src="198.51.100.2", vlans=((0x8100, 7),), src_mac="00:00:5e:00:53:aa"))
    assert dedup_key(a) == dedup_key(b)


@pytest.mark.parametrize(
    "change",
    [
        {"sport": 8443},
        {"dport": 40000},
        {"dst": "203.0.113.8"},
        {"proto": "udp"},
        {"mtu": 1300},
    ],
)
def test_key_differs_for_another_flow_or_mtu(change):
    assert dedup_key(parse_frame(F.ptb_v4())) != dedup_key(parse_frame(F.ptb_v4(**change)))


def test_key_differs_between_families():
    assert dedup_key(parse_frame(F.ptb_v4()))[0] == 4
    assert dedup_key(parse_frame(F.ptb_v6()))[0] == 6


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


def test_relay_duplicate_from_another_router_is_dropped():
    r = relay()
    assert r.handle(F.ptb_v4(outer_src=F.ROUTER4), 0.0, SRC_MAC).relay
    assert r.handle(F.ptb_v4(outer_src="198.51.100.2"), 0.1, SRC_MAC).reason is Reason.DUPLICATE


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

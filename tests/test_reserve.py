"""The global reserve: a share of the global budget kept for sources relayed before a flood.

Rates, bursts and shares are powers of two so the split and refills are exact in floating point:
global 64/s burst 32 with a quarter reserved is a general part of 48/s burst 24 and a reserve of
16/s burst 8.
"""

from __future__ import annotations

import random

from pmtud_relay.core.policy import Policy, VipSet
from pmtud_relay.core.ratelimit import RateLimiter
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Relay, RelayConfig
from tests.support import frames as F

GLB = Reason.RATE_LIMITED_GLOBAL
KNOWN = bytes([198, 51, 100, 1])
OTHER_KNOWN = bytes([198, 51, 100, 2])


def flood_source(i: int) -> bytes:
    return bytes([203, 0, 113, 0]) + i.to_bytes(4, "big")  # distinct, in process only


def limiter(**kw) -> RateLimiter:
    kw.setdefault("global_rate", 64.0)
    kw.setdefault("global_burst", 32.0)
    kw.setdefault("reserve", 0.25)
    return RateLimiter(source_rate=1024.0, source_burst=1024.0, **kw)


def relay_one(rl: RateLimiter, src: bytes, now: float) -> Reason | None:
    """What the relay does: check, and on success record the PTB as relayed."""
    reason = rl.check(src, now)
    if reason is None:
        rl.relayed(src, now)
    return reason


def flood(rl: RateLimiter, now: float, n: int, start: int = 0) -> int:
    """``n`` PTBs from new sources at ``now``; returns how many were relayed."""
    return sum(relay_one(rl, flood_source(start + i), now) is None for i in range(n))


def test_the_split_new_sources_get_only_the_general_part():
    rl = limiter()
    assert (rl._global.rate, rl._global.burst, rl._reserve.rate, rl._reserve.burst) == (48, 24, 16, 8)
    assert flood(rl, 0.0, 100) == 24  # the general burst, not the whole 32
    assert flood(rl, 0.25, 100, start=100) == 12  # then the general rate (48/s)
    assert rl.reserve_relayed == 0


def test_reserve_zero_is_the_undivided_bucket():
    rl = limiter(reserve=0.0)
    assert rl._reserve is None and (rl._global.rate, rl._global.burst) == (64, 32)
    relay_one(rl, KNOWN, 0.0)
    assert flood(rl, 1.0, 100) == 32
    assert rl.check(KNOWN, 1.0) is GLB
    assert rl.known_sources() == 0


def test_a_reserve_too_small_for_one_token_is_off():
    assert limiter(global_burst=3.0, reserve=0.25)._reserve is None  # 0.75 tokens
    assert limiter(global_burst=4.0, reserve=0.25)._reserve is not None


def test_a_source_relayed_before_the_flood_uses_the_reserve():
    rl = limiter()
    assert relay_one(rl, KNOWN, 0.0) is None
    assert flood(rl, 10.0, 1000) == 24  # the flood drains the general part
    assert rl.episode_start == 10.0  # the last time a PTB found the general part full: the flood's first
    assert relay_one(rl, KNOWN, 10.0) is None
    assert rl.reserve_relayed == 1
    # The reserve holds 8 tokens: the known source takes the rest of them, then nothing.
    assert [relay_one(rl, KNOWN, 10.0) for _ in range(8)] == [None] * 7 + [GLB]
    assert rl.reserve_relayed == 8
    # The reserve refills at 16/s while the flood keeps the general part empty.
    flood(rl, 10.5, 1000, start=1000)
    assert [relay_one(rl, KNOWN, 10.5) for _ in range(9)] == [None] * 8 + [GLB]


def test_flood_sources_that_won_a_general_token_cannot_use_the_reserve():
    rl = limiter()
    relay_one(rl, KNOWN, 0.0)
    winners = [flood_source(i) for i in range(1000) if relay_one(rl, flood_source(i), 10.0) is None]
    assert len(winners) == 24 and all(rl.known_sources() and w in rl._known for w in winners)
    assert all(rl.check(w, 10.0) is GLB for w in winners)  # the reserve stays whole for KNOWN
    assert rl.reserve_relayed == 0
    assert [relay_one(rl, KNOWN, 10.0) for _ in range(9)] == [None] * 8 + [GLB]


def test_flood_sources_that_drained_the_general_part_cannot_use_the_reserve():
    """A flood at 1 024 PTB/s takes some 25 ms to drain the general part: the sources that won
    tokens then were relayed before it ran dry, but not before the episode began."""
    rl = limiter()
    relay_one(rl, KNOWN, 0.0)
    winners = []
    for i in range(2048):
        now = 10.0 + i / 1024
        if relay_one(rl, flood_source(i), now) is None:
            winners.append(flood_source(i))
    assert len(winners) > 24 and rl.episode_start == 10.0
    assert not any(rl.is_known(w, now) for w in winners)
    assert rl.is_known(KNOWN, now)


def test_the_first_flood_ptb_at_a_full_bucket_is_not_before_the_episode():
    """The flood's first PTB finds the general part full: its source is first relayed at the
    episode's start, not before it."""
    rl = limiter()
    relay_one(rl, KNOWN, 0.0)
    first = flood_source(0)
    assert relay_one(rl, first, 5.0) is None
    flood(rl, 5.0, 100, start=1)
    assert rl.episode_start == 5.0
    assert not rl.is_known(first, 5.0) and rl.is_known(KNOWN, 5.0)


def test_a_router_relayed_just_before_the_flood_is_protected():
    """Its PTB, 20 ms before the flood's first, found the general part full; the flood's first
    finds it less than a token short (refilled 0.96 of the one spent) and is the episode's start."""
    rl = limiter()
    assert relay_one(rl, KNOWN, 9.98) is None
    flood(rl, 10.0, 1000)
    assert rl.episode_start == 10.0 and rl.is_known(KNOWN, 10.0)


def test_a_source_first_seen_during_the_flood_is_not_protected():
    rl = limiter()
    flood(rl, 0.0, 100)
    assert rl.check(KNOWN, 0.0) is GLB  # not known at all
    assert rl.reserve_relayed == 0


def test_episodes_a_new_one_starts_only_after_the_general_part_was_full_again():
    rl = limiter()
    relay_one(rl, KNOWN, 0.0)
    flood(rl, 10.0, 1000)
    assert rl.episode_start == 10.0
    # The flood goes on (the general part never refills): the episode does not move, and the
    # sources that win the trickle of general tokens during it stay out of the reserve.
    for k in range(1, 40):  # every 0.25 s: 12 of the general part's 24 tokens come back each time
        flood(rl, 10.0 + k / 4, 1000, start=k * 1000)
        assert rl.episode_start == 10.0
    late = flood_source(39 * 1000)  # relayed at t=19.75
    assert late in rl._known and not rl.is_known(late, 19.75)
    # A second flood after a full refill: the first one's winners were first relayed before it.
    assert relay_one(rl, OTHER_KNOWN, 30.0) is None  # finds the general part full
    flood(rl, 40.0, 1000, start=10**6)
    assert rl.episode_start == 40.0  # the flood's first PTB found the general part full too
    assert rl.is_known(late, 40.0) and rl.is_known(OTHER_KNOWN, 40.0)


def test_the_known_table_is_bounded_least_recently_relayed_evicted():
    rl = limiter(known_capacity=3)
    for i, t in enumerate((0.0, 1.0, 2.0)):
        relay_one(rl, flood_source(i), t)
    relay_one(rl, flood_source(0), 3.0)  # relayed again: now the most recent
    relay_one(rl, flood_source(3), 4.0)  # full: evicts flood_source(1)
    assert list(rl._known) == [flood_source(2), flood_source(0), flood_source(3)]
    assert rl.known_evictions == 1 and rl.known_sources() == 3
    assert rl._known[flood_source(0)] == [0.0, 3.0]  # first relayed stays, last moves


def test_known_sources_expire():
    rl = limiter(known_expiry=60.0)
    relay_one(rl, KNOWN, 0.0)
    relay_one(rl, OTHER_KNOWN, 50.0)
    flood(rl, 100.0, 1000)
    assert not rl.is_known(KNOWN, 100.0)  # last relayed 100 s ago
    assert rl.check(KNOWN, 100.0) is GLB
    assert rl.check(OTHER_KNOWN, 100.0) is None  # 50 s ago: still known
    # Expired entries are the least recently relayed, so the first evicted; one relayed again
    # after expiry is known afresh (first relayed = now).
    rl2 = limiter(known_expiry=60.0, known_capacity=2)
    relay_one(rl2, KNOWN, 0.0)
    relay_one(rl2, OTHER_KNOWN, 100.0)
    relay_one(rl2, flood_source(1), 101.0)
    assert list(rl2._known) == [OTHER_KNOWN, flood_source(1)]
    assert rl2.known_evictions == 0  # it had expired: not evicted before its time
    relay_one(rl2, OTHER_KNOWN, 200.0)
    assert rl2._known[OTHER_KNOWN] == [200.0, 200.0]


def test_refund_goes_back_to_the_bucket_the_token_came_from():
    rl = limiter()
    relay_one(rl, KNOWN, 0.0)
    flood(rl, 10.0, 1000)
    general = rl._global.tokens
    assert rl.check(KNOWN, 10.0) is None  # from the reserve
    reserve = rl._reserve.tokens
    rl.refund(KNOWN)  # its checksum failed
    assert (rl._global.tokens, rl._reserve.tokens) == (general, reserve + 1)
    assert rl.reserve_relayed == 0
    relay_one(rl, KNOWN, 10.0)
    assert rl.reserve_relayed == 1


def test_the_total_never_exceeds_the_global_rate():
    """Known sources, primed flood sources and new flood sources, at random times: relayed PTBs
    in [0, t] never exceed the undivided bucket's burst + rate * t."""
    rng = random.Random(7)
    rl = limiter(global_rate=64.0, global_burst=32.0, reserve=0.5)
    known = [flood_source(10**6 + i) for i in range(50)]
    for i, s in enumerate(known):
        relay_one(rl, s, i * 0.1)
    start, relayed, now = 10.0, 0, 10.0
    for i in range(200_000):
        now += rng.expovariate(2000.0)
        src = rng.choice(known) if rng.random() < 0.2 else flood_source(rng.randrange(10**5))
        relayed += relay_one(rl, src, now) is None
        assert relayed <= 32 + 64 * (now - start) + 1e-9
    assert rl.reserve_relayed > 0
    assert relayed > 0.95 * 64 * (now - start)  # and the budget is used, not lost to the split


# -- through Relay.handle ------------------------------------------------------------------


def test_relay_uses_the_reserve_for_a_router_seen_before_the_flood_and_counts_it():
    policy = Policy(vips=VipSet([F.VIP4, F.VIP6]))
    mac = F.mac(F.RELAY_MAC)
    for share, expected in ((0.25, True), (0.0, False)):
        r = Relay(RelayConfig(policy=policy, global_rate=64.0, global_burst=32.0, global_reserve=share))
        assert r.handle(F.ptb_v4(sport=1, outer_src="198.51.100.1"), 0.0, mac).relay
        for i in range(500):  # the flood: a new source and flow each
            r.handle(F.ptb_v4(sport=2000 + i, outer_src=f"203.0.113.{1 + i % 250}", dport=1 + i // 250), 5.0, mac)
        d = r.handle(F.ptb_v4(sport=2, outer_src="198.51.100.1"), 5.0, mac)
        assert d.relay is expected
        assert r.limiter.reserve_relayed == int(expected)
        if not expected:
            continue
        # A corrupt PTB from the known router spends nothing and is not counted as from the reserve.
        corrupt = F.ptb_v4(sport=3, outer_src="198.51.100.1")
        assert r.handle(F.add_one(corrupt, len(corrupt) - 1), 5.0, mac).reason is Reason.BAD_CHECKSUM
        assert r.limiter.reserve_relayed == int(expected)


def test_reconfigure_rebuilds_the_limiter_when_the_reserve_changes():
    policy = Policy(vips=VipSet([F.VIP4]))
    r = Relay(RelayConfig(policy=policy))
    before = r.limiter
    r.reconfigure(RelayConfig(policy=Policy(vips=VipSet([F.VIP4, F.VIP6]))), 1.0)
    assert r.limiter is before  # policy only
    for change in ({"global_reserve": 0.0}, {"known_source_capacity": 10}, {"known_source_expiry": 5.0}):
        r.reconfigure(RelayConfig(policy=policy, **change), 2.0)
        assert r.limiter is not before
        before = r.limiter

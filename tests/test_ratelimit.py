"""Token buckets: per-source and global limits on a caller-supplied clock.

Rates and times are powers of two so refill arithmetic is exact in floating point.
"""

from __future__ import annotations

import pytest

from pmtud_relay.core import ratelimit
from pmtud_relay.core.ratelimit import (
    DEFAULT_GLOBAL_BURST,
    DEFAULT_GLOBAL_RATE,
    DEFAULT_SOURCE_BURST,
    DEFAULT_SOURCE_CAPACITY,
    DEFAULT_SOURCE_RATE,
    RateLimiter,
    TokenBucket,
)
from pmtud_relay.core.reasons import Reason

A = bytes([198, 51, 100, 1])
B = bytes([198, 51, 100, 2])
C = bytes([198, 51, 100, 3])
D = bytes([198, 51, 100, 4])
E = bytes([198, 51, 100, 5])
SRC = Reason.RATE_LIMITED_SOURCE
GLB = Reason.RATE_LIMITED_GLOBAL


def source(i: int) -> bytes:
    return bytes([0x20, 0x01, 0x0D, 0xB8]) + i.to_bytes(12, "big")  # 2001:db8::i


def results(limiter: RateLimiter, src: bytes, now: float, n: int) -> list:
    return [limiter.check(src, now) for _ in range(n)]


def assert_non_negative(limiter: RateLimiter) -> None:
    assert limiter._global.tokens >= 0
    assert all(tokens >= 0 for tokens, _stamp in limiter._sources.values())


# -- TokenBucket -----------------------------------------------------------------------


def test_token_bucket_starts_full_and_refills_to_burst():
    bucket = TokenBucket(rate=4.0, burst=2.0, now=0.0)
    assert bucket.has_token(0.0) and bucket.tokens == 2.0
    bucket.tokens = 0.0
    assert not bucket.has_token(0.125)  # 0.5 token
    assert bucket.has_token(0.25)  # 1 token
    assert bucket.tokens == 1.0
    assert bucket.has_token(100.0)
    assert bucket.tokens == 2.0  # capped at burst


def test_token_bucket_ignores_a_clock_going_back():
    bucket = TokenBucket(rate=4.0, burst=2.0, now=10.0)
    bucket.tokens = 0.0
    assert not bucket.has_token(5.0)
    assert bucket.tokens == 0.0 and bucket.stamp == 10.0
    assert bucket.has_token(10.25)


@pytest.mark.parametrize("rate, burst", [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.5), (1.0, 0.0)])
def test_token_bucket_validation(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


# -- RateLimiter: per source -----------------------------------------------------------


def test_defaults():
    limiter = RateLimiter()
    assert (limiter.source_rate, limiter.source_burst, limiter.capacity) == (
        DEFAULT_SOURCE_RATE,
        DEFAULT_SOURCE_BURST,
        DEFAULT_SOURCE_CAPACITY,
    )
    assert (limiter._global.rate, limiter._global.burst) == (DEFAULT_GLOBAL_RATE, DEFAULT_GLOBAL_BURST)


def test_default_source_burst_then_limited():
    limiter = RateLimiter()
    burst = int(ratelimit.DEFAULT_SOURCE_BURST)
    assert burst < ratelimit.DEFAULT_GLOBAL_BURST  # so the source bucket is the one that runs dry
    assert results(limiter, A, 0.0, burst) == [None] * burst
    assert limiter.check(A, 0.0) is SRC


def test_refund_gives_back_exactly_what_check_spent():
    limiter = RateLimiter(source_rate=1 / 1024, source_burst=2.0, global_rate=1 / 1024, global_burst=3.0)
    assert limiter.check(A, 0.0) is None
    before = (limiter._sources[A][0], limiter._global.tokens)
    assert limiter.check(A, 0.0) is None
    limiter.refund(A)
    assert (limiter._sources[A][0], limiter._global.tokens) == before
    assert results(limiter, A, 0.0, 2) == [None, SRC]  # the refunded token, then empty
    assert results(limiter, B, 0.0, 2) == [None, GLB]  # the global bucket held 3: A 2, B 1
    assert_non_negative(limiter)


def test_burst_then_refill_at_rate():
    limiter = RateLimiter(source_rate=4.0, source_burst=3.0, global_rate=1024.0, global_burst=1024.0)
    assert results(limiter, A, 0.0, 4) == [None, None, None, SRC]
    assert limiter.check(A, 0.125) is SRC  # half a token
    assert limiter.check(A, 0.25) is None  # one token
    assert limiter.check(A, 0.25) is SRC
    assert results(limiter, A, 0.75, 3) == [None, None, SRC]  # two tokens in 0.5 s
    # A long pause refills to the burst, not beyond.
    assert results(limiter, A, 1000.0, 4) == [None, None, None, SRC]


def test_sustained_rate_over_time():
    limiter = RateLimiter(source_rate=4.0, source_burst=1.0, global_rate=1024.0, global_burst=1024.0)
    allowed = 0
    for tick in range(64 * 10):  # 64 attempts per second for 10 s
        allowed += limiter.check(A, tick / 64) is None
    # The initial token at t=0, then one every 0.25 s: t=0.25, 0.5, ..., 9.75 (the last tick is
    # t=9.984, before the refill at t=10). Never more than burst + rate * elapsed.
    assert allowed == 1 + 39


def test_sources_are_independent():
    limiter = RateLimiter(source_rate=1.0, source_burst=2.0, global_rate=1024.0, global_burst=1024.0)
    assert results(limiter, A, 0.0, 5) == [None, None, SRC, SRC, SRC]
    assert results(limiter, B, 0.0, 3) == [None, None, SRC]
    assert results(limiter, source(1), 0.0, 3) == [None, None, SRC]


def test_no_negative_tokens_under_a_flood():
    limiter = RateLimiter(source_rate=2.0, source_burst=2.0, global_rate=4.0, global_burst=4.0)
    for _ in range(10_000):
        limiter.check(A, 0.0)
    for i in range(100):
        limiter.check(source(i), 0.0)
    assert_non_negative(limiter)
    # Behavioural check of the same: exactly one token after exactly 1/rate seconds.
    assert limiter.check(A, 0.5) is None
    assert limiter.check(A, 0.5) is SRC
    assert_non_negative(limiter)


# -- RateLimiter: global ---------------------------------------------------------------


def test_flood_from_one_source_does_not_spend_global_tokens():
    limiter = RateLimiter(source_rate=1.0, source_burst=2.0, global_rate=1.0, global_burst=5.0)
    flood = results(limiter, A, 0.0, 1000)
    assert flood[:2] == [None, None]
    assert set(flood[2:]) == {SRC}  # held by its own bucket, never by the global one
    # Everyone else still shares the 3 remaining global tokens.
    assert limiter.check(B, 0.0) is None
    assert limiter.check(C, 0.0) is None
    assert limiter.check(D, 0.0) is None
    assert limiter.check(E, 0.0) is GLB


def test_flood_over_time_leaves_room_for_a_legitimate_source():
    limiter = RateLimiter(source_rate=4.0, source_burst=8.0, global_rate=16.0, global_burst=32.0)
    legit_ok = 0
    for tick in range(1024 * 4):  # 4 s: the flooder sends 1024 PTBs/s, the legit router 4/s
        now = tick / 1024
        limiter.check(A, now)
        if tick % 256 == 0:
            legit_ok += limiter.check(B, now) is None
    assert legit_ok == 16


def test_global_limit_across_many_sources():
    limiter = RateLimiter(source_rate=1.0, source_burst=5.0, global_rate=8.0, global_burst=10.0)
    verdicts = [limiter.check(source(i), 0.0) for i in range(100)]
    assert verdicts[:10] == [None] * 10
    assert set(verdicts[10:]) == {GLB}
    # The global bucket refills at its own rate: 8 per second.
    verdicts = [limiter.check(source(1000 + i), 1.0) for i in range(20)]
    assert verdicts.count(None) == 8
    assert_non_negative(limiter)


def test_global_drop_does_not_spend_the_source_token():
    limiter = RateLimiter(source_rate=1 / 1024, source_burst=1.0, global_rate=1.0, global_burst=1.0)
    assert limiter.check(A, 0.0) is None
    for t in (0.0, 0.25, 0.5):
        assert limiter.check(B, t) is GLB  # B's single token must survive these
    assert limiter.check(B, 1.0) is None  # the global bucket refilled; B still had its token
    assert limiter.check(B, 1.0) is SRC


def test_source_drop_does_not_spend_a_global_token():
    limiter = RateLimiter(source_rate=1.0, source_burst=1.0, global_rate=1 / 1024, global_burst=2.0)
    assert limiter.check(A, 0.0) is None
    assert results(limiter, A, 0.0, 50) == [SRC] * 50
    assert limiter.check(B, 0.0) is None  # the second (last) global token
    assert limiter.check(C, 0.0) is GLB


# -- RateLimiter: bounded source table -------------------------------------------------


def test_source_table_is_bounded_with_fifo_eviction():
    limiter = RateLimiter(source_rate=1 / 1024, source_burst=1.0, global_rate=1024.0, global_burst=1024.0, capacity=3)
    for s in (A, B, C):
        assert limiter.check(s, 0.0) is None
        assert limiter.check(s, 0.0) is SRC
    assert len(limiter) == 3 and limiter.evictions == 0

    assert limiter.check(D, 0.0) is None  # evicts A, the first seen
    assert len(limiter) == 3 and limiter.evictions == 1
    assert limiter.check(A, 0.0) is None  # A forgot it was limited; evicts B
    assert len(limiter) == 3 and limiter.evictions == 2
    # C was seen before D and A and is still limited. Using it does not make it younger:
    # eviction is first-in first-out, not least-recently-used.
    assert results(limiter, C, 0.0, 3) == [SRC] * 3
    assert limiter.check(E, 0.0) is None  # evicts C
    assert limiter.check(C, 0.0) is None
    assert len(limiter) == 3 and limiter.evictions == 4


def test_source_table_never_exceeds_capacity():
    limiter = RateLimiter(global_rate=1e9, global_burst=1e9, capacity=50)
    for i in range(1000):
        limiter.check(source(i), i * 0.001)
        assert len(limiter) <= 50
    assert limiter.evictions == 950


@pytest.mark.parametrize(
    "kwargs",
    [
        {"source_rate": 0.0},
        {"source_rate": -1.0},
        {"source_burst": 0.9},
        {"capacity": 0},
        {"global_rate": 0.0},
        {"global_burst": 0.5},
    ],
)
def test_validation(kwargs):
    with pytest.raises(ValueError):
        RateLimiter(**kwargs)

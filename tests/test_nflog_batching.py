"""core/nflog_batching.py: immediate delivery while PTBs are rare, batches while they are not."""

from __future__ import annotations

import pytest

from pmtud_relay.nflog.batching import IMMEDIATE, BatchTuner


def tuner(**kw) -> BatchTuner:
    args = dict(batch=100, high=32, high_rate=5000.0, low_rate=1000.0, window=0.1, now=0.0)
    args.update(kw)
    return BatchTuner(**args)


def test_starts_immediate_and_stays_while_ptbs_are_rare():
    t = tuner()
    assert t.qthresh == IMMEDIATE
    # 31 packets in one wake-up, then a trickle: below both triggers.
    assert [t.observe(n, at) for n, at in ((1, 0.01), (31, 0.02), (5, 0.2), (1, 0.5), (0, 0.6))] == [None] * 5
    assert t.qthresh == IMMEDIATE and t.switches == 0


def test_a_backlog_switches_to_batches_at_once():
    t = tuner()
    assert t.observe(32, 0.001) == 100
    assert t.qthresh == 100
    assert t.observe(200, 0.002) is None  # already batching


def test_a_high_rate_switches_to_batches_even_without_a_backlog():
    t = tuner()
    # 6 000 PTB/s in wake-ups of 3: no backlog, but the window's rate is above 5 000/s.
    got = [t.observe(3, i * 0.0005) for i in range(1, 201)]
    assert 100 in got and t.qthresh == 100
    assert got.index(100) == 199  # decided when the first window (0.1 s) closed


def test_calm_switches_back_after_a_window_at_low_rate():
    t = tuner()
    assert t.observe(50, 0.0) == 100
    # 150 PTBs in the next 0.1 s, in wake-ups of 30: 1 500/s, above low_rate: keep batching.
    assert [t.observe(30, 0.02 * i) for i in range(1, 6)] == [None] * 5
    # 20 in the next 0.1 s: 200/s: back to immediate delivery.
    assert t.observe(10, 0.15) is None
    assert t.observe(10, 0.2) == IMMEDIATE
    assert t.qthresh == IMMEDIATE and t.switches == 2


def test_a_quiet_gap_switches_back_at_the_next_ptb():
    t = tuner()
    assert t.observe(64, 1.0) == 100
    assert t.observe(3, 1.5) == IMMEDIATE  # nothing for 0.5 s (more than a window) before it


def test_a_burst_after_a_quiet_gap_keeps_batching():
    t = tuner()
    assert t.observe(64, 1.0) == 100
    assert t.observe(100, 3.0) is None  # 100 in 2 s is a low rate, but this wake-up is a backlog
    assert t.qthresh == 100


def test_after_a_long_silence_the_first_ptb_switches_back():
    t = tuner()
    assert t.observe(64, 1.0) == 100
    assert [t.observe(0, 1.0 + i) for i in range(5)] == [None] * 5  # empty reads are ignored
    assert t.observe(1, 30.0) == IMMEDIATE


@pytest.mark.parametrize("kw", [dict(batch=1), dict(high=0), dict(low_rate=5000.0), dict(low_rate=-1.0),
                                dict(window=0)])
def test_rejects_settings_that_cannot_work(kw):
    with pytest.raises(ValueError):
        tuner(**kw)

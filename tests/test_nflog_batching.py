"""core/nflog_batching.py: immediate delivery while PTBs are rare, batches while the reader lags."""

from __future__ import annotations

import pytest

from pmtud_relay.core.nflog_batching import IMMEDIATE, BatchTuner


def test_starts_immediate_and_stays_while_wakeups_are_small():
    t = BatchTuner(batch=100, high=32, low=4, calm=3)
    assert t.qthresh == IMMEDIATE
    assert [t.observe(n) for n in (1, 1, 5, 31, 0)] == [None] * 5
    assert t.qthresh == IMMEDIATE and t.switches == 0


def test_a_backlog_switches_to_batches_and_calm_switches_back():
    t = BatchTuner(batch=100, high=32, low=4, calm=3)
    assert t.observe(32) == 100
    assert t.qthresh == 100
    assert t.observe(200) is None  # already batching
    assert [t.observe(n) for n in (4, 4)] == [None, None]
    assert t.observe(5) is None  # not calm: the count starts again
    assert [t.observe(n) for n in (1, 0, 0, 0, 3)] == [None] * 5  # empty reads are not calm wake-ups
    assert t.observe(1) == IMMEDIATE
    assert t.qthresh == IMMEDIATE and t.switches == 2


@pytest.mark.parametrize("kw", [dict(batch=1), dict(low=32, high=32), dict(low=-1), dict(calm=0)])
def test_rejects_settings_that_cannot_work(kw):
    with pytest.raises(ValueError):
        BatchTuner(**kw)

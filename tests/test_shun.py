"""The flood shunner (core/shun.py) and the BPF blocklist prefix it drives (capture/afpacket.py)."""

from __future__ import annotations

import pytest

import frames as F
from pmtud_relay.capture import bpf
from pmtud_relay.capture.afpacket import blocklist_prefix
from pmtud_relay.core.policy import Policy, VipSet
from pmtud_relay.core.ratelimit import RateLimiter
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Relay, RelayConfig
from pmtud_relay.core.shun import Shunner

A4, B4 = F.packed("198.51.100.66"), F.packed("198.51.100.67")
A6 = F.packed("2001:db8:1::66")


def test_a_source_over_the_rate_is_held_then_released():
    s = Shunner(interval=0.1, min_rate=1000, hold=10, max_hold=40, now=0.0)
    assert s.update({A4: 200, B4: 50}, 0.1) == frozenset({A4})  # 2000/s and 500/s
    assert s.update({}, 5.0) is None
    assert s.held == {A4}
    assert s.update({}, 10.2) == frozenset()


def test_a_source_back_right_after_its_hold_gets_twice_the_hold_up_to_the_cap():
    s = Shunner(interval=0.1, min_rate=1000, hold=10, max_hold=15, now=0.0)
    s.update({A4: 1000}, 0.1)
    s.update({}, 10.2)  # released
    s.update({A4: 1000}, 10.3)
    assert s.held == {A4}
    assert s.update({}, 20.4) is None  # held 15 s (twice 10, capped at 15), not 10
    assert s.update({}, 25.4) == frozenset()


def test_at_most_max_sources_heaviest_first():
    s = Shunner(interval=1, min_rate=10, max_sources=1, now=0.0)
    assert s.update({A4: 100, B4: 500}, 1.0) == frozenset({B4})


def test_due_is_the_interval():
    s = Shunner(interval=0.05, now=1.0)
    assert not s.due(1.01) and s.due(1.06)


def test_limiter_counts_source_drops_bounded_and_resets():
    lim = RateLimiter(source_rate=1, source_burst=1, global_rate=1e6, global_burst=1e6, capacity=2)
    for _ in range(5):
        lim.check(A4, 0.0)
    assert lim.take_source_drops() == {A4: 4}
    assert lim.take_source_drops() == {}
    for src in (A4, B4, F.packed("198.51.100.68"), F.packed("198.51.100.69")):
        lim.check(src, 0.0)
        lim.check(src, 0.0)
    assert len(lim.source_drops) <= 2


def test_relay_blocklist_from_a_flood():
    relay = Relay(RelayConfig(policy=Policy(vips=VipSet([F.VIP4]))), now=0.0)
    frame = F.ptb_v4(outer_src="198.51.100.66")
    now = 0.0
    for i in range(2000):
        now = i * 1e-5
        relay.handle(frame, now, F.mac(F.RELAY_MAC))
    assert relay.counts[Reason.RATE_LIMITED_SOURCE] + relay.counts[Reason.DUPLICATE] > 1900
    assert relay.kernel_blocklist(now + 0.06) is None  # duplicates are not source drops


def test_relay_blocklist_holds_a_flooding_source_not_the_others():
    relay = Relay(RelayConfig(policy=Policy(vips=VipSet([F.VIP4]))), now=0.0)
    mac = F.mac(F.RELAY_MAC)
    flood = [F.ptb_v4(outer_src="198.51.100.66", dport=1000 + i) for i in range(200)]
    legit = F.ptb_v4(outer_src="198.51.100.67", dport=999)
    for i, f in enumerate(flood):  # 200 distinct flows in 20 ms: 10 000/s
        relay.handle(f, i * 1e-4, mac)
    relay.handle(legit, 0.02, mac)
    assert relay.kernel_blocklist(0.0201) == frozenset({A4})
    assert relay.kernel_blocklist(0.0202) is None  # not due yet


@pytest.mark.parametrize("vlans", [(), ((0x8100, 5),)])
def test_prefix_drops_only_blocked_untagged_sources(vlans):
    ptb = bpf.ptb_filter()
    prog = blocklist_prefix({A4, A6}) + ptb
    blocked4 = F.ptb_v4(outer_src="198.51.100.66", vlans=vlans)
    blocked6 = F.ptb_v6(outer_src="2001:db8:1::66", vlans=vlans)
    other4 = F.ptb_v4(outer_src="198.51.100.67", vlans=vlans)
    other6 = F.ptb_v6(outer_src="2001:db8:1::67", vlans=vlans)
    near6 = F.ptb_v6(outer_src="2001:db8:1::1:66", vlans=vlans)
    for f in (other4, other6, near6):
        assert bpf.run(prog, f) == bpf.run(ptb, f) != 0
    for f in (blocked4, blocked6):
        assert bpf.run(prog, f) == (0 if not vlans else bpf.run(ptb, f))


def test_empty_blocklist_is_no_prefix():
    assert blocklist_prefix(frozenset()) == []


def test_relay_config_tunes_and_disables_the_shun_list():
    from pmtud_relay.core.relay import Relay, RelayConfig

    relay = Relay(RelayConfig(shun_min_rate=123.0, shun_max_sources=0))
    assert relay.shunner.min_rate == 123.0 and relay.shunner.max_sources == 0
    # 0 sources: however hard a source floods, nothing is held.
    assert relay.shunner.update({b"\xc6\x33\x64\x42": 10**9}, 1.0) in (None, frozenset())
    assert relay.shunner.held == frozenset()
    relay.reconfigure(RelayConfig(shun_min_rate=50.0, shun_max_sources=4), 2.0)
    assert (relay.shunner.min_rate, relay.shunner.max_sources) == (50.0, 4)


def test_shun_keys_in_the_config_schema():
    from pmtud_relay import config as cfg

    loaded = cfg.load(None, environ={"PMTUD_RELAY_SHUN_MAX_SOURCES": "0", "PMTUD_RELAY_SHUN_MIN_RATE": "900"},
                      use_default_path=False)
    rc = cfg.relay_config(loaded.settings)
    assert (rc.shun_min_rate, rc.shun_max_sources) == (900.0, 0)
    with pytest.raises(cfg.ConfigError, match="SHUN_MAX_SOURCES"):
        cfg.load(None, environ={"PMTUD_RELAY_SHUN_MAX_SOURCES": "-1"}, use_default_path=False)

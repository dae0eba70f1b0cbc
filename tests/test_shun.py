"""The flood shunner (core/shun.py) and the BPF blocklist prefix it drives (capture/afpacket.py)."""

from __future__ import annotations

import pytest

from pmtud_relay.capture import bpf
from pmtud_relay.capture.afpacket import blocklist_prefix
from pmtud_relay.core.policy import Policy, VipSet
from pmtud_relay.core.ratelimit import RateLimiter
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Relay, RelayConfig
from pmtud_relay.core.shun import Shunner
from tests.support import frames as F

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


def test_holds_expire_by_the_clock_alone_without_drop_counts():
    # The daemon's timer path: nothing reaches userspace, so no drop counts come; expire() ends
    # the hold at its time, and next_expiry says when to call it.
    s = Shunner(interval=0.1, min_rate=1000, hold=10, max_hold=40, now=0.0)
    assert s.next_expiry is None
    s.update({A4: 200}, 0.1)
    s.update({B4: 2000}, 2.0)  # 1.9 s since the last look: over 1000/s
    assert s.next_expiry == pytest.approx(10.1)
    assert s.expire(10.0) is None and s.held == {A4, B4}
    assert s.expire(10.1) == frozenset({B4})
    assert s.next_expiry == pytest.approx(12.0)
    assert s.expire(12.5) == frozenset() and s.next_expiry is None and len(s) == 0


def test_sample_is_the_largest_power_of_two_keeping_the_bucket_fed():
    from pmtud_relay.core.shun import MAX_SAMPLE, sample_for

    assert [sample_for(r, 10) for r in (0, 19, 20, 39, 40, 4000, 15000, 250000)] == \
        [2, 2, 2, 2, 4, 256, 1024, 16384]
    assert sample_for(1e12, 10) == MAX_SAMPLE
    for rate in (4000.0, 9999.0, 123456.0):  # the sampled stream: 1x to 2x the bucket's rate
        assert 10 <= rate / sample_for(rate, 10) < 20


def test_held_sources_get_their_sample_and_a_thinner_one_if_they_flood_faster():
    s = Shunner(interval=0.1, min_rate=1000, hold=10, max_hold=40, now=0.0, bucket_rate=10)
    s.update({A4: 1500}, 0.1)  # 15 000/s: 1 in 1024 passes ~14.6/s
    assert s.samples == {A4: 1024}
    # Sampled drops as expected at that rate (~5/s): no change, whatever the noise within 4x.
    for i in range(1, 30):
        assert s.update({A4: 1 if i % 2 else 0}, 0.1 + 0.1 * i) is None
    assert s.samples == {A4: 1024}
    # It floods 20x faster: ~290 sampled frames/s, ~280 dropped; by the end of a 1 s window
    # N is at least 4x larger (that window still held some of the slower rate).
    changed = [s.update({A4: 28}, 2.9 + 0.1 * i) for i in range(1, 11)]
    assert frozenset({A4}) in changed and s.samples[A4] >= 4096
    # A first estimate far too low (the flood was ramping up) is corrected after 100 sampled
    # drops, well within the second.
    s2 = Shunner(interval=0.02, min_rate=1000, now=0.0, bucket_rate=10)
    s2.update({A4: 100}, 0.02)  # 5 000/s: 1 in 256
    assert s2.samples == {A4: 256}
    s2.update({A4: 60}, 0.04)  # 256 x (3 000 + 10)/s: about 770 000/s
    assert s2.samples == {A4: 256}
    assert s2.update({A4: 60}, 0.06) == frozenset({A4}) and s2.samples[A4] >= 16384
    s.expire(100.0)
    assert s.samples == {}


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


def test_repeats_of_one_flow_are_duplicates_not_source_drops_and_hold_no_source():
    # 2 000 copies of one PTB in 20 ms from one source: dedup (before the rate limits) takes
    # every repeat, so the source's bucket drops nothing and the shunner has nothing to hold.
    relay = Relay(RelayConfig(policy=Policy(vips=VipSet([F.VIP4]))), now=0.0)
    frame = F.ptb_v4(outer_src="198.51.100.66")
    now = 0.0
    for i in range(2000):
        now = i * 1e-5
        relay.handle(frame, now, F.mac(F.RELAY_MAC))
    assert relay.counts[Reason.RELAYED] == 1
    assert relay.counts[Reason.DUPLICATE] == 1999
    assert relay.counts[Reason.RATE_LIMITED_SOURCE] == 0
    assert relay.limiter.source_drops == {}
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


def as_the_filter_sees(frame: bytes) -> bytes:
    """``frame`` as a packet socket's filter sees it in the kernel: __netif_receive_skb_core
    strips the outermost 802.1Q/802.1ad tag into skb metadata (skb_vlan_untag, or the NIC did
    it) before the packet taps run, so only an inner tag of a QinQ frame is still in the data.
    (The capture restores the outer tag afterwards, from the ring header or PACKET_AUXDATA.)
    test_kernel_drops_held_sources_and_lifts_the_hold checks this model against the kernel."""
    if frame[12:14] in (b"\x81\x00", b"\x88\xa8"):
        return frame[:12] + frame[16:]
    return frame


VLAN_LAYOUTS = {
    "untagged": (),
    "dot1q": ((0x8100, 5),),
    "dot1ad": ((0x88A8, 5),),
    "qinq": ((0x88A8, 10), (0x8100, 20)),
}


@pytest.mark.parametrize("vlans", list(VLAN_LAYOUTS.values()), ids=list(VLAN_LAYOUTS))
def test_prefix_drops_blocked_sources_untagged_or_single_tagged_not_qinq(vlans):
    ptb = bpf.ptb_filter()
    prog = blocklist_prefix({A4, A6}) + ptb

    def run(program, frame):
        return bpf.run(program, as_the_filter_sees(frame))

    blocked4 = F.ptb_v4(outer_src="198.51.100.66", vlans=vlans)
    blocked6 = F.ptb_v6(outer_src="2001:db8:1::66", vlans=vlans)
    other4 = F.ptb_v4(outer_src="198.51.100.67", vlans=vlans)
    other6 = F.ptb_v6(outer_src="2001:db8:1::67", vlans=vlans)
    near6 = F.ptb_v6(outer_src="2001:db8:1::1:66", vlans=vlans)
    for f in (other4, other6, near6, blocked4, blocked6):
        assert run(ptb, f) != 0  # the PTB filter alone passes every one of them
    for f in (other4, other6, near6):
        assert run(prog, f) == run(ptb, f)
    for f in (blocked4, blocked6):
        # The prefix reads the EtherType at offset 12: after the kernel removed the outer tag
        # that is IPv4/IPv6 for an untagged or single-tagged frame (matched, dropped), and the
        # inner tag's TPID for QinQ (not matched: passes on to the PTB filter).
        assert run(prog, f) == (0 if len(vlans) <= 1 else run(ptb, f))


@pytest.mark.netns
@pytest.mark.timeout(30)
@pytest.mark.parametrize("ring", [True, False], ids=["ring", "socket"])
def test_kernel_drops_held_sources_and_lifts_the_hold(veth_netns, netns_program, ring):
    """PacketCapture.set_blocked() on a real kernel: a held source's untagged and single-tagged
    (802.1Q or 802.1ad) PTBs are dropped, its QinQ PTBs still arrive (the filter sees the inner
    tag's TPID where the prefix looks for the EtherType), other sources' PTBs all arrive, and
    set_blocked(frozenset()) lifts the hold. The pure interpreter, run on the frames as the
    kernel's filter sees them, predicts the same."""
    layouts = list(VLAN_LAYOUTS.items())
    batch, names = [], {}
    for layout, vlans in layouts:
        for build, src in ((F.ptb_v4, "198.51.100.66"), (F.ptb_v4, "198.51.100.67"),
                           (F.ptb_v6, "2001:db8:1::66"), (F.ptb_v6, "2001:db8:1::67")):
            frame = build(outer_src=src, vlans=vlans)
            batch.append(frame)
            names[frame.hex()] = f"{layout} from {src}"
    sentinel = F.ptb_v4(outer_src="203.0.113.99", dport=9)
    out = netns_program(veth_netns, "shun_holds", "kernel-holds",
                        payload=[ring, [A4.hex(), A6.hex()], [f.hex() for f in batch], sentinel.hex()])

    def named(hexes):
        return [names.get(h, f"unexpected {h[:40]}...") for h in hexes]

    everything = named(f.hex() for f in batch)
    assert named(out["before"]) == everything
    assert out["held"] == sorted([A4.hex(), A6.hex()])
    assert named(out["blocked"]) == [
        "untagged from 198.51.100.67", "untagged from 2001:db8:1::67",
        "dot1q from 198.51.100.67", "dot1q from 2001:db8:1::67",
        "dot1ad from 198.51.100.67", "dot1ad from 2001:db8:1::67",
        "qinq from 198.51.100.66", "qinq from 198.51.100.67", "qinq from 2001:db8:1::66", "qinq from 2001:db8:1::67",
    ]
    assert named(out["lifted"]) == everything
    # The pure-interpreter model (as_the_filter_sees) agrees with the kernel frame by frame.
    prog = blocklist_prefix({A4, A6}, sample=None) + bpf.ptb_filter()
    assert named(f.hex() for f in batch if bpf.run(prog, as_the_filter_sees(f))) == named(out["blocked"])


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


class _Draws:
    """The kernel's random ancillary load, scripted."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self) -> int:
        return self.values.pop(0)


def test_prefix_lets_one_in_sample_of_a_held_sources_frames_through():
    from pmtud_relay.core.shun import SAMPLE

    assert SAMPLE == 256  # the figure the docs and the kernel test below use

    ptb = bpf.ptb_filter()
    prog = blocklist_prefix({A4, A6}) + ptb
    for frame in (F.ptb_v4(outer_src="198.51.100.66"), F.ptb_v6(outer_src="2001:db8:1::66")):
        # A draw whose low log2(SAMPLE) bits are all zero passes: 1 in SAMPLE of uniform draws.
        assert bpf.run(prog, frame, random=_Draws([0])) == bpf.run(ptb, frame) != 0
        assert bpf.run(prog, frame, random=_Draws([SAMPLE * 12345])) != 0
        for low in (1, SAMPLE // 2, SAMPLE - 1, SAMPLE + 1):
            assert bpf.run(prog, frame, random=_Draws([low])) == 0
        passed = sum(bool(bpf.run(prog, frame, random=_Draws([r]))) for r in range(SAMPLE * 20))
        assert passed == 20
    other = F.ptb_v4(outer_src="198.51.100.67")
    assert bpf.run(prog, other, random=_Draws([])) == bpf.run(ptb, other)  # no draw for others
    assert bpf.run(blocklist_prefix({A4}, sample=None) + ptb, F.ptb_v4(outer_src="198.51.100.66")) == 0
    with pytest.raises(ValueError):
        blocklist_prefix({A4}, sample=48)
    # Each source its own N.
    per_source = blocklist_prefix({A4: 4, A6: 1024}) + ptb
    f4, f6 = F.ptb_v4(outer_src="198.51.100.66"), F.ptb_v6(outer_src="2001:db8:1::66")
    assert sum(bool(bpf.run(per_source, f4, random=_Draws([r]))) for r in range(4096)) == 1024
    assert sum(bool(bpf.run(per_source, f6, random=_Draws([r]))) for r in range(4096)) == 4
    assert bpf.run(blocklist_prefix({A4: None}) + ptb, f4) == 0


# --- holds through the daemon, on a real kernel ---------------------------------------------------
def _hold_frames(n_flood: int) -> tuple[list[str], str]:
    flood = [F.ptb_v4(outer_src="198.51.100.66", dport=20000 + i).hex() for i in range(n_flood)]
    genuine = F.ptb_v4(outer_src="198.51.100.66", dport=999, mtu=1400).hex()
    return flood, genuine


HOLD = 2.0  # seconds, for the tests (production: 10 s doubling to 300 s)


@pytest.mark.netns
@pytest.mark.timeout(40)
def test_a_hold_lifts_on_time_on_a_quiet_host(veth_netns, netns_program):
    """The daemon on a real kernel: one source floods, is held in the kernel, then goes quiet.
    Nothing reaches userspace while it is quiet, yet the hold ends on time (the daemon's timer):
    the held-sources metric and the filter go back to none, and the router's next genuine PTB
    is relayed (its broadcast copy seen on the wire)."""
    flood, genuine = _hold_frames(400)
    out = netns_program(veth_netns, "shun_holds", "daemon-holds", payload={
        "mode": "expire", "hold": HOLD, "vip": F.VIP4, "flood": flood, "genuine": genuine}, timeout=30)
    assert out["held"] and out["held_metric"] == 1, out
    assert out["seen_while_quiet"] == 0, out  # no frame woke the relay: only the timer can lift it
    assert out["lifted_late_by"] is not None, f"the hold never lifted: {out}"
    assert -0.01 <= out["lifted_late_by"] < 0.5, out
    assert out["filter_blocked"] == [], out
    assert out["genuine_relayed"] == 1 and out["genuine_copies"] == 1, out


@pytest.mark.netns
@pytest.mark.timeout(40)
def test_a_held_routers_genuine_ptbs_get_through_at_the_sampled_rate(veth_netns, netns_program):
    """While a source is held the kernel still passes one in N of its frames (N sized from its
    flood rate): 20·N copies of the held router's genuine PTB (one per retransmission, as a router
    sends them) put about 20 frames into userspace, and the first of them is relayed."""
    flood, genuine = _hold_frames(400)
    out = netns_program(veth_netns, "shun_holds", "daemon-holds", payload={
        "mode": "sample", "hold": 30.0, "vip": F.VIP4, "flood": flood, "genuine": genuine}, timeout=60)
    assert out["held"] and out["still_held"] == 1, out
    assert 2 <= out["sample"] <= 4096, out  # 400 frames within ~30 ms: thousands per second
    # Binomial(20·N, 1/N): mean 20, sd < 4.5; outside 5..45 has a probability below 1e-4.
    assert 5 <= out["seen_while_held"] <= 45, out
    # Relayed, once per dedup window (1 s) that the 20·N copies span; each relay a copy on the wire.
    assert out["genuine_relayed"] >= 1 and out["genuine_copies"] == out["genuine_relayed"], out


def test_prefix_assembles_and_matches_with_many_held_sources():
    # shun_max_sources has no upper bound: a conditional jump reaches 255 instructions, so the
    # prefix must jump over long source lists with JA (a ValueError here used to be possible).
    import ipaddress

    v4 = {ipaddress.ip_address(0xC6336400 + i).packed: 1 << (1 + i % 16) for i in range(300)}
    v6 = {ipaddress.ip_address((0x20010DB8 << 96) + i).packed: None for i in range(100)}
    prog = blocklist_prefix({**v4, **v6}) + bpf.ptb_filter()
    last4 = F.ptb_v4(outer_src=str(ipaddress.ip_address(0xC6336400 + 299)))
    last6 = F.ptb_v6(outer_src="2001:db8::63")
    other4, other6 = F.ptb_v4(outer_src="203.0.113.7"), F.ptb_v6(outer_src="2001:db8:1::67")
    assert bpf.run(prog, last4, random=_Draws([1])) == 0
    assert bpf.run(prog, last4, random=_Draws([0])) != 0  # its sample (1 in 2**12) lets this one by
    assert bpf.run(prog, last6) == 0
    assert bpf.run(prog, other4) != 0 and bpf.run(prog, other6) != 0

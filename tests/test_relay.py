"""Relay.handle end to end: parse → policy → dedup → limits → copy; reconfigure; report."""

from __future__ import annotations

from collections import Counter

import pytest

from pmtud_relay.core.frame import ALL_NODES_MAC, BROADCAST_MAC
from pmtud_relay.core.packet import PTB, parse_frame
from pmtud_relay.core.policy import (
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
    Policy,
    VipSet,
)
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Decision, Relay, RelayConfig
from pmtud_relay.report import FIELDS, decision_record, logfmt, to_json
from tests.support import frames as F

SRC_MAC = F.mac(F.RELAY_MAC)
VIPS = VipSet([F.VIP4, F.VIP6])
POLICY = Policy(vips=VIPS)


def config(**kw) -> RelayConfig:
    kw.setdefault("policy", POLICY)
    return RelayConfig(**kw)


def differing_offsets(a: bytes, b: bytes) -> set[int]:
    assert len(a) == len(b)
    return {i for i, (x, y) in enumerate(zip(a, b)) if x != y}


# -- the copy --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(F.valid_catalogue()))
def test_copy_differs_only_in_the_ethernet_addresses(name):
    frame = F.valid_catalogue()[name]
    decision = Relay(config()).handle(frame, 0.0, SRC_MAC)
    assert decision.relay and decision.reason is Reason.RELAYED
    copy = decision.copy
    assert len(copy) == len(frame)
    assert copy[12:] == frame[12:]
    assert differing_offsets(copy, frame) <= set(range(12))
    assert copy[6:12] == SRC_MAC
    assert copy[:6] == (BROADCAST_MAC if decision.ptb.family == 4 else ALL_NODES_MAC)
    assert decision.ptb.frame is frame  # the received frame is not modified


def test_v4_copy_goes_to_broadcast():
    d = Relay(config()).handle(F.ptb_v4(), 0.0, SRC_MAC)
    assert d.copy[:12] == b"\xff" * 6 + SRC_MAC


def test_v6_copy_goes_to_all_nodes_multicast():
    d = Relay(config()).handle(F.ptb_v6(), 0.0, SRC_MAC)
    assert d.copy[:12] == bytes.fromhex("333300000001") + SRC_MAC


def test_v6_copy_goes_to_broadcast_when_asked():
    r = Relay(config(v6_broadcast=True))
    assert r.handle(F.ptb_v6(), 0.0, SRC_MAC).copy[:6] == BROADCAST_MAC
    assert r.handle(F.ptb_v4(), 0.0, SRC_MAC).copy[:6] == BROADCAST_MAC


@pytest.mark.parametrize("vlans", [((0x8100, 100),), ((0x88A8, 10), (0x8100, 20))], ids=["dot1q", "qinq"])
def test_vlan_tags_are_kept(vlans):
    frame = F.ptb_v4(vlans=vlans)
    d = Relay(config()).handle(frame, 0.0, SRC_MAC)
    assert d.relay
    assert d.copy[12:12 + 4 * len(vlans)] == frame[12:12 + 4 * len(vlans)]
    reparsed = parse_frame(d.copy)
    assert isinstance(reparsed, PTB)
    assert reparsed._replace(frame=b"") == d.ptb._replace(frame=b"")


@pytest.mark.parametrize("build", [F.ptb_v4, F.ptb_v6], ids=["v4", "v6"])
@pytest.mark.parametrize("pkttype", [PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST])
def test_a_relayed_copy_is_never_relayed_again(build, pkttype):
    # Another relay on the segment receives our copy: it must not bounce it on.
    first = Relay(config()).handle(build(), 0.0, SRC_MAC)
    assert first.relay
    second = Relay(config()).handle(first.copy, 0.0, F.mac("00:00:5e:00:53:04"), pkttype)
    assert not second.relay
    assert second.reason is Reason.NOT_UNICAST


# -- decisions -------------------------------------------------------------------------


def test_parse_drop_decision_carries_no_ptb():
    d = Relay(config()).handle(F.echo_v4(), 0.0, SRC_MAC)
    assert d == Decision(False, Reason.NOT_PTB, None, None)


def test_policy_drop_decision_carries_the_ptb():
    frame = F.ptb_v4(mtu=500)
    d = Relay(config()).handle(frame, 0.0, SRC_MAC)
    assert (d.relay, d.reason, d.copy) == (False, Reason.MTU_BELOW_FLOOR, None)
    assert d.ptb == parse_frame(frame)


@pytest.mark.parametrize(
    "pkttype, reason",
    [(PACKET_OUTGOING, Reason.OWN_FRAME), (PACKET_OTHERHOST, Reason.OTHER_HOST),
     (PACKET_BROADCAST, Reason.NOT_UNICAST)],
)
def test_pkttype_is_passed_to_policy(pkttype, reason):
    assert Relay(config()).handle(F.ptb_v4(), 0.0, SRC_MAC, pkttype).reason is reason


def test_default_config_relays_nothing_without_vips():
    assert Relay().handle(F.ptb_v4(), 0.0, SRC_MAC).reason is Reason.NOT_VIP


def test_rate_limited_ptb_is_not_remembered_by_dedup():
    r = Relay(config(source_rate=1.0, source_burst=1.0, dedup_window=100.0))
    assert r.handle(F.ptb_v4(sport=1000), 0.0, SRC_MAC).relay
    limited = F.ptb_v4(sport=2000)
    assert r.handle(limited, 0.1, SRC_MAC).reason is Reason.RATE_LIMITED_SOURCE
    # Retransmitted by the router: still limited, and not mistaken for a duplicate.
    assert r.handle(limited, 0.2, SRC_MAC).reason is Reason.RATE_LIMITED_SOURCE
    # Once the bucket refills it gets through, although the dedup window is 100 s.
    assert r.handle(limited, 1.5, SRC_MAC).relay
    assert r.handle(limited, 1.6, SRC_MAC).reason is Reason.DUPLICATE


def test_globally_limited_ptb_is_not_remembered_by_dedup():
    r = Relay(config(global_rate=1.0, global_burst=1.0, dedup_window=100.0))
    assert r.handle(F.ptb_v4(), 0.0, SRC_MAC).relay
    other = F.ptb_v6()
    assert r.handle(other, 0.5, SRC_MAC).reason is Reason.RATE_LIMITED_GLOBAL
    assert r.handle(other, 1.5, SRC_MAC).relay


def test_duplicates_and_policy_drops_spend_no_tokens():
    r = Relay(config(source_rate=1 / 1024, source_burst=2.0))
    assert r.handle(F.ptb_v4(sport=1), 0.0, SRC_MAC).relay
    for _ in range(20):
        assert r.handle(F.ptb_v4(sport=1), 0.0, SRC_MAC).reason is Reason.DUPLICATE
        assert r.handle(F.ptb_v4(sport=9, mtu=100), 0.0, SRC_MAC).reason is Reason.MTU_BELOW_FLOOR
    assert r.handle(F.ptb_v4(sport=2), 0.0, SRC_MAC).relay  # the second token was still there
    assert r.handle(F.ptb_v4(sport=3), 0.0, SRC_MAC).reason is Reason.RATE_LIMITED_SOURCE


@pytest.mark.parametrize("build", [F.ptb_v4, F.ptb_v6])
def test_corrupt_ptb_is_dropped_and_not_remembered(build):
    r = Relay(config(dedup_window=100.0))
    good = build()
    corrupt = F.add_one(good, len(good) - 1)  # last quoted byte: only the checksum notices
    assert r.handle(corrupt, 0.0, SRC_MAC) == Decision(False, Reason.BAD_CHECKSUM, None, None)
    assert r.counts[Reason.BAD_CHECKSUM] == 1
    assert r.handle(good, 0.1, SRC_MAC).relay  # the corrupt one was not remembered by dedup


def test_bad_ipv4_header_checksum_is_caught_last_and_refunded():
    """The outer IPv4 header checksum is verified with the ICMP one, after the other checks:
    a PTB whose header is corrupt is not relayed, not remembered, and spends no token."""
    r = Relay(config(source_rate=1 / 1024, source_burst=1.0, dedup_window=100.0))
    good = F.ptb_v4(sport=1)
    bad_header = F.ptb_v4(sport=1, ip_fields={"chksum": 0x1234})
    for _ in range(3):
        assert r.handle(bad_header, 0.0, SRC_MAC) == Decision(False, Reason.BAD_CHECKSUM, None, None)
    assert r.counts[Reason.BAD_CHECKSUM] == 3
    assert r.handle(good, 0.0, SRC_MAC).relay  # neither remembered nor charged to the source
    # Not about a VIP: dropped by policy before any checksum is looked at.
    not_ours = F.ptb_v4(sport=2, outer_dst="192.0.2.200", src="192.0.2.200", ip_fields={"chksum": 0x1234})
    assert r.handle(not_ours, 0.0, SRC_MAC).reason is Reason.NOT_VIP


def test_checksum_runs_only_for_ptbs_that_would_be_relayed(monkeypatch):
    """The ICMP checksum is the costly check: duplicates, policy drops and rate-limited PTBs
    are decided without it; a corrupt PTB gets back the tokens the limits took for it."""
    import pmtud_relay.core.relay as relay_module

    calls = []
    real = relay_module.checksum_ok
    monkeypatch.setattr(relay_module, "checksum_ok", lambda ptb: calls.append(ptb) or real(ptb))
    r = Relay(config(source_rate=1 / 1024, source_burst=2.0, dedup_window=100.0))
    assert r.handle(F.ptb_v4(sport=1), 0.0, SRC_MAC).relay
    assert len(calls) == 1
    corrupt_dup = F.add_one(F.ptb_v4(sport=1), len(F.ptb_v4(sport=1)) - 1)
    assert r.handle(corrupt_dup, 0.0, SRC_MAC).reason is Reason.DUPLICATE
    assert r.handle(F.ptb_v4(sport=9, mtu=100), 0.0, SRC_MAC).reason is Reason.MTU_BELOW_FLOOR
    assert len(calls) == 1
    corrupt = F.add_one(F.ptb_v4(sport=2), len(F.ptb_v4(sport=2)) - 1)
    for _ in range(5):
        assert r.handle(corrupt, 0.0, SRC_MAC).reason is Reason.BAD_CHECKSUM
    assert len(calls) == 6
    # The corrupt PTBs gave their token back: the second one is still there...
    assert r.handle(F.ptb_v4(sport=3), 0.0, SRC_MAC).relay
    # ...and once it is spent, a PTB is limited without a checksum.
    assert r.handle(F.ptb_v4(sport=4), 0.0, SRC_MAC).reason is Reason.RATE_LIMITED_SOURCE
    assert len(calls) == 7


def test_corrupt_ptbs_from_many_sources_do_not_starve_the_global_bucket():
    r = Relay(config(global_rate=1 / 1024, global_burst=3.0))
    for i in range(200):  # each from its own source, so no per-source bucket stops them
        corrupt = F.ptb_v4(sport=1000 + i, outer_src=f"198.51.100.{1 + i}")
        corrupt = F.add_one(corrupt, len(corrupt) - 1)
        assert r.handle(corrupt, 0.0, SRC_MAC).reason is Reason.BAD_CHECKSUM
    assert [r.handle(F.ptb_v4(sport=s), 0.0, SRC_MAC).relay for s in (1, 2, 3, 4)] == [True, True, True, False]


def test_rate_limit_is_per_outer_source():
    r = Relay(config(source_rate=1 / 1024, source_burst=1.0))
    assert r.handle(F.ptb_v4(sport=1, outer_src="198.51.100.1"), 0.0, SRC_MAC).relay
    assert r.handle(F.ptb_v4(sport=2, outer_src="198.51.100.1"), 0.0, SRC_MAC).reason is Reason.RATE_LIMITED_SOURCE
    assert r.handle(F.ptb_v4(sport=2, outer_src="198.51.100.2"), 0.0, SRC_MAC).relay


def test_counts_per_reason():
    r = Relay(config(source_rate=1 / 1024, source_burst=2.0))
    frames = [
        (F.ptb_v4(sport=1), PACKET_HOST),  # relayed
        (F.ptb_v4(sport=1), PACKET_HOST),  # duplicate
        (F.ptb_v6(), PACKET_HOST),  # relayed (another router: its own bucket)
        (F.ptb_v4(sport=2), PACKET_OUTGOING),  # own frame
        (F.ptb_v4(sport=3), PACKET_OTHERHOST),  # other host
        (F.ptb_v4(sport=4, dst_mac=F.BROADCAST), PACKET_HOST),  # not unicast
        (F.echo_v4(), PACKET_HOST),  # not ptb
        (F.arp_frame(), PACKET_HOST),  # not ip
        (b"\x00" * 10, PACKET_HOST),  # too short
        (F.ptb_v4(sport=5, mtu=1500), PACKET_HOST),  # MTU not below packet
        (F.ptb_v4(sport=6, outer_dst=F.VIP4_OTHER), PACKET_HOST),  # dst not quoted src
        (F.ptb_v4(sport=7), PACKET_HOST),  # relayed (ROUTER4's second token)
        (F.ptb_v4(sport=8), PACKET_HOST),  # rate limited
    ]
    for frame, pkttype in frames:
        r.handle(frame, 0.0, SRC_MAC, pkttype)
    expected = Counter(
        {
            Reason.RELAYED: 3,
            Reason.DUPLICATE: 1,
            Reason.OWN_FRAME: 1,
            Reason.OTHER_HOST: 1,
            Reason.NOT_UNICAST: 1,
            Reason.NOT_PTB: 1,
            Reason.NOT_IP: 1,
            Reason.TOO_SHORT: 1,
            Reason.MTU_NOT_BELOW_PACKET: 1,
            Reason.DST_NOT_QUOTED_SRC: 1,
            Reason.RATE_LIMITED_SOURCE: 1,
        }
    )
    assert set(r.counts) == set(Reason)  # every reason has a counter, zero or not
    assert {k: v for k, v in r.counts.items() if v} == dict(expected)
    assert sum(r.counts.values()) == len(frames)


def test_parse_drops_share_no_state_between_calls():
    r = Relay(config())
    a = r.handle(b"", 0.0, SRC_MAC)
    b = r.handle(b"\x01", 0.0, SRC_MAC)
    assert a == b == Decision(False, Reason.TOO_SHORT, None, None)
    assert r.counts[Reason.TOO_SHORT] == 2


# -- reconfigure -----------------------------------------------------------------------


def exhaust(r: Relay, now: float) -> None:
    """Spend the per-source burst of ROUTER4 on distinct flows."""
    sport = 20000
    while True:
        d = r.handle(F.ptb_v4(sport=sport, quote_len=28), now, SRC_MAC)
        if d.reason is Reason.RATE_LIMITED_SOURCE:
            return
        assert d.relay
        sport += 1


def test_policy_only_reconfigure_keeps_limiter_and_dedup_state():
    cfg = config(source_rate=1 / 1024, source_burst=2.0, dedup_window=100.0)
    r = Relay(cfg)
    assert r.handle(F.ptb_v4(sport=1), 0.0, SRC_MAC).relay
    exhaust(r, 0.0)
    limiter, dedup = r.limiter, r.dedup
    new_policy = Policy(vips=VipSet([F.VIP4, F.VIP6, "192.0.2.0/24"]))
    r.reconfigure(cfg.with_policy(new_policy), 1.0)
    assert r.limiter is limiter and r.dedup is dedup
    assert r.policy is new_policy and r.config.policy is new_policy
    # The router that exhausted its bucket is still held, and duplicates still detected.
    assert r.handle(F.ptb_v4(sport=30000), 1.0, SRC_MAC).reason is Reason.RATE_LIMITED_SOURCE
    assert r.handle(F.ptb_v4(sport=1), 1.0, SRC_MAC).reason is Reason.DUPLICATE
    # And the new policy is in force.
    other_vip = F.ptb_v4(outer_dst="192.0.2.50", src="192.0.2.50", outer_src="198.51.100.9")
    assert r.handle(other_vip, 1.0, SRC_MAC).relay


def test_policy_only_reconfigure_applies_new_policy_drops():
    r = Relay(config())
    r.reconfigure(config(policy=Policy(vips=VipSet([F.VIP6]))), 0.0)
    assert r.handle(F.ptb_v4(), 0.0, SRC_MAC).reason is Reason.NOT_VIP
    assert r.handle(F.ptb_v6(), 0.0, SRC_MAC).relay


@pytest.mark.parametrize(
    "change",
    [
        {"source_rate": 2.0},
        {"source_burst": 3.0},
        {"global_rate": 99.0},
        {"global_burst": 99.0},
        {"source_capacity": 10},
    ],
)
def test_limit_change_resets_the_limiter(change):
    cfg = config(source_rate=1 / 1024, source_burst=2.0)
    r = Relay(cfg)
    exhaust(r, 0.0)
    old = r.limiter
    dedup = r.dedup
    new = RelayConfig(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__}, **change})
    r.reconfigure(new, 0.0)
    assert r.limiter is not old
    assert r.dedup is dedup  # dedup shape unchanged
    assert r.handle(F.ptb_v4(sport=30000), 0.0, SRC_MAC).relay


@pytest.mark.parametrize("change", [{"dedup_window": 5.0}, {"dedup_capacity": 10}])
def test_dedup_change_resets_dedup_but_not_the_limiter(change):
    cfg = config(source_rate=1 / 1024, source_burst=2.0)
    r = Relay(cfg)
    assert r.handle(F.ptb_v4(sport=1), 0.0, SRC_MAC).relay
    limiter = r.limiter
    r.reconfigure(RelayConfig(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__}, **change}), 0.0)
    assert r.limiter is limiter
    assert r.handle(F.ptb_v4(sport=1), 0.0, SRC_MAC).relay  # forgotten by the new table
    assert r.handle(F.ptb_v4(sport=2), 0.0, SRC_MAC).reason is Reason.RATE_LIMITED_SOURCE  # still held


def test_reconfigure_v6_broadcast():
    r = Relay(config())
    assert r.handle(F.ptb_v6(sport=1), 0.0, SRC_MAC).copy[:6] == ALL_NODES_MAC
    r.reconfigure(config(v6_broadcast=True), 0.0)
    assert r.handle(F.ptb_v6(sport=2), 0.0, SRC_MAC).copy[:6] == BROADCAST_MAC


def test_reconfigure_new_limiter_starts_at_the_given_clock():
    r = Relay(config(global_rate=1.0, global_burst=1.0), now=0.0)
    r.reconfigure(config(global_rate=1.0, global_burst=2.0, source_burst=100.0), 1000.0)
    assert r.handle(F.ptb_v4(sport=1), 1000.0, SRC_MAC).relay
    assert r.handle(F.ptb_v4(sport=2), 1000.0, SRC_MAC).relay
    assert r.handle(F.ptb_v4(sport=3), 1000.0, SRC_MAC).reason is Reason.RATE_LIMITED_GLOBAL


def test_counts_survive_reconfigure():
    r = Relay(config())
    r.handle(F.ptb_v4(), 0.0, SRC_MAC)
    r.reconfigure(config(source_burst=1.0), 0.0)
    assert r.counts[Reason.RELAYED] == 1


# -- report ----------------------------------------------------------------------------


def test_decision_record_for_a_relayed_ptb():
    d = Relay(config()).handle(F.ptb_v6(sport=443, dport=51000, mtu=1400), 0.0, SRC_MAC)
    rec = decision_record(d, "eth0")
    assert rec == {
        "verdict": "relay",
        "reason": "relayed",
        "interface": "eth0",
        "family": 6,
        "outer_src": F.ROUTER6,
        "outer_dst": F.VIP6,
        "mtu": 1400,
        "inner_src": F.VIP6,
        "inner_dst": F.CLIENT6,
        "proto": 6,
        "sport": 443,
        "dport": 51000,
    }
    assert logfmt(rec).startswith("verdict=relay reason=relayed interface=eth0 family=6 outer_src=2001:db8:1::1")


def test_decision_record_without_ports_or_ptb():
    d = Relay(config()).handle(F.ptb_v4(proto="icmp-echo", mtu=100), 0.0, SRC_MAC)
    rec = decision_record(d)
    assert rec["verdict"] == "drop" and rec["reason"] == "mtu_below_floor"
    assert "interface" not in rec
    assert rec["sport"] is None and rec["dport"] is None
    parse_drop = decision_record(Relay(config()).handle(b"", 0.0, SRC_MAC))
    assert parse_drop == {"verdict": "drop", "reason": "too_short", **dict.fromkeys(FIELDS)}
    assert to_json(parse_drop).startswith('{"verdict":"drop","reason":"too_short","family":null')
    assert 'sport="" dport=""' in logfmt(parse_drop)

"""Other relays' L2 copies reach delivery confirmation, and only then: the capture filter's
``accept_copies`` and the policy's PACKET_L2_COPY (pure; the kernel side: test_e2e_confirm.py)."""

from __future__ import annotations

from pmtud_relay.capture import bpf
from pmtud_relay.core.policy import PACKET_BROADCAST, PACKET_HOST, PACKET_L2_COPY, PACKET_MULTICAST, Policy, VipSet
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Relay, RelayConfig
from tests.support import frames as F

BROADCAST, ALL_NODES = "ff:ff:ff:ff:ff:ff", "33:33:00:00:00:01"


def test_filter_passes_group_mac_ptbs_only_with_accept_copies():
    plain, copies = bpf.ptb_filter(), bpf.ptb_filter(accept_copies=True)
    for frame in (F.ptb_v4(dst_mac=BROADCAST), F.ptb_v6(dst_mac=ALL_NODES),
                  F.ptb_v4(dst_mac=BROADCAST, vlans=((0x8100, 7),))):
        assert bpf.run(plain, frame) == 0
        assert bpf.run(copies, frame) > 0
    assert bpf.run(copies, F.ptb_v4()) > 0  # unicast PTBs as before
    assert bpf.run(copies, F.ptb_v4(dst_mac=BROADCAST, icmp_type=3, icmp_code=1)) == 0  # still only PTBs


def _config():
    import ipaddress

    return RelayConfig(policy=Policy(vips=VipSet([ipaddress.ip_network(F.VIP4), ipaddress.ip_network(F.VIP6)])))


def test_copy_is_checked_like_a_captured_ptb_but_for_its_group_mac():
    relay = Relay(_config())
    copy = F.ptb_v4(dst_mac=BROADCAST)
    assert relay.handle(copy, 0.0, b"\x02" * 6, PACKET_BROADCAST).reason is Reason.NOT_UNICAST
    assert relay.handle(F.ptb_v6(dst_mac=ALL_NODES), 0.0, b"\x02" * 6, PACKET_MULTICAST).reason is Reason.NOT_UNICAST
    assert relay.handle(copy, 0.0, b"\x02" * 6, PACKET_L2_COPY).relay  # accepted for the lookup
    assert relay.handle(copy, 0.1, b"\x02" * 6, PACKET_L2_COPY).reason is Reason.DUPLICATE
    other = F.ptb_v4(dst_mac=BROADCAST, src="192.0.2.99", outer_dst="192.0.2.99")
    assert relay.handle(other, 0.2, b"\x02" * 6, PACKET_L2_COPY).reason is Reason.NOT_VIP
    assert relay.handle(F.ptb_v4(dst_mac=BROADCAST, mtu=200, dport=9), 0.3, b"\x02" * 6,
                        PACKET_L2_COPY).reason is Reason.MTU_BELOW_FLOOR
    assert relay.handle(F.ptb_v4(dport=10), 0.4, b"\x02" * 6, PACKET_HOST).relay  # unicast unchanged


def test_copy_floods_feed_the_flood_shunner():
    """Drops by the copies' own bucket count for the relay's shun list (docs/rate-limits.md)."""
    from pmtud_relay.core.ratelimit import RateLimiter

    copies, relay = RateLimiter(1, 1, 1e6, 1e6, 4, 0.0), RateLimiter(1, 1, 1e6, 1e6, 2, 0.0)
    for _ in range(5):
        copies.check(b"\x01" * 4, 0.0)
    relay.check(b"\x02" * 4, 0.0)
    relay.check(b"\x02" * 4, 0.0)  # one drop of its own
    relay.add_source_drops(copies.take_source_drops())
    relay.add_source_drops({b"\x03" * 4: 9})  # a third source: the table holds 2, it is not added
    assert relay.take_source_drops() == {b"\x02" * 4: 1, b"\x01" * 4: 4}

"""Policy.check, VipSet, protocol_numbers and Policy validation."""

from __future__ import annotations

import ipaddress

import pytest

from pmtud_relay.core.packet import PTB, parse_frame
from pmtud_relay.core.policy import (
    DEFAULT_FLOOR_V4,
    DEFAULT_FLOOR_V6,
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
    Policy,
    VipSet,
    protocol_numbers,
)
from pmtud_relay.core.reasons import Reason
from tests.support import frames as F

VIPS = VipSet([F.VIP4, F.VIP4_OTHER, F.VIP6, F.VIP6_OTHER])
POLICY = Policy(vips=VIPS)


def ptb(frame: bytes) -> PTB:
    parsed = parse_frame(frame)
    assert isinstance(parsed, PTB), parsed
    return parsed


def v4(**kw) -> PTB:
    return ptb(F.ptb_v4(**kw))


def v6(**kw) -> PTB:
    return ptb(F.ptb_v6(**kw))


BUILDERS = {4: v4, 6: v6}


@pytest.mark.parametrize("family", [4, 6])
def test_relayable_ptb_passes(family):
    assert POLICY.check(BUILDERS[family]()) is None
    assert POLICY.check(BUILDERS[family](), PACKET_HOST) is None


def test_default_floors():
    assert (Policy().floor_v4, Policy().floor_v6) == (552, 1280) == (DEFAULT_FLOOR_V4, DEFAULT_FLOOR_V6)


# -- arrival: unicast only -------------------------------------------------------------


@pytest.mark.parametrize(
    "dst_mac",
    ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "33:33:00:00:00:01", "03:00:00:00:00:00"],
    ids=["broadcast", "ipv4-mcast", "ipv6-mcast", "group-bit-only"],
)
@pytest.mark.parametrize("family", [4, 6])
def test_group_destination_mac_is_not_unicast_even_with_pkttype_host(family, dst_mac):
    assert POLICY.check(BUILDERS[family](dst_mac=dst_mac), PACKET_HOST) is Reason.NOT_UNICAST


@pytest.mark.parametrize("pkttype", [PACKET_BROADCAST, PACKET_MULTICAST])
@pytest.mark.parametrize("family", [4, 6])
def test_broadcast_and_multicast_pkttypes_are_not_unicast(family, pkttype):
    # The MAC looks unicast; the kernel's verdict on how the frame arrived wins.
    assert POLICY.check(BUILDERS[family](), pkttype) is Reason.NOT_UNICAST


@pytest.mark.parametrize("dst_mac", [F.HOST_MAC, F.BROADCAST])
def test_outgoing_frames_are_own_frames(dst_mac):
    # Includes the relay's own broadcast copies looping back to its capture socket.
    assert POLICY.check(v4(dst_mac=dst_mac), PACKET_OUTGOING) is Reason.OWN_FRAME


def test_other_host():
    assert POLICY.check(v4(), PACKET_OTHERHOST) is Reason.OTHER_HOST
    assert POLICY.check(v6(), PACKET_OTHERHOST) is Reason.OTHER_HOST


@pytest.mark.parametrize("pkttype", [5, 7, 255])
def test_unknown_pkttypes_are_not_relayed(pkttype):
    assert POLICY.check(v4(), pkttype) is Reason.NOT_UNICAST


# -- addresses -------------------------------------------------------------------------


def test_destination_must_be_the_quoted_source():
    # Both are VIPs, but the PTB is about a packet another address sent.
    assert POLICY.check(v4(outer_dst=F.VIP4_OTHER)) is Reason.DST_NOT_QUOTED_SRC
    assert POLICY.check(v6(outer_dst=F.VIP6_OTHER)) is Reason.DST_NOT_QUOTED_SRC
    assert POLICY.check(v4(outer_dst=F.CLIENT4)) is Reason.DST_NOT_QUOTED_SRC


def test_quoted_source_must_be_a_vip():
    assert POLICY.check(v4(outer_dst="192.0.2.99", src="192.0.2.99")) is Reason.NOT_VIP
    assert POLICY.check(v6(outer_dst="2001:db8:2::99", src="2001:db8:2::99")) is Reason.NOT_VIP


def test_empty_vip_set_relays_nothing():
    assert Policy().check(v4()) is Reason.NOT_VIP
    assert Policy().check(v6()) is Reason.NOT_VIP


def test_vip_prefix_in_policy():
    policy = Policy(vips=VipSet(["192.0.2.0/24", "2001:db8:2::/48"]))
    assert policy.check(v4(outer_dst="192.0.2.200", src="192.0.2.200")) is None
    assert policy.check(v6(outer_dst="2001:db8:2:ffff::1", src="2001:db8:2:ffff::1")) is None
    assert policy.check(v4(outer_dst="198.51.100.20", src="198.51.100.20")) is Reason.NOT_VIP


# -- MTU -------------------------------------------------------------------------------


@pytest.mark.parametrize("family, floor", [(4, 552), (6, 1280)])
def test_mtu_floor_boundary(family, floor):
    build = BUILDERS[family]
    assert POLICY.check(build(mtu=floor - 1)) is Reason.MTU_BELOW_FLOOR
    assert POLICY.check(build(mtu=floor)) is None
    assert POLICY.check(build(mtu=0)) is Reason.MTU_BELOW_FLOOR


def test_floors_are_per_family():
    # 1000 is fine for IPv4 but below the IPv6 minimum link MTU.
    assert POLICY.check(v4(mtu=1000)) is None
    assert POLICY.check(v6(mtu=1000)) is Reason.MTU_BELOW_FLOOR


def test_custom_floors():
    policy = Policy(vips=VIPS, floor_v4=1000, floor_v6=1400)
    assert policy.check(v4(mtu=999)) is Reason.MTU_BELOW_FLOOR
    assert policy.check(v4(mtu=1000)) is None
    assert policy.check(v6(mtu=1399)) is Reason.MTU_BELOW_FLOOR
    assert policy.check(v6(mtu=1400)) is None


@pytest.mark.parametrize("family", [4, 6])
def test_mtu_must_be_below_the_quoted_packet_length(family):
    build = BUILDERS[family]
    assert POLICY.check(build(mtu=1500, length=1500)) is Reason.MTU_NOT_BELOW_PACKET
    assert POLICY.check(build(mtu=9000, length=1500)) is Reason.MTU_NOT_BELOW_PACKET
    assert POLICY.check(build(mtu=1499, length=1500)) is None
    assert POLICY.check(build(mtu=1400, length=1401)) is None


# -- allow-lists -----------------------------------------------------------------------


def test_protocol_allow_list():
    udp_only = Policy(vips=VIPS, protocols=frozenset({17}))
    assert udp_only.check(v4(proto="tcp")) is Reason.PROTO_NOT_ALLOWED
    assert udp_only.check(v6(proto="tcp")) is Reason.PROTO_NOT_ALLOWED
    assert udp_only.check(v4(proto="udp")) is None
    assert udp_only.check(v6(proto="udp")) is None


def test_icmp_protocol_name_covers_both_families():
    icmp = Policy(vips=VIPS, protocols=protocol_numbers(["icmp"]))
    assert icmp.check(v4(proto="icmp-echo")) is None
    assert icmp.check(v6(proto="icmp-echo")) is None
    assert icmp.check(v4(proto="tcp")) is Reason.PROTO_NOT_ALLOWED


def test_empty_protocol_allow_list_allows_nothing():
    assert Policy(vips=VIPS, protocols=frozenset()).check(v4()) is Reason.PROTO_NOT_ALLOWED


def test_port_allow_list_checks_the_quoted_source_port():
    https = Policy(vips=VIPS, ports=frozenset({443}))
    assert https.check(v4(sport=443, dport=50000)) is None
    assert https.check(v6(sport=443, dport=50000)) is None
    assert https.check(v4(sport=8443)) is Reason.PORT_NOT_ALLOWED
    # The client's port being 443 does not make it a service flow.
    assert https.check(v4(sport=50000, dport=443)) is Reason.PORT_NOT_ALLOWED


def test_port_allow_list_rejects_ptbs_without_ports():
    https = Policy(vips=VIPS, ports=frozenset({443}))
    assert https.check(v4(proto="icmp-echo")) is Reason.PORT_NOT_ALLOWED
    assert https.check(v4(quote=F.original_v4(frag=100)[:28])) is Reason.PORT_NOT_ALLOWED  # a non-first fragment


def test_check_order():
    strict = Policy(vips=VipSet(["192.0.2.99"]), protocols=frozenset({17}), ports=frozenset({1}))
    # Everything is wrong: the arrival check comes first, then addresses, then MTU, then lists.
    bad = v4(dst_mac=F.BROADCAST, outer_dst=F.VIP4_OTHER, mtu=100)
    assert strict.check(bad) is Reason.NOT_UNICAST
    assert strict.check(v4(outer_dst=F.VIP4_OTHER, mtu=100)) is Reason.DST_NOT_QUOTED_SRC
    assert strict.check(v4(mtu=100)) is Reason.NOT_VIP
    loose = Policy(vips=VIPS, protocols=frozenset({17}), ports=frozenset({1}))
    assert loose.check(v4(mtu=100)) is Reason.MTU_BELOW_FLOOR
    assert loose.check(v4(mtu=1500)) is Reason.MTU_NOT_BELOW_PACKET
    assert loose.check(v4()) is Reason.PROTO_NOT_ALLOWED
    assert loose.check(v4(proto="udp")) is Reason.PORT_NOT_ALLOWED


# -- VipSet ----------------------------------------------------------------------------


def test_vipset_exact_addresses():
    vips = VipSet([F.VIP4, F.VIP6])
    assert F.packed(F.VIP4) in vips
    assert F.packed(F.VIP6) in vips
    assert F.packed(F.VIP4_OTHER) not in vips
    assert F.packed(F.VIP6_OTHER) not in vips


def test_vipset_prefixes():
    vips = VipSet(["203.0.113.0/25", "2001:db8:2::/64"])
    assert F.packed("203.0.113.0") in vips
    assert F.packed("203.0.113.127") in vips
    assert F.packed("203.0.113.128") not in vips
    assert F.packed("2001:db8:2::ffff") in vips
    assert F.packed("2001:db8:2:1::") not in vips


def test_vipset_host_bits_in_prefix_are_ignored():
    vips = VipSet(["192.0.2.77/24"])
    assert F.packed("192.0.2.1") in vips
    assert vips.networks == (ipaddress.ip_network("192.0.2.0/24"),)


def test_vipset_accepts_network_objects():
    vips = VipSet([ipaddress.ip_network("198.51.100.0/30"), ipaddress.ip_network("2001:db8::1/128")])
    assert F.packed("198.51.100.3") in vips
    assert F.packed("2001:db8::1") in vips
    assert F.packed("198.51.100.4") not in vips


@pytest.mark.parametrize(
    "networks, address",
    [
        (["0.0.0.0/0"], "2001:db8::1"),
        (["0.0.0.0/0"], "::ffff:192.0.2.10"),
        (["::/0"], "192.0.2.10"),
        (["::/96"], "192.0.2.10"),  # IPv4-compatible block: still a different family
        (["::c000:20a"], "192.0.2.10"),  # same low 32 bits
        (["192.0.2.10"], "::c000:20a"),
        (["192.0.2.0/24"], "::c000:20a"),
    ],
)
def test_vipset_does_not_confuse_families(networks, address):
    assert F.packed(address) not in VipSet(networks)


def test_vipset_whole_family_prefix_covers_that_family():
    assert F.packed("203.0.113.9") in VipSet(["0.0.0.0/0"])
    assert F.packed("2001:db8:ffff::1") in VipSet(["::/0"])


def test_vipset_empty():
    vips = VipSet()
    assert len(vips) == 0
    assert F.packed(F.VIP4) not in vips
    assert F.packed(F.VIP6) not in vips
    assert b"" not in vips


def test_vipset_value_semantics():
    a = VipSet([F.VIP6, F.VIP4, "192.0.2.0/24", F.VIP4])
    b = VipSet(["192.0.2.0/24", F.VIP4, F.VIP6])
    assert a == b and hash(a) == hash(b)
    assert len(a) == 3  # duplicates collapse
    assert a != VipSet([F.VIP4])
    assert a != [F.VIP4, F.VIP6]
    assert [n.version for n in a.networks] == [4, 4, 6]
    assert "192.0.2.10/32" in repr(a) and "2001:db8:2::10/128" in repr(a)


def test_vipset_rejects_garbage():
    with pytest.raises(ValueError):
        VipSet(["nonsense"])
    with pytest.raises(ValueError):
        VipSet(["192.0.2.0/33"])


# -- protocol_numbers ------------------------------------------------------------------


def test_protocol_names():
    assert protocol_numbers(["tcp"]) == {6}
    assert protocol_numbers(["udp", "sctp", "udplite"]) == {17, 132, 136}
    assert protocol_numbers(["icmp"]) == {1, 58}
    assert protocol_numbers([" TCP ", "Udp"]) == {6, 17}
    assert protocol_numbers([]) == frozenset()
    assert isinstance(protocol_numbers(["tcp"]), frozenset)


def test_protocol_numbers_as_text():
    assert protocol_numbers(["0", "6", "255"]) == {0, 6, 255}
    assert protocol_numbers(["tcp", "6"]) == {6}
    assert protocol_numbers([47]) == {47}


@pytest.mark.parametrize("bad", ["foo", "", "256", "-1", "6.0", "0x06", "tcp,udp", "²", "٦"])
def test_protocol_numbers_errors_name_the_value(bad):
    with pytest.raises(ValueError, match="unknown protocol") as info:
        protocol_numbers(["tcp", bad])
    assert repr(bad) in str(info.value)


# -- Policy validation -----------------------------------------------------------------


@pytest.mark.parametrize("floor", [67, 0, -1, 65536])
def test_policy_rejects_bad_v4_floor(floor):
    with pytest.raises(ValueError, match="floor_v4"):
        Policy(floor_v4=floor)


@pytest.mark.parametrize("floor", [1279, 552, 65536])
def test_policy_rejects_bad_v6_floor(floor):
    with pytest.raises(ValueError, match="floor_v6"):
        Policy(floor_v6=floor)


def test_policy_floor_limits_are_inclusive():
    Policy(floor_v4=68, floor_v6=1280)
    Policy(floor_v4=65535, floor_v6=65535)


@pytest.mark.parametrize("ports", [{0}, {65536}, {443, -1}])
def test_policy_rejects_bad_ports(ports):
    with pytest.raises(ValueError, match="ports"):
        Policy(ports=frozenset(ports))


def test_policy_is_immutable():
    with pytest.raises(AttributeError):
        POLICY.floor_v4 = 600  # type: ignore[misc]

"""nfnetlink_log wire format: hand-built netlink messages → records → frames → the core.

Messages are built byte by byte by tests/support/nflog.py, independently of the module's own
builders.
"""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmtud_relay.core.policy import PACKET_HOST, Policy, VipSet
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Relay, RelayConfig
from pmtud_relay.nflog import wire as w
from pmtud_relay.nflog.capture import NflogDemux
from tests.support.checksum import internet_checksum
from tests.support.nflog import (
    HOST_MAC,
    IFINDEX,
    ROUTER_MAC,
    VIP4,
    VIP6,
    attrs_for,
    eth,
    nla,
    nlmsg,
    packet_msg,
    ptb4_msg,
    ptb4_packet,
    ptb6_msg,
    ptb6_packet,
)


def relay_for(*vips: str) -> Relay:
    return Relay(RelayConfig(policy=Policy(vips=VipSet(vips or (VIP4, VIP6)))))


# --- parsing --------------------------------------------------------------------------------------
def test_every_packet_attribute_is_parsed() -> None:
    payload = ptb4_packet()
    hwheader = eth(HOST_MAC, ROUTER_MAC, 0x0800)
    attrs = attrs_for(payload, hook=0, hwheader=hwheader, seq=41, prefix=b"pmtud", timestamp=(1700000000, 250000))
    attrs += [
        nla(2, struct.pack("!I", 0xBEEF)),  # mark
        nla(5, struct.pack("!I", 9)),  # outdev
        nla(6, struct.pack("!I", 11)),  # physindev
        nla(13, struct.pack("!I", 77)),  # seq_global
        nla(20 | w.NLA_F_NESTED, nla(1, struct.pack("!H", 0x8100)) + nla(2, struct.pack("!H", 100))),  # vlan
        nla(21, b"\x01\x02\x03\x04"),  # l2hdr
    ]
    batch = w.parse_datagram(packet_msg(attrs, group=2105))
    assert batch.malformed == 0 and batch.acks == [] and not batch.overrun
    (pkt,) = batch.packets
    assert pkt.group == 2105 and pkt.family == socket.AF_INET
    assert pkt.hw_protocol == 0x0800 and pkt.hook == 0
    assert pkt.payload == payload
    assert pkt.indev == IFINDEX and pkt.outdev == 9 and pkt.physindev == 11
    assert pkt.hwaddr == ROUTER_MAC
    assert pkt.hwtype == 1 and pkt.hwlen == 14 and pkt.hwheader == hwheader
    assert pkt.timestamp == pytest.approx(1700000000.25)
    assert pkt.seq == 41 and pkt.seq_global == 77
    assert pkt.prefix == b"pmtud"
    assert pkt.mark == 0xBEEF
    assert (pkt.vlan_proto, pkt.vlan_tci) == (0x8100, 100)
    assert pkt.l2hdr == b"\x01\x02\x03\x04"


def test_absent_attributes_have_neutral_values() -> None:
    (pkt,) = w.parse_datagram(packet_msg([nla(9, b"\x45")])).packets
    assert pkt.payload == b"\x45"
    assert (pkt.indev, pkt.hw_protocol, pkt.hook, pkt.seq, pkt.hwtype, pkt.hwlen) == (-1,) * 6
    assert pkt.hwheader is None and pkt.hwaddr is None and pkt.timestamp is None and pkt.prefix is None


def test_attribute_flag_bits_are_masked() -> None:
    msg = packet_msg([nla(4 | w.NLA_F_NET_BYTEORDER, struct.pack("!I", 3)), nla(9 | w.NLA_F_NESTED, b"xy")])
    (pkt,) = w.parse_datagram(msg).packets
    assert pkt.indev == 3 and pkt.payload == b"xy"


def test_hwaddr_is_cut_to_its_stated_length() -> None:
    msg = packet_msg([nla(8, struct.pack("!HH", 6, 0) + ROUTER_MAC + b"\xaa\xbb")])
    assert w.parse_datagram(msg).packets[0].hwaddr == ROUTER_MAC


def test_batched_datagram_and_unpadded_last_attribute() -> None:
    msgs = [ptb4_msg(seq=i) for i in range(5)]
    batch = w.parse_datagram(b"".join(msgs))
    assert [p.seq for p in batch.packets] == [0, 1, 2, 3, 4]
    assert batch.malformed == 0


def test_acks_errors_done_and_overrun() -> None:
    req = nlmsg(0x0401, struct.pack("!BBH", 0, 0, 2105), seq=7, flags=5)
    ack = nlmsg(2, struct.pack("=i", 0) + req[:16], seq=7)
    err = nlmsg(2, struct.pack("=i", -errno.EPERM) + req[:16].replace(struct.pack("=I", 7), struct.pack("=I", 8)),
                seq=8)
    done = nlmsg(3, struct.pack("=i", 0))
    overrun = nlmsg(4, b"")
    batch = w.parse_datagram(ack + err + done + overrun + ptb4_msg())
    assert batch.acks == [(7, 0), (8, errno.EPERM)]
    assert batch.overrun
    assert len(batch.packets) == 1 and batch.malformed == 0


@pytest.mark.parametrize(
    "data, packets, malformed",
    [
        (b"", 0, 0),
        (b"\x00" * 8, 0, 0),  # zero padding shorter than a header
        (b"\x01" * 8, 0, 1),  # garbage shorter than a header
        (struct.pack("=IHHII", 8, 0x400, 0, 0, 0), 0, 1),  # length below the header size
        (struct.pack("=IHHII", 400, 0x400, 0, 0, 0), 0, 1),  # length beyond the datagram
        (nlmsg(0x400, b"\x02\x00"), 0, 1),  # no room for nfgenmsg
        (packet_msg([struct.pack("=HH", 2, 9)]), 0, 1),  # attribute length below 4
        (packet_msg([struct.pack("=HH", 64, 9) + b"ab"]), 0, 1),  # attribute beyond the message
        (nlmsg(2, b"\x00"), 0, 1),  # error message too short for its errno
    ],
)
def test_malformed_input_is_counted_not_raised(data: bytes, packets: int, malformed: int) -> None:
    batch = w.parse_datagram(data)
    assert (len(batch.packets), batch.malformed) == (packets, malformed)


def test_short_fixed_size_attributes_are_ignored() -> None:
    msg = packet_msg([nla(4, b"\x01"), nla(1, b"\x08"), nla(3, b"\x00" * 8), nla(12, b""), nla(15, b"\x01")])
    (pkt,) = w.parse_datagram(msg).packets
    assert (pkt.indev, pkt.hw_protocol, pkt.timestamp, pkt.seq, pkt.hwtype) == (-1, -1, None, -1, -1)


def test_a_malformed_message_does_not_hide_the_ones_before_it() -> None:
    bad = packet_msg([struct.pack("=HH", 200, 9)])
    batch = w.parse_datagram(ptb4_msg(seq=1) + bad + ptb4_msg(seq=2))
    assert [p.seq for p in batch.packets] == [1, 2]
    assert batch.malformed == 1


# --- config requests ------------------------------------------------------------------------------
def test_config_requests_layout() -> None:
    bind = w.config_message(2105, w.cmd_attr(w.NFULNL_CFG_CMD_BIND), seq=3)
    assert bind == struct.pack("=IHHII", 28, 0x0401, 0x05, 3, 0) + struct.pack("!BBH", 0, 0, 2105) + \
        struct.pack("=HH", 5, 1) + b"\x01\x00\x00\x00"
    pf = w.config_message(2105, w.cmd_attr(w.NFULNL_CFG_CMD_PF_BIND), seq=1, family=socket.AF_INET6)
    assert pf[16:20] == struct.pack("!BBH", 10, 0, 2105) and pf[24] == 3
    assert w.mode_attr(0xFFFF) == struct.pack("=HH", 10, 2) + struct.pack("!IBx", 0xFFFF, 2) + b"\0\0"
    assert w.u32_attr(w.NFULA_CFG_TIMEOUT, 1) == struct.pack("=HH", 8, 4) + struct.pack("!I", 1)
    assert w.flags_attr(w.NFULNL_CFG_F_SEQ) == struct.pack("=HH", 6, 6) + b"\x00\x01\x00\x00"
    # Requests parse back as well-formed (a kernel echo of them is not a packet).
    assert w.parse_datagram(bind) == w.Batch([], [], 0, False)


# --- frame reconstruction ---------------------------------------------------------------------------
def test_ethernet_header_plus_payload_is_the_frame_received() -> None:
    payload = ptb4_packet()
    header = eth(HOST_MAC, ROUTER_MAC, 0x0800)
    (pkt,) = w.parse_datagram(ptb4_msg(payload=payload, hwheader=header)).packets
    assert w.rebuild_frame(pkt, HOST_MAC) == header + payload


def test_vlan_device_header_of_18_bytes() -> None:
    """A VLAN device without tag offload has hard_header_len 18; after the kernel removed the
    tag on receive the 18 bytes are the untagged Ethernet header plus the IP header's first 4."""
    payload = ptb4_packet()
    hw18 = eth(HOST_MAC, ROUTER_MAC, 0x0800) + payload[:4]
    (pkt,) = w.parse_datagram(ptb4_msg(payload=payload, hwheader=hw18, hwlen=18)).packets
    assert w.rebuild_frame(pkt, HOST_MAC) == eth(HOST_MAC, ROUTER_MAC, 0x0800) + payload


def test_tagged_header_loses_its_tag() -> None:
    """Should a header still carry an 802.1Q tag, only the addresses are kept: the copy leaves
    through the (VLAN) input device, which tags it itself."""
    payload = ptb6_packet()
    tagged = HOST_MAC + ROUTER_MAC + struct.pack("!HHH", 0x8100, 100, 0x86DD)
    (pkt,) = w.parse_datagram(ptb6_msg(payload=payload, hwheader=tagged, hwlen=18)).packets
    frame = w.rebuild_frame(pkt, HOST_MAC)
    assert frame == eth(HOST_MAC, ROUTER_MAC, 0x86DD) + payload
    assert relay_for().handle(frame, 0.0, HOST_MAC, PACKET_HOST).reason is Reason.RELAYED


def test_without_header_build_one_from_device_mac_and_hwaddr() -> None:
    payload = ptb4_packet()
    (pkt,) = w.parse_datagram(packet_msg(attrs_for(payload, hwheader=None))).packets
    assert w.rebuild_frame(pkt, HOST_MAC) == eth(HOST_MAC, ROUTER_MAC, 0x0800) + payload


def test_non_ethernet_header_is_not_used() -> None:
    payload = ptb4_packet()
    (pkt,) = w.parse_datagram(packet_msg(attrs_for(payload, hwheader=b"\x00" * 16, hwtype=772))).packets
    assert w.rebuild_frame(pkt, HOST_MAC) == eth(HOST_MAC, ROUTER_MAC, 0x0800) + payload


@pytest.mark.parametrize(
    "kw, dev_mac, reason",
    [
        ({"hwheader": None, "hwaddr": None}, HOST_MAC, w.NflogDrop.NO_L2_HEADER),  # tun-like device
        ({"hwheader": None}, None, w.NflogDrop.NO_L2_HEADER),  # unknown device MAC
        ({"hwheader": b"\x00" * 10}, HOST_MAC, w.NflogDrop.NO_L2_HEADER),  # short header
        ({"hwheader": None, "hwaddr": b"\x01\x02"}, HOST_MAC, w.NflogDrop.NO_L2_HEADER),  # odd address
    ],
)
def test_no_usable_l2_information_is_a_counted_drop(kw, dev_mac, reason) -> None:
    if "hwheader" in kw and kw["hwheader"] is not None:
        kw.setdefault("hwaddr", None)
    (pkt,) = w.parse_datagram(packet_msg(attrs_for(ptb4_packet(), **kw))).packets
    assert w.rebuild_frame(pkt, dev_mac) is reason


def test_no_payload_is_a_counted_drop() -> None:
    (pkt,) = w.parse_datagram(packet_msg([nla(4, struct.pack("!I", IFINDEX))])).packets
    assert w.rebuild_frame(pkt, HOST_MAC) is w.NflogDrop.NO_PAYLOAD


def test_ethertype_falls_back_to_the_ip_version() -> None:
    payload = ptb6_packet()
    (pkt,) = w.parse_datagram(ptb6_msg(payload=payload, hw_protocol=0)).packets
    assert w.rebuild_frame(pkt, HOST_MAC)[12:14] == b"\x86\xdd"


# --- into the core: its checks are not skipped --------------------------------------------------------
@pytest.mark.parametrize("family", [4, 6])
def test_rebuilt_frame_is_relayed_by_the_core(family: int) -> None:
    msg = ptb4_msg() if family == 4 else ptb6_msg()
    (pkt,) = w.parse_datagram(msg).packets
    decision = relay_for().handle(w.rebuild_frame(pkt, HOST_MAC), 0.0, HOST_MAC, PACKET_HOST)
    assert decision.relay and decision.reason is Reason.RELAYED
    assert decision.ptb.family == family


def test_core_checks_apply_to_nflog_frames() -> None:
    relay = relay_for()
    def decide(msg):
        (pkt,) = w.parse_datagram(msg).packets
        return relay.handle(w.rebuild_frame(pkt, HOST_MAC), 0.0, HOST_MAC, PACKET_HOST).reason

    # A broadcast destination (a relayed copy) is refused even though the capture says "host".
    assert decide(ptb4_msg(hwheader=eth(b"\xff" * 6, ROUTER_MAC, 0x0800))) is Reason.NOT_UNICAST
    # Not a VIP, wrong type, broken checksum: exactly as for AF_PACKET frames.
    assert Relay(RelayConfig(policy=Policy(vips=VipSet(["192.0.2.99"])))).handle(
        w.rebuild_frame(w.parse_datagram(ptb4_msg()).packets[0], HOST_MAC), 0.0, HOST_MAC).reason is Reason.NOT_VIP
    echo = bytearray(ptb4_packet())
    echo[20] = 8  # ICMP echo request instead of 3/4 ...
    echo[22:24] = b"\0\0"
    # ... with a valid checksum: only the type is wrong
    echo[22:24] = struct.pack("!H", internet_checksum(bytes(echo[20:])))
    assert internet_checksum(bytes(echo[20:])) == 0
    assert decide(ptb4_msg(payload=bytes(echo))) is Reason.NOT_PTB
    broken = bytearray(ptb4_packet())
    broken[-1] ^= 0xFF
    assert decide(ptb4_msg(payload=bytes(broken))) is Reason.BAD_CHECKSUM


# --- the socket-free demultiplexer --------------------------------------------------------------------
def test_demux_sorts_by_input_interface_and_counts() -> None:
    demux = NflogDemux(2105, [("eth0", IFINDEX, HOST_MAC), ("eth1", 8, HOST_MAC)])
    data = ptb4_msg(seq=0) + ptb4_msg(seq=1, indev=8) + ptb4_msg(seq=2, indev=99) + \
        ptb4_msg(seq=3, hwheader=None, hwaddr=None)
    assert demux.feed(data) == 4
    assert len(demux.port("eth0").queue) == 1 and len(demux.port("eth1").queue) == 1
    assert demux.drops[w.NflogDrop.FOREIGN_INTERFACE] == 1
    assert demux.drops[w.NflogDrop.NO_L2_HEADER] == 1
    frame, pkttype = demux.port("eth0").drain()[0]
    assert pkttype == PACKET_HOST and frame[:6] == HOST_MAC
    assert demux.port("eth0").drain() == []
    assert demux.received == 4 and demux.lost == 0


def test_demux_counts_sequence_gaps_as_lost() -> None:
    demux = NflogDemux(2105, [("eth0", IFINDEX, HOST_MAC)])
    demux.feed(ptb4_msg(seq=10))
    demux.feed(ptb4_msg(seq=11) + ptb4_msg(seq=15))
    assert demux.lost == 3
    demux.feed(ptb4_msg(seq=1))  # a step back (the group was re-created) is not a loss
    assert demux.lost == 3
    wrap = NflogDemux(2105, [("eth0", IFINDEX, HOST_MAC)])
    wrap.feed(ptb4_msg(seq=0xFFFFFFFE) + ptb4_msg(seq=0xFFFFFFFF) + ptb4_msg(seq=2))  # 0 and 1 missing
    assert wrap.lost == 2
    stats = demux.stats()
    assert stats["nflog_received"] == 4 and stats["nflog_lost"] == 3


def test_demux_malformed_and_overrun_messages_are_counted() -> None:
    demux = NflogDemux(2105, [("eth0", IFINDEX, HOST_MAC)])
    demux.feed(nlmsg(4, b"") + packet_msg([struct.pack("=HH", 99, 9)]))
    assert demux.overruns == 1 and demux.drops[w.NflogDrop.MALFORMED] == 1


# --- never raises ---------------------------------------------------------------------------------------
PROPS = settings(max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_datagrams() -> list[bytes]:
    return [
        ptb4_msg(seq=3, prefix=b"p", timestamp=(1, 2)),
        ptb6_msg(seq=4),
        ptb4_msg() + ptb6_msg(hwheader=None),
        packet_msg(attrs_for(ptb4_packet(), hwheader=None, hwaddr=None)),
        nlmsg(2, struct.pack("=i", -1) + b"\0" * 16) + ptb4_msg(),
    ]


def _check_total(data: bytes) -> None:
    batch = w.parse_datagram(data)
    assert isinstance(batch, w.Batch)
    relay = relay_for()
    for pkt in batch.packets:
        frame = w.rebuild_frame(pkt, HOST_MAC)
        if isinstance(frame, bytes):
            relay.handle(frame, 0.0, HOST_MAC, PACKET_HOST)
        else:
            assert isinstance(frame, w.NflogDrop)
    NflogDemux(2105, [("eth0", IFINDEX, HOST_MAC)]).feed(data)


@PROPS
@given(st.binary(max_size=600))
def test_parser_never_raises_on_random_bytes(data: bytes) -> None:
    _check_total(data)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(_valid_datagrams())))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "length"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        else:  # corrupt a 16-bit length-looking field with an extreme value
            j = i - i % 2
            data[j : j + 2] = struct.pack("=H", draw(st.sampled_from([0, 1, 3, 4, 5, 0xFFFF, 0x8000])))
    return bytes(data)


@PROPS
@given(mutated())
def test_parser_never_raises_on_mutated_messages(data: bytes) -> None:
    _check_total(data)


@PROPS
@given(st.lists(st.sampled_from(range(1, 25)), max_size=12), st.binary(max_size=64))
def test_parser_never_raises_on_odd_attribute_mixes(kinds: list[int], blob: bytes) -> None:
    attrs = [nla(k, blob[: (k * 3) % (len(blob) + 1)]) for k in kinds]
    _check_total(packet_msg(attrs))


def test_demux_follows_a_recreated_interface() -> None:
    """An interface that is deleted and re-created (same name, new ifindex, new MAC): the old
    ifindex is foreign once its port is removed, the new one is accepted with the new MAC."""
    demux = NflogDemux(2105, [("eth0", IFINDEX, HOST_MAC)])
    old = demux.port("eth0")
    old.queue.append((b"stale", PACKET_HOST))
    demux.remove_port(old)
    demux.remove_port(old)  # idempotent
    assert demux.ports == {} and not old.queue
    demux.feed(ptb4_msg(seq=0))
    assert demux.drops[w.NflogDrop.FOREIGN_INTERFACE] == 1
    new_mac = b"\x02\x00\x00\x00\x09\x09"
    new = demux.add_port("eth0", 42, new_mac)
    assert demux.port("eth0") is new and set(demux.ports) == {42}
    demux.feed(ptb4_msg(seq=1, indev=42, hwheader=b"") + ptb4_msg(seq=2))  # no L2 header: port MAC used
    assert demux.drops[w.NflogDrop.FOREIGN_INTERFACE] == 2  # the old ifindex stays foreign
    (frame, _), = new.drain()
    assert frame[:6] == new_mac
    # Registering the name again at yet another ifindex replaces the port (no stale entry).
    newer = demux.add_port("eth0", 43, HOST_MAC)
    assert set(demux.ports) == {43} and demux.port("eth0") is newer

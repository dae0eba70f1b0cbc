"""frame.py: the copy builder, VLAN tag re-insertion and MAC text conversion."""

from __future__ import annotations

import struct

import pytest

from pmtud_relay.core.frame import (
    ALL_NODES_MAC,
    BROADCAST_MAC,
    build_copy,
    format_mac,
    insert_vlan_tag,
    parse_mac,
)
from pmtud_relay.core.packet import PTB, parse_frame
from tests.support import frames as F

SRC = F.mac(F.RELAY_MAC)


def test_constants():
    assert BROADCAST_MAC == b"\xff" * 6
    assert ALL_NODES_MAC == bytes.fromhex("333300000001")


def test_build_copy_replaces_only_the_addresses():
    frame = F.ptb_v4(vlans=((0x8100, 42),))
    copy = build_copy(frame, BROADCAST_MAC, SRC)
    assert copy == BROADCAST_MAC + SRC + frame[12:]
    assert isinstance(copy, bytes)
    assert frame[:6] == F.mac(F.HOST_MAC)  # the input is untouched


def test_build_copy_of_a_minimal_frame():
    assert build_copy(b"\x01" * 12 + b"\x08\x00", ALL_NODES_MAC, SRC) == ALL_NODES_MAC + SRC + b"\x08\x00"


@pytest.mark.parametrize("tpid", [0x8100, 0x88A8])
def test_insert_vlan_tag(tpid):
    frame = F.ptb_v4()
    tagged = insert_vlan_tag(frame, tpid, 0x2064)  # PCP 1, VID 100
    assert len(tagged) == len(frame) + 4
    assert tagged[:12] == frame[:12]
    assert struct.unpack("!HH", tagged[12:16]) == (tpid, 0x2064)
    assert tagged[16:] == frame[12:]


def test_insert_vlan_tag_defaults_a_zero_tpid_to_8021q():
    tagged = insert_vlan_tag(F.ptb_v6(), 0, 7)
    assert tagged[12:16] == b"\x81\x00\x00\x07"


def test_insert_vlan_tag_result_parses_with_shifted_offsets():
    frame = F.ptb_v6()
    plain = parse_frame(frame)
    tagged = parse_frame(insert_vlan_tag(frame, 0x8100, 100))
    assert isinstance(tagged, PTB)
    assert (tagged.l3_offset, tagged.icmp_offset) == (plain.l3_offset + 4, plain.icmp_offset + 4)
    no_layout = {"frame": b"", "l3_offset": 0, "icmp_offset": 0}
    assert tagged._replace(**no_layout) == plain._replace(**no_layout)


def test_insert_vlan_tag_in_front_of_an_inner_tag_makes_qinq():
    # The NIC stripped the outer (802.1ad) tag; the inner one is still in the data.
    inner_tagged = F.ptb_v4(vlans=((0x8100, 20),))
    restored = insert_vlan_tag(inner_tagged, 0x88A8, 10)
    assert restored == F.ptb_v4(vlans=((0x88A8, 10), (0x8100, 20)))
    assert parse_frame(restored).l3_offset == 22


@pytest.mark.parametrize(
    "text, expected",
    [
        ("00:00:5e:00:53:01", bytes.fromhex("00005e005301")),
        ("FF:FF:FF:FF:FF:FF", b"\xff" * 6),
        ("00-00-5E-00-53-0a", bytes.fromhex("00005e00530a")),
        ("0:0:5e:0:53:1", bytes.fromhex("00005e005301")),
    ],
)
def test_parse_mac(text, expected):
    assert parse_mac(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "00:00:5e:00:53",
        "00:00:5e:00:53:01:02",
        "00:00:5e:00:53:0g",
        "000:00:5e:00:53:01",
        "00::5e:00:53:01",
        "00005e005301",
        "00.00.5e.00.53.01",
        "00:00:5e:00:53:+1",
        "00:00:5e:00:53: 1",
        "00:00:5e:00:53:1 ",
        "00:00:5e:00:53:\u0661\u0661",  # Arabic-Indic digits
    ],
)
def test_parse_mac_errors_quote_the_text(text):
    with pytest.raises(ValueError, match="not a MAC address") as info:
        parse_mac(text)
    assert repr(text) in str(info.value)


def test_format_mac():
    assert format_mac(bytes.fromhex("00005e0053ff")) == "00:00:5e:00:53:ff"
    assert format_mac(b"\x00" * 6) == "00:00:00:00:00:00"


@pytest.mark.parametrize("raw", [b"\x00" * 6, b"\xff" * 6, bytes(range(6)), bytes.fromhex("00005e005301")])
def test_mac_round_trip(raw):
    assert parse_mac(format_mac(raw)) == raw

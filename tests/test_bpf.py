"""The classic-BPF PTB filter: in the pure-Python interpreter, against the parser, and in the kernel."""

from __future__ import annotations

import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH

from pmtud_relay.capture import bpf
from pmtud_relay.core.packet import PTB, parse_frame
from tests.support import frames as F

PROGRAM = bpf.ptb_filter()


def accepted(frame: bytes) -> bool:
    return bpf.run(PROGRAM, frame) > 0


# -- the program itself ----------------------------------------------------------------


def test_program_is_well_formed():
    assert 0 < len(PROGRAM) <= 4096  # BPF_MAXINSNS
    for pc, insn in enumerate(PROGRAM):
        cls = insn.code & 0x07
        if cls == bpf.JMP:
            if insn.code == bpf.JMP | bpf.JA:
                assert pc + 1 + insn.k < len(PROGRAM)
            else:
                assert pc + 1 + max(insn.jt, insn.jf) < len(PROGRAM)
    # Every path ends in a return: the last instruction is one.
    assert PROGRAM[-1].code & 0x07 == bpf.RET
    rets = {insn.k for insn in PROGRAM if insn.code & 0x07 == bpf.RET}
    assert rets == {0, bpf.ACCEPT_BYTES}


def test_pack_is_struct_sock_filter():
    packed = bpf.pack(PROGRAM)
    assert len(packed) == 8 * len(PROGRAM)
    first = PROGRAM[0]
    assert packed[:8] == (first.code.to_bytes(2, sys.byteorder) + bytes([first.jt, first.jf])
                          + first.k.to_bytes(4, sys.byteorder))


def test_accept_returns_a_snap_length_covering_any_frame():
    assert bpf.run(PROGRAM, F.ptb_v4()) == bpf.ACCEPT_BYTES >= 65536


# -- accepts ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(F.valid_catalogue()))
def test_accepts_every_valid_catalogue_frame(name):
    assert accepted(F.valid_catalogue()[name])


@pytest.mark.parametrize(
    "vlans", [(), ((0x8100, 1),), ((0x88A8, 1),), ((0x88A8, 10), (0x8100, 20)), ((0x8100, 10), (0x8100, 20))]
)
@pytest.mark.parametrize("build", [F.ptb_v4, F.ptb_v6], ids=["v4", "v6"])
def test_accepts_ptbs_untagged_and_tagged(build, vlans):
    assert accepted(build(vlans=vlans))


@pytest.mark.parametrize(
    "ext",
    [
        IPv6ExtHdrHopByHop(),
        IPv6ExtHdrDestOpt(),
        IPv6ExtHdrFragment(offset=0, m=0),
        IPv6ExtHdrRouting(),
        AH(nh=58, payloadlen=4, spi=1, icv=b"\x00" * 12),
    ],
    ids=["hop-by-hop", "dstopts", "fragment", "routing", "ah"],
)
def test_ipv6_extension_headers_pass_to_userspace(ext):
    assert accepted(F.ptb_v6(outer_ext=(ext,)))
    # Even when what follows is not a PTB: the kernel does not walk the chain.
    assert accepted(F.ptb_v6(outer_ext=(ext,), icmp=ICMPv6EchoReply()))


def test_ipv4_first_fragment_passes_to_userspace():
    # MF with offset 0 is left to the parser (which rejects it as a fragment).
    assert accepted(F.ptb_v4(ip_fields={"flags": "MF"}))


def test_ipv4_outer_options_are_skipped_by_ihl():
    assert accepted(F.ptb_v4(ip_fields={"options": b"\x94\x04\x00\x00"}))
    assert accepted(F.ptb_v4(ip_fields={"options": b"\x01" * 40}))


# -- rejects ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dst_mac", [F.BROADCAST, F.MCAST_ALL_NODES, "01:00:5e:00:00:01", "01:80:c2:00:00:00", "03:00:5e:00:53:02"]
)
@pytest.mark.parametrize("build", [F.ptb_v4, F.ptb_v6], ids=["v4", "v6"])
def test_rejects_group_destination_macs(build, dst_mac):
    assert not accepted(build(dst_mac=dst_mac))
    assert not accepted(build(dst_mac=dst_mac, vlans=((0x8100, 5),)))


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(F.echo_v4(), id="icmp-echo"),
        pytest.param(F.echo_v6(), id="icmpv6-echo"),
        pytest.param(F.tcp_v4(), id="tcp"),
        pytest.param(F.ptb_v4(ip_fields={"frag": 10}), id="v4-non-first-fragment"),
        pytest.param(F.ptb_v4(ip_fields={"frag": 10, "flags": "MF"}), id="v4-middle-fragment"),
        pytest.param(F.dest_unreach_v6(), id="icmpv6-type-1"),
        pytest.param(F.ptb_v6(icmp=ICMPv6EchoReply(type=2, code=1)), id="icmpv6-type-2-code-1"),
        pytest.param(F.ptb_v4(icmp_type=3, icmp_code=1), id="icmp-3-1"),
        pytest.param(F.ptb_v4(icmp_type=11, icmp_code=0), id="icmp-time-exceeded"),
        pytest.param(F.arp_frame(), id="arp"),
        pytest.param(F.ptb_v4(vlans=((0x8100, 1), (0x8100, 2), (0x8100, 3))), id="three-tags"),
        pytest.param(F.set_bytes(F.ptb_v6(), 14 + 6, b"\x32"), id="v6-esp-next-header"),
        pytest.param(F.set_bytes(F.ptb_v6(), 14 + 6, b"\x11"), id="v6-udp-next-header"),
        pytest.param(F.set_bytes(F.ptb_v4(), 14 + 9, b"\x11"), id="v4-udp"),
        pytest.param(b"", id="empty"),
        pytest.param(F.ptb_v4()[:13], id="13-bytes"),
        pytest.param(F.ptb_v4()[:14 + 20], id="v4-cut-before-icmp"),
        pytest.param(F.ptb_v6()[:14 + 40], id="v6-cut-before-icmp"),
    ],
)
def test_rejects(frame):
    assert not accepted(frame)


def test_run_rejects_out_of_bounds_loads():
    frame = F.ptb_v6(vlans=((0x8100, 1), (0x8100, 2)))
    for cut in range(0, 22 + 40):  # everything before the ICMPv6 type byte
        assert not accepted(frame[:cut])


def test_run_rejects_unsupported_opcodes():
    with pytest.raises(ValueError):
        bpf.run([bpf.Insn(bpf.ALU | 0x90, 0, 0, 1), bpf.Insn(bpf.RET, 0, 0, 0)], b"")


# -- consistency with the parser -------------------------------------------------------

unicast_mac = st.builds(
    lambda first, rest: ":".join(f"{b:02x}" for b in [first & 0xFE, *rest]),
    st.integers(0, 255),
    st.lists(st.integers(0, 255), min_size=5, max_size=5),
)
any_mac = st.builds(lambda b: ":".join(f"{x:02x}" for x in b), st.binary(min_size=6, max_size=6))
vlan_stacks = st.lists(st.tuples(st.sampled_from([0x8100, 0x88A8]), st.integers(0, 4095)), max_size=2).map(tuple)
quoted_protos = st.sampled_from(["tcp", "udp", "sctp", "udplite", "icmp-echo"])


@st.composite
def ptb_frames(draw, macs=unicast_mac):
    """Well-formed PTB frames of every layout the parser accepts."""
    dst_mac = draw(macs)
    vlans = draw(vlan_stacks)
    proto = draw(quoted_protos)
    if draw(st.booleans()):
        options = draw(st.sampled_from([b"", b"\x94\x04\x00\x00", b"\x01" * 8, b"\x01" * 40]))
        return F.ptb_v4(
            dst_mac=dst_mac,
            vlans=vlans,
            mtu=draw(st.integers(0, 65535)),
            proto=proto,
            quote_len=draw(st.integers(28, 200)),  # 8 bytes past the quoted header: short_l4_quote below
            ip_fields={"options": options, "flags": draw(st.sampled_from([0, "DF"])),
                       "id": draw(st.integers(0, 65535))},
        )
    ext_choices = st.sampled_from(
        [
            lambda: IPv6ExtHdrHopByHop(),
            lambda: IPv6ExtHdrDestOpt(),
            lambda: IPv6ExtHdrFragment(offset=0, m=0, id=9),
        ]
    )
    ext = tuple(make() for make in draw(st.lists(ext_choices, max_size=3)))
    return F.ptb_v6(
        dst_mac=dst_mac,
        vlans=vlans,
        outer_ext=ext,
        mtu=draw(st.integers(0, 2**32 - 1)),
        proto=proto,
        quote_len=draw(st.integers(48, 300)),
    )


def l2_mutations(frame: bytes, data) -> bytes:
    """Rewrite bytes in the Ethernet/VLAN header area: checksums stay valid."""
    for _ in range(data.draw(st.integers(0, 3))):
        offset = data.draw(st.integers(0, min(22, len(frame) - 1)))
        value = data.draw(st.sampled_from([0x00, 0x01, 0x08, 0x81, 0x86, 0x88, 0xA8, 0xDD, 0xFF]))
        frame = F.set_bytes(frame, offset, bytes([value]))
    return frame


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=ptb_frames())
def test_every_unicast_ptb_the_parser_accepts_passes_the_filter(frame):
    assert isinstance(parse_frame(frame), PTB)
    assert accepted(frame)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=ptb_frames(macs=any_mac), data=st.data())
def test_filter_agrees_with_parser_after_l2_mutations(frame, data):
    frame = l2_mutations(frame, data)
    if frame[0] & 1:
        assert not accepted(frame)
    elif isinstance(parse_frame(frame), PTB):
        assert accepted(frame)


# -- the kernel runs the same program --------------------------------------------------

@pytest.mark.netns
@pytest.mark.timeout(30)
def test_kernel_filter_delivers_exactly_the_unicast_ptbs(veth_netns, netns_program):
    unicast_v4 = F.ptb_v4()
    unicast_v6 = F.ptb_v6()
    tagged_v4 = F.ptb_v4(vlans=((0x8100, 100),), sport=8443)
    qinq_v6 = F.ptb_v6(vlans=((0x88A8, 10), (0x8100, 20)), sport=8443)
    sent = [
        unicast_v4,
        F.echo_v4(),
        F.ptb_v4(dst_mac=F.BROADCAST),
        unicast_v6,
        F.echo_v6(),
        F.ptb_v6(dst_mac=F.MCAST_ALL_NODES),
        F.tcp_v4(),
        F.ptb_v4(ip_fields={"frag": 100}),
        F.dest_unreach_v6(),
        F.arp_frame(),
        tagged_v4,
        qinq_v6,
    ]
    # The pure interpreter's verdicts, which the kernel must reproduce.
    expected = [frame for frame in sent if accepted(frame)]
    assert expected == [unicast_v4, unicast_v6, tagged_v4, qinq_v6]

    got = [(bytes.fromhex(h), pkttype)
           for h, pkttype in netns_program(veth_netns, "veth_probes", "bpf-capture",
                                           payload=[frame.hex() for frame in sent])]
    # Exactly the unicast PTBs, byte for byte (stripped VLAN tags restored from
    # PACKET_AUXDATA), in order, all seen as unicast to this host.
    assert [frame for frame, _ in got] == expected
    assert [pkttype for _, pkttype in got] == [0] * len(expected)

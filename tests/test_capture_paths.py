"""The capture and emit paths other than the default one, against a real kernel in a namespace.

On x86 PacketCapture and L2Emitter always pick their mmap rings, so the per-frame paths
(recvmsg() with PACKET_AUXDATA; one send() per copy) never run in the other tests. Here:

- the socket capture (``ring=False``) hands on exactly what the ring capture hands on for the
  same frames: untagged, 802.1Q, 802.1ad, QinQ, priority-tagged, byte for byte with the
  stripped outer tag restored, same packet types; and each path counts what it cannot hold;
- the per-frame emitter (``ring=False``): its frames arrive on the peer byte for byte, and a
  frame too large for the device comes back as EMSGSIZE;
- the ring emitter sends a frame larger than a ring slot through its direct socket, in order;
- the ring emitter and a frame larger than the device MTU: what the kernel really does with
  the slot (with PACKET_LOSS set, as the emitter sets it: it drops it silently), and that the
  emitter therefore refuses such a frame itself with EMSGSIZE, on both paths, re-reading the
  MTU when asked.

What runs in the namespace is tests/support/ns_programs/capture_paths.py: each of its probes ends
its collection on a sentinel frame sent last (the veth delivers in order, so once the sentinel is
read every earlier frame has been either delivered or dropped).
"""

from __future__ import annotations

import errno
import struct
import subprocess

import pytest

from tests.support import frames as F


def _set_mtu(netns: str, mtu: int) -> None:
    for dev in ("pmr0", "pmr1"):
        subprocess.run(["ip", "-n", netns, "link", "set", dev, "mtu", str(mtu)], check=True, timeout=10)


def _tci(frame: bytes, tci: int, offset: int = 14) -> bytes:
    """``frame`` with the TCI of the tag whose TPID ends at ``offset`` replaced (PCP/DEI/VID)."""
    return F.set_bytes(frame, offset, struct.pack("!H", tci))


def _sentinel() -> bytes:
    return F.ptb_v4(outer_src="203.0.113.99", dport=9)


def _sized_ptb_v6(size: int, **kw) -> bytes:
    """A unicast PTB frame (the capture filter passes it) of exactly ``size`` bytes."""
    header = 14 + 4 * len(kw.get("vlans", ())) + 40 + 8
    frame = F.ptb_v6(quote=F.original_v6(length=size - header), **kw)
    assert len(frame) == size
    return frame


def _sized_ptb_v4(size: int, **kw) -> bytes:
    header = 14 + 4 * len(kw.get("vlans", ())) + 20 + 8
    frame = F.ptb_v4(quote=F.original_v4(length=size - header)[: size - header], **kw)
    assert len(frame) == size
    return frame


# -- capture: socket path == ring path ------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_socket_capture_delivers_exactly_what_the_ring_delivers(veth_netns, netns_program):
    other_host = "00:00:5e:00:53:44"  # unicast, not pmr0's MAC: PACKET_OTHERHOST
    ptbs = [
        F.ptb_v4(),
        F.ptb_v6(),
        F.ptb_v4(vlans=((0x8100, 100),), dport=1001),
        _tci(F.ptb_v6(vlans=((0x8100, 100),), dport=1002), 0xB064),  # PCP 5, DEI 1, VID 100
        F.ptb_v6(vlans=((0x88A8, 200),), dport=1003),  # a single 802.1ad tag
        _tci(F.ptb_v4(vlans=((0x8100, 0),), dport=1004), 0x6000),  # priority-tagged: VID 0, PCP 3
        F.ptb_v4(vlans=((0x88A8, 10), (0x8100, 20)), dport=1005),  # QinQ: outer restored, inner kept
        _tci(_tci(F.ptb_v6(vlans=((0x88A8, 10), (0x8100, 20)), dport=1006), 0xE00A), 0x3014, 18),
        F.ptb_v6(vlans=((0x8100, 10), (0x8100, 20)), dport=1007),
        F.ptb_v4(dst_mac=other_host, dport=1008),
    ]
    noise = [F.echo_v4(), F.ptb_v4(dst_mac=F.BROADCAST), F.tcp_v4(), F.ptb_v6(dst_mac=F.MCAST_ALL_NODES)]
    sent = [frame for pair in zip(ptbs, noise + [b""] * len(ptbs)) for frame in pair if frame]

    out = netns_program(veth_netns, "capture_paths", "both-captures",
                        payload=[[f.hex() for f in sent], _sentinel().hex()])
    expected = [[f.hex(), 3 if f[:6] == F.mac(other_host) else 0] for f in ptbs]
    assert out["ring"] == expected, out  # the reference: the path the other kernel tests cover
    assert out["sock"] == out["ring"], out  # byte for byte, tags restored, same packet types
    assert out["counters"] == [{"truncated": 0, "ring_resync": 0}] * 2, out



@pytest.mark.netns
@pytest.mark.timeout(60)
def test_each_capture_path_counts_the_frames_it_cannot_hold(veth_netns, netns_program):
    """The ring holds 2 016 bytes of frame a slot, recvmsg() 64 KiB: a 3 000-byte PTB is counted
    as truncated by the ring and handed on whole by the socket path; a frame over 64 KiB is
    MSG_TRUNC on the socket path and counted there too; the frames after them still arrive."""
    _set_mtu(veth_netns, 65535)  # veth's maximum: a 65 549-byte frame fits
    small = F.ptb_v4()
    mid = _sized_ptb_v6(3000, dport=2001)
    huge = _sized_ptb_v6(65535 + 14, dport=2002)
    tagged = F.ptb_v6(vlans=((0x8100, 7),), dport=2003)
    out = netns_program(veth_netns, "capture_paths", "oversized",
                        payload=[[f.hex() for f in (mid, small, huge, tagged)], _sentinel().hex()], timeout=40)
    assert len(huge) > out["max_frame"]
    assert out["ring"] == [small.hex(), tagged.hex()] and out["ring_truncated"] == 2, out["ring_truncated"]
    assert out["sock"] == [mid.hex(), small.hex(), tagged.hex()], [len(h) // 2 for h in out["sock"]]
    assert out["sock_truncated"] == 1


# -- emit: the per-frame path -------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.timeout(30)
def test_socket_emitter_frames_arrive_byte_for_byte(veth_netns, netns_program):
    sent = [
        F.ptb_v4(),
        F.ptb_v6(),
        F.ptb_v4(vlans=((0x8100, 100),), dport=1001),
        _tci(F.ptb_v6(vlans=((0x8100, 100),), dport=1002), 0xB064),
        F.ptb_v4(vlans=((0x88A8, 10), (0x8100, 20)), dport=1003),
        F.ptb_v6(vlans=((0x88A8, 10), (0x8100, 20)), dport=1004),
        _sized_ptb_v4(1514, dport=1005),  # the largest untagged frame an MTU of 1 500 carries
    ]
    too_big = _sized_ptb_v4(1800, dport=1006)
    out = netns_program(veth_netns, "capture_paths", "socket-emitter",
                        payload=[[f.hex() for f in sent], too_big.hex(), _sentinel().hex()])
    assert out["mac"] == F.mac(F.ROUTER_MAC).hex()
    assert out["results"] == [0] * (len(sent) + 2), out["results"]
    assert out["too_big"] == [errno.EMSGSIZE] * 2, out["too_big"]  # reported, not silently lost
    assert out["got"] == [[f.hex(), 0] for f in sent], [len(h) // 2 for h, _ in out["got"]]


# -- emit: the ring path's edges ---------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.timeout(30)
def test_ring_emitter_sends_frames_larger_than_a_slot_directly_and_in_order(veth_netns, netns_program):
    _set_mtu(veth_netns, 9000)
    first, last = F.ptb_v4(dport=3001), F.ptb_v6(dport=3005)
    edge = _sized_ptb_v6(2016, dport=3002)  # exactly MAX_RING_FRAME: still through a ring slot
    over = _sized_ptb_v6(2017, dport=3003)  # one byte more: the direct socket
    big = _sized_ptb_v4(3000, dport=3004)
    sent = [first, edge, over, big, last]
    out = netns_program(veth_netns, "capture_paths", "ring-emitter-large",
                        payload=[[f.hex() for f in sent], _sentinel().hex()])
    assert out["max_ring_frame"] == 2016
    assert out["results"] == [0] * (len(sent) + 2), out["results"]
    assert out["direct_used"]
    assert out["slot"] == 4, out["slot"]  # first, edge, last and the sentinel went through the ring
    # Intact and in order: queue() flushes what the ring holds before a direct send.
    assert out["got"] == [[f.hex(), 0] for f in sent], [len(h) // 2 for h, _ in out["got"]]



@pytest.mark.netns
@pytest.mark.timeout(30)
def test_the_kernel_skips_a_tx_ring_frame_over_the_mtu_silently(veth_netns, netns_program):
    """Why the emitter checks the MTU itself: what the kernel (tpacket_snd) does with a TX-ring
    slot holding a frame larger than the device allows, with PACKET_LOSS set as L2Emitter sets
    it. The emitter's own check is bypassed here. The kernel drops the frame, hands the slot
    back as TP_STATUS_AVAILABLE (not TP_STATUS_WRONG_FORMAT) and goes on with the next slots;
    send() reports nothing, so nothing could count the lost copy.

    Two kernel checks, both skipped the same way: a frame over MTU + 18 is refused when the slot
    is parsed (``af_packet: packet size is too long (1800 > 1518)`` in the kernel log, once per
    frame: this test writes one such line); one of 1 515..1 518 bytes without a VLAN tag after
    the skb is built (no log line)."""
    over_mtu = [_sized_ptb_v4(1800, dport=4001), _sized_ptb_v6(1516, dport=4002)]
    small = F.ptb_v4(dport=4000)
    out = netns_program(veth_netns, "capture_paths", "ring-emitter-over-mtu",
                        payload=[small.hex(), [f.hex() for f in over_mtu], _sentinel().hex(), True])
    from pmtud_relay.emit import l2

    slots = l2.RING_BLOCK_SIZE // l2.RING_FRAME_SIZE * l2.RING_BLOCKS
    expected = [(small[:-2] + i.to_bytes(2, "big")).hex() for i in range(2 + slots - 4 + 3)]
    TP_STATUS_AVAILABLE = 0
    # The kernel processed every slot of the first flush (none left at SEND_REQUEST) and handed
    # the refused ones back as free, not as TP_STATUS_WRONG_FORMAT (4).
    assert out["status_after_flush"] == [TP_STATUS_AVAILABLE] * 4, out["status_after_flush"]
    assert out["flush"] == [0, 0], out["flush"]
    assert out["slot"] == 3 and out["queue"] == [0] * len(out["queue"]), out
    # Every small frame arrived, in order, including the one right after the refused slots;
    # the over-MTU frames never left.
    assert out["got"] == expected, (len(out["got"]), len(expected))
    assert out["cap_counters"] == {"truncated": 0, "ring_resync": 0}


@pytest.mark.netns
@pytest.mark.timeout(30)
def test_ring_emitter_refuses_a_frame_over_the_mtu_with_emsgsize(veth_netns, netns_program):
    """L2Emitter.queue() refuses what the kernel would drop silently: EMSGSIZE (the daemon counts
    it as a send error), no ring slot taken, nothing in the kernel log; a frame of MTU + 18 with
    one VLAN tag is not too long."""
    over_mtu = [_sized_ptb_v4(1800, dport=4001), _sized_ptb_v6(1515, dport=4002)]
    small = F.ptb_v4(dport=4000)
    out = netns_program(veth_netns, "capture_paths", "ring-emitter-over-mtu",
                        payload=[small.hex(), [f.hex() for f in over_mtu], _sentinel().hex(), False])
    assert out["max_len"] == 1514  # the veth's MTU 1500 + 14
    assert out["queue"][:4] == [0, errno.EMSGSIZE, errno.EMSGSIZE, 0], out["queue"][:4]
    assert out["queue"][4:] == [0] * (len(out["queue"]) - 4)
    assert out["slot"] == (2 + 508 + 3) % 512  # 2 + 511 small frames took slots, the refused none
    from pmtud_relay.emit import l2

    slots = l2.RING_BLOCK_SIZE // l2.RING_FRAME_SIZE * l2.RING_BLOCKS
    expected = [(small[:-2] + i.to_bytes(2, "big")).hex() for i in range(2 + slots - 4 + 3)]
    assert out["got"] == expected, (len(out["got"]), len(expected))



@pytest.mark.netns
@pytest.mark.timeout(30)
def test_emitter_mtu_edges_and_refresh(veth_netns, netns_program):
    """Both emitter paths: MTU + 14 untagged and MTU + 18 with one tag leave; one byte more is
    EMSGSIZE; after the MTU is raised and refresh_mtu() re-reads it, the same frames leave."""
    _set_mtu(veth_netns, 1600)  # the receiving side takes them all; the sender's MTU is what varies
    fits = _sized_ptb_v4(1514, dport=5001)
    fits_tagged = _sized_ptb_v4(1518, dport=5002, vlans=((0x8100, 7),))
    long_untagged = _sized_ptb_v4(1515, dport=5003)
    long_tagged = _sized_ptb_v6(1519, dport=5004, vlans=((0x8100, 7),))
    frames = [fits, fits_tagged, long_untagged, long_tagged]
    out = netns_program(veth_netns, "capture_paths", "emitter-mtu-edges",
                        payload=[[f.hex() for f in frames], _sentinel().hex()])
    for ring in ("True", "False"):
        r = out[ring]
        assert r["before"] == [0, 0, errno.EMSGSIZE, errno.EMSGSIZE], (ring, r["before"])
        assert r["after"] == [0, 0, 0, 0], (ring, r["after"])
        assert r["got"] == [f.hex() for f in (fits, fits_tagged, *frames)], (ring, [len(h) // 2 for h in r["got"]])

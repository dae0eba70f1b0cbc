"""VLAN-tagged PTBs through the whole daemon on a real kernel: a PTB that arrives with one tag
(802.1Q or 802.1ad) or two (QinQ) on the relay's interface leaves as a broadcast copy carrying
exactly the same tags (the kernel strips the outer tag on receive; the capture restores it from
the ring's or PACKET_AUXDATA's metadata, and the copy is the received frame with new MACs).

This kernel has no ``8021q`` module, so there is no VLAN device: the tags are put on the wire by
an AF_PACKET socket on the veth and read back with PACKET_AUXDATA, which is also how the relay
sees them when it captures on a trunk's parent device.
"""

from __future__ import annotations

import select
import socket
import time

import pytest

from pmtud_relay.capture.afpacket import (
    _AUXDATA,
    PACKET_AUXDATA,
    SOL_PACKET,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
)
from pmtud_relay.core.frame import insert_vlan_tag
from tests.support import frames as F
from tests.support.faults import start, stop
from tests.support.netns import RELAY_MAC, FaultNS, in_ns

pytestmark = pytest.mark.netns

TAGS = {
    "untagged": (),
    "802.1Q": ((0x8100, 5),),
    "802.1ad": ((0x88A8, 7),),
    "QinQ": ((0x88A8, 10), (0x8100, 20)),
}


#: Where copies go: IPv4 to the broadcast address, IPv6 to all-nodes multicast.
COPY_MACS = (b"\xff" * 6, bytes.fromhex("333300000001"))


def _copies(ns: FaultNS, frames: list[bytes], timeout: float = 5.0) -> list[bytes]:
    """Send ``frames`` on v0 and return the copies seen coming back, tags restored."""

    def sockets():
        watch = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        watch.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        watch.bind(("v0", 0))
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        tx.bind(("v0", 0))
        return watch, tx

    watch, tx = in_ns(ns.name, sockets)
    copies = []
    try:
        for frame in frames:
            tx.send(frame)
        deadline = time.monotonic() + timeout
        while len(copies) < len(frames) and time.monotonic() < deadline:
            if not select.select([watch], [], [], 0.1)[0]:
                continue
            data, anc, _flags, addr = watch.recvmsg(65536, socket.CMSG_SPACE(_AUXDATA.size))
            if addr[2] == socket.PACKET_OUTGOING or data[:6] not in COPY_MACS:
                continue
            for level, kind, cdata in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    status, _l, _s, _m, _n, tci, tpid = _AUXDATA.unpack_from(cdata)
                    if status & TP_STATUS_VLAN_VALID:
                        data = insert_vlan_tag(data, tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci)
            copies.append(data)
        return copies
    finally:
        watch.close()
        tx.close()


@pytest.mark.timeout(60)
def test_tagged_ptbs_leave_with_the_tags_they_came_with(ns):
    proc = start(ns, "--vip", F.VIP6, "--metrics-address", "")
    try:
        sent = [F.ptb_v4(dst_mac=RELAY_MAC, vlans=vlans, dport=41000 + i) for i, vlans in enumerate(TAGS.values())]
        sent += [F.ptb_v6(dst_mac=RELAY_MAC, vlans=vlans, dport=41100 + i, outer_dst=F.VIP6, src=F.VIP6)
                 for i, vlans in enumerate(TAGS.values())]
        copies = _copies(ns, sent)
        # Every copy is the PTB with new MACs only: the same tags, in the same order, same bytes.
        assert sorted(c[12:] for c in copies) == sorted(f[12:] for f in sent), [c[:20].hex() for c in copies]
        assert all(c[6:12] == bytes.fromhex(RELAY_MAC.replace(":", "")) for c in copies)
        assert sorted(c[:6] for c in copies) == sorted([COPY_MACS[0]] * len(TAGS) + [COPY_MACS[1]] * len(TAGS))
    finally:
        stop(proc)

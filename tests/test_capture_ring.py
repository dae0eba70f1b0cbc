"""The AF_PACKET receive ring, read by a real kernel in a namespace: frames too large for a
slot are counted, never handed on; a reader whose slot stays empty while later slots hold
frames resynchronises to the oldest one (the stall seen under overload, docs/performance.md)
and counts it; both counts reach PacketCapture.counters() (exported as metrics)."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from tests.support import frames as F

_SNIPPET = textwrap.dedent(
    """
    import json, select, socket, sys, time
    from pmtud_relay.capture import afpacket
    from pmtud_relay.capture.afpacket import PacketCapture, RING_FRAME_SIZE

    small, large = [bytes.fromhex(h) for h in json.load(sys.stdin)]
    cap = PacketCapture("pmr0", ring=True)
    assert cap.ring is not None, "no ring"
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    tx.bind(("pmr1", 0))

    def collect(n, seconds=2.0):
        got, deadline = [], time.monotonic() + seconds
        while len(got) < n and time.monotonic() < deadline:
            if select.select([cap], [], [], 0.05)[0]:
                got += cap.drain()
        return got

    out = {}
    # 1. A frame larger than a slot is counted and dropped; the next one still arrives.
    tx.send(large)
    tx.send(small)
    out["after_large"] = [f.hex() for f, _ in collect(1)]
    out["truncated"] = cap.truncated
    # 2. Three frames fill the next three slots; the reader's slot is then handed back to
    #    the kernel unread (what the stall looks like: that slot empty, later ones full).
    first = cap._slot
    frames = [small[:-1] + bytes([i]) for i in range(3)]  # distinct, same length
    for f in frames:
        tx.send(f)
    time.sleep(0.2)
    afpacket._U32_PACK(cap.ring, first * RING_FRAME_SIZE, afpacket.TP_STATUS_KERNEL)
    out["stuck_first_drain"] = len(cap.drain())
    time.sleep(afpacket.RESYNC_AFTER * 3)
    out["resynced"] = [f.hex() for f, _ in cap.drain()]
    # 3. And reading goes on normally from there.
    tx.send(small)
    out["after_resync"] = [f.hex() for f, _ in collect(1)]
    out["counters"] = cap.counters()
    cap.close()
    tx.close()
    json.dump(out, sys.stdout)
    """
)


@pytest.mark.netns
@pytest.mark.timeout(30)
def test_ring_counts_truncated_frames_and_resynchronises_a_stuck_reader(veth_netns, netns_python):
    subprocess.run(["ip", "-n", veth_netns, "link", "set", "pmr0", "mtu", "4000"], check=True, timeout=10)
    subprocess.run(["ip", "-n", veth_netns, "link", "set", "pmr1", "mtu", "4000"], check=True, timeout=10)
    small = F.ptb_v4()
    large = F.ptb_v6(quote=F.original_v6(length=3000))  # a unicast PTB the filter passes, > a 2 KiB slot
    assert len(large) > 2048
    out = netns_python(veth_netns, _SNIPPET, [small.hex(), large.hex()])
    assert out["after_large"] == [small.hex()] and out["truncated"] == 1, out
    frames = [small[:-1] + bytes([i]) for i in range(3)]
    assert out["stuck_first_drain"] == 0, out  # the first empty look waits: normally a slot still being filled
    assert out["resynced"] == [f.hex() for f in frames[1:]], out  # from the oldest frame the ring holds
    assert out["after_resync"] == [small.hex()], out
    assert out["counters"] == {"truncated": 1, "ring_resync": 1}, out

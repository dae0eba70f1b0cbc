"""The AF_PACKET receive ring, read by a real kernel in a namespace: frames too large for a
slot are counted, never handed on; a reader whose slot stays empty while later slots hold
frames resynchronises to the oldest one (the stall seen under overload, docs/performance.md)
and counts it; both counts reach PacketCapture.counters() (exported as metrics)."""

from __future__ import annotations

import subprocess

import pytest

from tests.support import frames as F


@pytest.mark.netns
@pytest.mark.timeout(30)
def test_ring_counts_truncated_frames_and_resynchronises_a_stuck_reader(veth_netns, netns_program):
    subprocess.run(["ip", "-n", veth_netns, "link", "set", "pmr0", "mtu", "4000"], check=True, timeout=10)
    subprocess.run(["ip", "-n", veth_netns, "link", "set", "pmr1", "mtu", "4000"], check=True, timeout=10)
    small = F.ptb_v4()
    large = F.ptb_v6(quote=F.original_v6(length=3000))  # a unicast PTB the filter passes, > a 2 KiB slot
    assert len(large) > 2048
    out = netns_program(veth_netns, "veth_probes", "ring-resync", payload=[small.hex(), large.hex()])
    assert out["after_large"] == [small.hex()] and out["truncated"] == 1, out
    frames = [small[:-1] + bytes([i]) for i in range(3)]
    assert out["stuck_first_drain"] == 0, out  # the first empty look waits: normally a slot still being filled
    assert out["resynced"] == [f.hex() for f in frames[1:]], out  # from the oldest frame the ring holds
    assert out["after_resync"] == [small.hex()], out
    assert out["counters"] == {"truncated": 1, "ring_resync": 1}, out

"""atheris target: the NFLOG wire parser, frame reconstruction, the demultiplexer and the relay.

Input: one netlink datagram as the kernel would deliver it on the NFLOG socket. It goes through
``parse_datagram`` (total: returns a Batch), through a ``PacketParser`` (the learned-layout fast
path, one for the whole run so that it learns, forgets and pauses) and through ``NflogDemux.feed``
(one demultiplexer for the whole run, so sequence tracking sees many datagrams) for two configured
interfaces; every rebuilt frame is drained and handed to ``Relay.handle``.

Asserted: nothing raises; the fast path's batch equals the general walk's; counts are consistent
(every logged packet is queued for a port or dropped with an NflogDrop reason); a frame only
reaches the port of the interface it was logged on; a relayed decision passes the independent
re-check of ``_common.check_relayed_frame``.

    python fuzz/fuzz_nflog.py fuzz/corpus/nflog -runs=1000000
"""

import sys

import _common
import atheris

with atheris.instrument_imports(include=["pmtud_relay"]):
    from pmtud_relay.core.relay import Relay
    from pmtud_relay.nflog import fastpath as fp
    from pmtud_relay.nflog import wire as w
    from pmtud_relay.nflog.capture import NflogDemux

GROUP = 2105
HOST_MAC = bytes.fromhex("00005e005302")
PORTS = [("eth0", 7, HOST_MAC), ("eth1", 8, HOST_MAC)]
DEMUX = NflogDemux(GROUP, PORTS)
PARSER = fp.PacketParser()
RELAY = Relay(_common.relay_config())
_clock = [0.0]


def TestOneInput(data: bytes) -> None:
    data = bytes(data)
    batch = w.parse_datagram(data)
    assert isinstance(batch, w.Batch) and batch.malformed >= 0
    assert PARSER.parse_datagram(data) == batch, "the fast path disagrees with the general walk"
    for pkt in batch.packets:
        frame = w.rebuild_frame(pkt, HOST_MAC)
        if isinstance(frame, bytes):
            assert pkt.payload and frame.endswith(pkt.payload)
        else:
            assert isinstance(frame, w.NflogDrop)
    before_rx, before_drops, before_over = DEMUX.received, sum(DEMUX.drops.values()), DEMUX.queue_overflow
    fed = DEMUX.feed(data)
    assert fed >= 0
    queued = 0
    for ifname, ifindex, _mac in PORTS:
        port = DEMUX.port(ifname)
        while True:
            items = port.drain()
            if not items:
                break
            for frame, pkttype in items:
                queued += 1
                _clock[0] += 0.001
                decision = RELAY.handle(frame, _clock[0], _common.SRC_MAC, pkttype)
                if decision.relay:
                    _common.check_relayed_frame(frame, decision, pkttype)
                    # it came in on this port's interface
                    assert any(p.indev == ifindex and p.payload and frame.endswith(p.payload)
                               for p in batch.packets), "frame queued for the wrong interface"
    got = DEMUX.received - before_rx
    dropped = sum(DEMUX.drops.values()) - before_drops - batch.malformed
    assert got == len(batch.packets), (got, len(batch.packets))
    assert queued + dropped + DEMUX.queue_overflow - before_over == got, (queued, dropped, got)


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()

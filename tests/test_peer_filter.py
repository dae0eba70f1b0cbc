"""The peer listener's in-kernel filter (capture/peer_filter.py): in the pure interpreter, and
attached to real UDP sockets (IPv4, IPv6, dual-stack) in a namespace."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from pmtud_relay.capture import bpf
from pmtud_relay.peers.filter import BPF_MAXINSNS, build, program_for, size
from pmtud_relay.peers.wire import MAGIC

PEER4, OTHER4 = "198.51.100.2", "198.51.100.3"
PEER6, OTHER6 = "2001:db8::2", "2001:db8::3"


def ip_header(src: str) -> bytes:
    """The start of an IP header from ``src`` (what SKF_NET_OFF offsets read)."""
    addr = ipaddress.ip_address(src)
    if addr.version == 4:
        return bytes([0x45, 0]) + bytes(10) + addr.packed + ipaddress.ip_address("198.51.100.1").packed
    return bytes([0x60]) + bytes(7) + addr.packed + ipaddress.ip_address("2001:db8::1").packed


def udp(payload: bytes) -> bytes:
    """A UDP datagram as the socket filter sees it: data from the UDP header on."""
    return struct.pack("!HHHH", 40000, 2106, 8 + len(payload), 0) + payload


JUNK = MAGIC + bytes(100)  # the right magic, anything after it (a bad MAC, as the flood had)


def passes(program, src: str, payload: bytes) -> bool:
    return bpf.run(program, udp(payload), network=ip_header(src)) != 0


def test_address_mode_admits_peers_with_the_magic_only():
    prog = build({PEER4, PEER6})
    assert passes(prog, PEER4, JUNK) and passes(prog, PEER6, JUNK)
    assert not passes(prog, OTHER4, JUNK) and not passes(prog, OTHER6, JUNK)
    assert not passes(prog, PEER4, b"XMTR" + bytes(100))  # a peer's address without the magic
    assert not passes(prog, PEER4, MAGIC[:3])  # too short to hold the magic: the load fails
    # An IPv6 address whose first word matches an IPv4 peer is not that peer.
    assert not passes(prog, "c633:6402::", JUNK)
    assert not passes(build(set()), PEER4, JUNK)  # an empty peer set admits nobody


def test_magic_mode_admits_every_sender_with_the_magic():
    prog = build(None)
    assert passes(prog, OTHER4, JUNK) and passes(prog, OTHER6, JUNK)
    assert not passes(prog, PEER4, b"\0" * 40)


def test_size_is_exact_and_large_lists_fall_back_to_the_magic():
    def v4(n):
        return [str(ipaddress.ip_address(0xC6336400 + i)) for i in range(n)]

    def v6(n):
        return [str(ipaddress.ip_address((0x20010DB8 << 96) + i)) for i in range(n)]

    for n4, n6 in ((0, 0), (1, 0), (0, 1), (300, 0), (0, 40), (100, 100)):
        assert len(build(v4(n4) + v6(n6))) == size(n4, n6)
    big4, big6 = (BPF_MAXINSNS - size(0, 0)) // 2, (BPF_MAXINSNS - size(0, 0)) // 9
    assert (big4, big6) == (2041, 453)
    fits = program_for(v4(big4))
    assert fits.mode == "addresses" and len(fits.program) <= BPF_MAXINSNS
    # Far jumps everywhere: the last address of a full list still reaches accept and drop.
    assert passes(fits.program, v4(big4)[-1], JUNK) and not passes(fits.program, OTHER6, JUNK)
    assert program_for(v6(big6)).mode == "addresses"
    over = program_for(v4(big4 + 1))
    assert over.mode == "magic" and "do not fit" in over.reason and over.addresses == frozenset()
    assert program_for(v6(big6 + 1)).mode == "magic"
    assert program_for(None).mode == "magic"


@pytest.mark.netns
@pytest.mark.timeout(30)
def test_the_kernel_admits_only_peers_with_the_magic_and_follows_a_new_peer_set(veth_netns, netns_program):
    """Real UDP sockets (dual-stack wildcard, IPv4, IPv6-only), senders on the namespace's lo:
    only datagrams from the peer addresses with the magic arrive; set_filter swaps the set; the
    magic-only filter admits every sender with the magic."""
    senders = [PEER4, OTHER4, PEER6, OTHER6]
    out = netns_program(veth_netns, "veth_probes", "peer-filter", payload={
        "addresses": ["198.51.100.1", "2001:db8::1", *senders],
        "senders": senders, "peers": [PEER4, PEER6], "peers2": [OTHER4]})

    def want(srcs):
        tags = []
        for src in srcs:
            tags += [f"{src}>2106:magic", f"{src}>{2108 if ':' in src else 2107}:magic"]
        return sorted(tags)

    assert out["first"] == want([PEER4, PEER6])
    assert out["second"] == want([OTHER4])
    assert out["magic"] == want(senders)


# --- the service: which filter for which peer set, and the fallback when the kernel refuses -------
class FakeListener:
    def __init__(self, refuse_addresses: bool = False):
        self.filter = None
        self.refuse = refuse_addresses
        self.applied: list = []

    def set_filter(self, pf):
        if self.refuse and pf.mode == "addresses" and pf.addresses:
            raise OSError(12, "Cannot allocate memory")  # ENOMEM: above net.core.optmem_max
        self.filter = pf
        self.applied.append((pf.mode, sorted(pf.addresses)))

    def close(self):
        pass


def _service(fanout: str):
    from pmtud_relay.core.policy import Policy
    from pmtud_relay.peers.service import PeerService, PeerSettings

    settings = PeerSettings(fanout=fanout, listen=(("", 2106),), key_file="/nonexistent")
    return PeerService(settings, Policy, own_addresses=frozenset)


def test_the_service_follows_the_peer_set_and_falls_back_to_the_magic_when_refused(caplog):
    import logging

    from pmtud_relay.peers.inbox import Peer

    svc = _service("peers")
    svc.listener = FakeListener()
    svc._filter_for = frozenset()  # as open() leaves it: nobody until the first resolution
    svc.table.update([Peer(PEER4), Peer(PEER6, 2200)], 0.0)
    svc._apply_filter()
    svc._apply_filter()  # unchanged set: not rebuilt
    svc.table.update([Peer(PEER4)], 0.0)
    svc._apply_filter()
    assert svc.listener.applied == [("addresses", [PEER4, PEER6]), ("addresses", [PEER4])]
    refused = _service("peers")
    refused.listener = FakeListener(refuse_addresses=True)
    refused._filter_for = frozenset()
    refused.table.update([Peer(PEER4)], 0.0)
    # caplog's handler sits on the root logger; an earlier test's logs.setup() may have turned the
    # relay logger's propagation off (as the daemon does), so listen on the logger itself.
    refused.log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=refused.log.name):
            refused._apply_filter()
    finally:
        refused.log.removeHandler(caplog.handler)
    assert refused.listener.applied == [("magic", [])]
    warned = [r for r in caplog.records if r.getMessage() == "peer_filter"]
    assert warned and warned[-1].kv["mode"] == "magic" and "Cannot allocate memory" in warned[-1].kv["reason"]
    listen_only = _service("l2")
    assert listen_only._filter_addresses() is None  # magic only: it has no list of senders

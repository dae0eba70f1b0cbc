"""Classic BPF socket filter for the peer listener's UDP sockets: only datagrams from the
configured peers' addresses, carrying the protocol's magic, reach userspace. Pure: builds the
program; ``PeerListener.set_filter`` attaches it (SO_ATTACH_FILTER replaces a socket's filter
atomically, so a new peer set takes effect without a window).

On a UDP socket the filter runs on the datagram with the data pointer at the UDP header
(``udp_queue_rcv_one_skb`` → ``sk_filter_trim_cap``), so the payload starts at offset 8 and the
IP header is reached through the negative ``SKF_NET_OFF`` offsets. A dual-stack IPv6 socket also
receives IPv4 datagrams (v4-mapped senders) whose network header is IPv4, so the program reads
the IP version from the header rather than trusting the socket's family.

Accepted:
- the UDP payload starts with ``MAGIC`` ("PMTR"; a shorter datagram fails the load and is
  dropped), and
- ``addresses`` is None (magic only), or the IPv4 or IPv6 source address is one of them.

Program size: 14 instructions, then 2 per IPv4 and 9 per IPv6 address (compare-and-jump pairs,
so no conditional jump ever needs more than 255 instructions of reach). A list that would not
fit the kernel's 4096 instructions (BPF_MAXINSNS) is not filtered by address: :func:`program_for`
falls back to the magic alone, and says so.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from pmtud_relay.capture import bpf
from pmtud_relay.peers.wire import MAGIC

BPF_MAXINSNS = 4096
ACCEPT = 0xFFFFFFFF  # keep the whole datagram
UDP_HEADER = 8


class PeerFilter(NamedTuple):
    """A program and what it admits: ``mode`` is "addresses" (``addresses`` is the admitted
    set) or "magic" (every sender; ``reason`` says why the addresses are not used)."""

    program: list[bpf.Insn]
    mode: str
    addresses: frozenset[str]
    reason: str


def build(addresses: Iterable[str] | None) -> list[bpf.Insn]:
    """The filter program; ``addresses`` are IP address literals (None: the magic alone).
    An empty set admits nothing."""
    a = bpf._Asm()
    a.op(bpf.LD | bpf.W | bpf.ABS, UDP_HEADER)  # the first 4 payload bytes
    a.jump(bpf.JMP | bpf.JEQ | bpf.K, int.from_bytes(MAGIC, "big"), "magic", None)
    a.op(bpf.RET | bpf.K, 0)
    a.label("magic")
    if addresses is None:
        a.goto("accept")
    else:
        packed = sorted({ipaddress.ip_address(x).packed for x in addresses}, key=lambda b: (len(b), b))
        v4 = [b for b in packed if len(b) == 4]
        v6 = [b for b in packed if len(b) == 16]
        a.op(bpf.LD | bpf.B | bpf.ABS, bpf.SKF_NET_OFF + 0)  # version and IHL / traffic class
        a.op(bpf.ALU | bpf.AND | bpf.K, 0xF0)
        # Conditional jumps reach 255 instructions at most: go far with JA.
        a.jump(bpf.JMP | bpf.JEQ | bpf.K, 0x60, None, "not_v6")
        a.goto("v6")
        a.label("not_v6")
        a.jump(bpf.JMP | bpf.JEQ | bpf.K, 0x40, "v4", None)
        a.op(bpf.RET | bpf.K, 0)
        a.label("v4")
        a.op(bpf.LD | bpf.W | bpf.ABS, bpf.SKF_NET_OFF + 12)  # IPv4 source
        for addr in v4:
            a.jump(bpf.JMP | bpf.JEQ | bpf.K, int.from_bytes(addr, "big"), None, f"not_{addr.hex()}")
            a.goto("accept")
            a.label(f"not_{addr.hex()}")
        a.goto("drop")
        a.label("v6")
        for addr in v6:
            nxt = f"not_{addr.hex()}"
            for w in range(4):
                a.op(bpf.LD | bpf.W | bpf.ABS, bpf.SKF_NET_OFF + 8 + 4 * w)  # IPv6 source, word w
                a.jump(bpf.JMP | bpf.JEQ | bpf.K, int.from_bytes(addr[4 * w:4 * w + 4], "big"), None, nxt)
            a.goto("accept")
            a.label(nxt)
        a.goto("drop")
    a.label("accept")
    a.op(bpf.RET | bpf.K, ACCEPT)
    a.label("drop")
    a.op(bpf.RET | bpf.K, 0)
    return a.assemble()


def size(n_v4: int, n_v6: int) -> int:
    """Instructions :func:`build` emits for that many addresses (address mode)."""
    return 14 + 2 * n_v4 + 9 * n_v6


def program_for(addresses: Iterable[str] | None) -> PeerFilter:
    """The filter for a peer set: by address when there is a set and it fits, else the magic
    alone. ``None``: this host has no peer list (it only listens), so any sender may be a peer."""
    if addresses is None:
        return PeerFilter(build(None), "magic", frozenset(), "no peer list (listen only)")
    addrs = frozenset(str(ipaddress.ip_address(x)) for x in addresses)
    n6 = sum(1 for x in addrs if ":" in x)
    if size(len(addrs) - n6, n6) > BPF_MAXINSNS:
        return PeerFilter(build(None), "magic", frozenset(),
                          f"{len(addrs)} peer addresses do not fit a classic BPF program")
    return PeerFilter(build(addrs), "addresses", addrs, "")

"""Classic BPF program that lets only PTBs to a unicast MAC reach userspace.

Pure: builds the instruction list and its ``struct sock_fprog`` bytes; attaching it
is the capture adapter's job. Accepted: Ethernet frames to a unicast destination,
with zero to two VLAN tags in the data (tags the NIC stripped into metadata are not
in the data, so the EtherType is at offset 12 either way), carrying
- IPv4, protocol ICMP, not a non-first fragment, ICMP type 3 code 4;
- IPv6, next header ICMPv6 with type 2 code 0, or next header an extension header
  (hop-by-hop, routing, fragment, destination options, AH) that userspace walks.
Everything else is dropped in the kernel. Userspace still validates everything.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

# Opcode pieces (linux/filter.h, linux/bpf_common.h).
LD, LDX, ALU, JMP, RET, MISC = 0x00, 0x01, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND = 0x00, 0x20, 0x40
ADD, AND, LSH = 0x00, 0x50, 0x60
JA, JEQ, JSET = 0x00, 0x10, 0x40
K, X = 0x00, 0x08
TAX = 0x00

#: Ancillary data (linux/filter.h): ``LD W ABS SKF_AD_OFF + SKF_AD_RANDOM`` loads a fresh
#: 32-bit pseudo-random number (prandom) instead of packet bytes.
SKF_AD_OFF = 0xFFFFF000  # -0x1000 as the unsigned k field
SKF_AD_RANDOM = 56
#: Negative offsets that address the network header (used by socket filters on UDP sockets,
#: whose data starts at the UDP header): ``SKF_NET_OFF + n`` is byte n of the IP header.
SKF_NET_OFF = 0xFFF00000  # -0x100000

ACCEPT_BYTES = 0x40000  # snap length returned for accepted packets: the whole frame


class Insn(NamedTuple):
    code: int
    jt: int
    jf: int
    k: int


class _Asm:
    """A tiny assembler: conditional jumps name labels; offsets are resolved at the end."""

    def __init__(self) -> None:
        self.prog: list[list] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.prog)

    def op(self, code: int, k: int = 0) -> None:
        self.prog.append([code, None, None, k])

    def jump(self, code: int, k: int, jt: str | None, jf: str | None) -> None:
        # None means "fall through to the next instruction".
        self.prog.append([code, jt, jf, k])

    def goto(self, target: str) -> None:
        self.prog.append([JMP | JA, target, None, 0])

    def assemble(self) -> list[Insn]:
        out = []
        for pc, (code, jt, jf, k) in enumerate(self.prog):
            def rel(target):
                if target is None:
                    return 0
                off = self.labels[target] - pc - 1
                if not 0 <= off <= 255 and code != JMP | JA:
                    raise ValueError(f"jump to {target} out of range")
                return off

            if code == JMP | JA:
                out.append(Insn(code, 0, 0, rel(jt)))
            else:
                out.append(Insn(code, rel(jt), rel(jf), k))
        return out


def ptb_filter(accept_copies: bool = False) -> list[Insn]:
    """The PTB filter program. ``accept_copies`` also passes PTBs to a group (broadcast or
    multicast) MAC: other relays' L2 copies, which delivery confirmation looks up (never
    relays again; docs/confirmation.md)."""
    a = _Asm()
    if not accept_copies:
        a.op(LD | B | ABS, 0)  # first byte of the destination MAC
        a.jump(JMP | JSET | K, 1, "drop", None)  # group bit: broadcast/multicast
    a.op(LD | H | ABS, 12)
    a.jump(JMP | JEQ | K, 0x8100, "vlan1", None)
    a.jump(JMP | JEQ | K, 0x88A8, "vlan1", None)
    a.op(LDX | W | IMM, 14)
    a.goto("l3")
    a.label("vlan1")
    a.op(LD | H | ABS, 16)
    a.jump(JMP | JEQ | K, 0x8100, "vlan2", None)
    a.jump(JMP | JEQ | K, 0x88A8, "vlan2", None)
    a.op(LDX | W | IMM, 18)
    a.goto("l3")
    a.label("vlan2")
    a.op(LD | H | ABS, 20)
    a.op(LDX | W | IMM, 22)
    # A = EtherType, X = offset of the IP header.
    a.label("l3")
    a.jump(JMP | JEQ | K, 0x0800, "v4", None)
    a.jump(JMP | JEQ | K, 0x86DD, "v6", "drop")
    a.label("v4")
    a.op(LD | B | IND, 9)  # protocol
    a.jump(JMP | JEQ | K, 1, None, "drop")
    a.op(LD | H | IND, 6)  # flags + fragment offset
    a.jump(JMP | JSET | K, 0x1FFF, "drop", None)
    a.op(LD | B | IND, 0)  # version + IHL
    a.op(ALU | AND | K, 0x0F)
    a.op(ALU | LSH | K, 2)
    a.op(ALU | ADD | X, 0)
    a.op(MISC | TAX, 0)  # X = offset of the ICMP header
    a.op(LD | B | IND, 0)
    a.jump(JMP | JEQ | K, 3, None, "drop")
    a.op(LD | B | IND, 1)
    a.jump(JMP | JEQ | K, 4, "accept", "drop")
    a.label("v6")
    a.op(LD | B | IND, 6)  # next header
    a.jump(JMP | JEQ | K, 58, "icmp6", None)
    for ext in (0, 43, 44, 60, 51):
        a.jump(JMP | JEQ | K, ext, "accept", None)
    a.goto("drop")
    a.label("icmp6")
    a.op(LD | B | IND, 40)
    a.jump(JMP | JEQ | K, 2, None, "drop")
    a.op(LD | B | IND, 41)
    a.jump(JMP | JEQ | K, 0, "accept", "drop")
    a.label("accept")
    a.op(RET | K, ACCEPT_BYTES)
    a.label("drop")
    a.op(RET | K, 0)
    return a.assemble()


_INSN = struct.Struct("=HBBI")


def pack(program: list[Insn]) -> bytes:
    """The instructions as an array of ``struct sock_filter``."""
    return b"".join(_INSN.pack(*i) for i in program)


def run(program: list[Insn], packet: bytes, random=None, network: bytes | None = None) -> int:
    """Interpret ``program`` over ``packet`` like the kernel does; returns the snap length.

    Used by tests to check the filter against the same fixtures as the parser (the
    end-to-end tests check the kernel agrees). Out-of-bounds loads drop the packet.
    ``random`` () -> int answers the ancillary random load (none given: such a load drops);
    ``network`` is what ``SKF_NET_OFF`` offsets read (the IP header onwards of a socket filter's
    packet; none given: such a load drops).
    """
    a = x = 0
    pc = 0
    n = len(packet)
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        cls = code & 0x07
        if cls == LD or cls == LDX:
            mode, size = code & 0xE0, code & 0x18
            if mode == IMM:
                val = k
            elif mode == ABS and k == SKF_AD_OFF + SKF_AD_RANDOM:
                if random is None:
                    return 0
                val = random() & 0xFFFFFFFF
            elif mode == ABS and SKF_NET_OFF <= k < SKF_AD_OFF:
                width = {W: 4, H: 2, B: 1}[size]
                off = k - SKF_NET_OFF
                if network is None or off + width > len(network):
                    return 0
                val = int.from_bytes(network[off : off + width], "big")
            else:
                off = k + (x if mode == IND else 0)
                width = {W: 4, H: 2, B: 1}[size]
                if off + width > n:
                    return 0
                val = int.from_bytes(packet[off : off + width], "big")
            if cls == LD:
                a = val
            else:
                x = val
        elif cls == ALU:
            src = x if code & X else k
            op = code & 0xF0
            if op == ADD:
                a = (a + src) & 0xFFFFFFFF
            elif op == AND:
                a &= src
            elif op == LSH:
                a = (a << src) & 0xFFFFFFFF
            else:
                raise ValueError(f"unsupported ALU op {code:#x}")
        elif cls == JMP:
            op = code & 0xF0
            if op == JA:
                pc += k
            else:
                src = x if code & X else k
                hit = (a == src) if op == JEQ else bool(a & src)
                pc += jt if hit else jf
        elif cls == RET:
            return k
        elif cls == MISC:
            x = a
        else:
            raise ValueError(f"unsupported opcode {code:#x}")

"""Frame builder: the relayed copy is the received frame with new Ethernet addresses.

Only the destination and source MAC change; VLAN tags, the IP packet and the quoted
bytes stay exactly as received (the owner's kernel matches the quoted TCP header and
sequence number against its sockets, so they must not be touched).
"""

from __future__ import annotations

import struct

BROADCAST_MAC = b"\xff\xff\xff\xff\xff\xff"
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"  # IPv6 all-nodes multicast (ff02::1)

_TAG = struct.Struct("!HH")
_HEX = frozenset("0123456789abcdefABCDEF")


def build_copy(frame: bytes, dst_mac: bytes, src_mac: bytes) -> bytes:
    """Return ``frame`` with its Ethernet destination and source replaced."""
    return dst_mac + src_mac + frame[12:]


def insert_vlan_tag(frame: bytes, tpid: int, tci: int) -> bytes:
    """Put back a VLAN tag the NIC or driver stripped into packet metadata.

    Capture sockets see accelerated frames without their outermost tag; the copy must
    leave on the same VLAN, so the tag is re-inserted before parsing and building.
    """
    return frame[:12] + _TAG.pack(tpid or 0x8100, tci) + frame[12:]


def parse_mac(text: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` → 6 bytes; ValueError with the text on anything else."""
    parts = text.replace("-", ":").split(":")
    # Check the digits explicitly: int(p, 16) would also take "+1", " 1" and non-ASCII digits.
    if len(parts) != 6 or not all(len(p) in (1, 2) and all(c in _HEX for c in p) for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)

"""The Internet checksum (RFC 1071), the tests' one copy.

A plain loop over 16-bit words with end-around carry: independent of
``pmtud_relay.core.checksum`` (which reads a region as one big integer), so the core can be
checked against it. Only the standard library (also used inside namespaces).
"""

from __future__ import annotations


def fold(total: int) -> int:
    """``total`` reduced to 16 bits with end-around carry (one's-complement addition)."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ones_complement_sum(data: bytes) -> int:
    """The one's-complement sum of ``data``'s 16-bit big-endian words (odd length: zero-padded)."""
    if len(data) & 1:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total = fold(total + ((data[i] << 8) | data[i + 1]))
    return total


def internet_checksum(data: bytes) -> int:
    """The checksum to store in a header whose checksum field is zero."""
    return ~ones_complement_sum(data) & 0xFFFF


def pseudo_header_v6(src: bytes, dst: bytes, length: int, next_header: int) -> bytes:
    """The IPv6 pseudo-header (RFC 8200 section 8.1) that ICMPv6, TCP and UDP checksums cover."""
    return src + dst + length.to_bytes(4, "big") + b"\x00\x00\x00" + bytes([next_header])

"""Internet checksum (RFC 1071) verification without per-word Python loops.

The one's-complement sum of 16-bit big-endian words is congruent to the whole byte
string read as one big-endian integer modulo 0xffff (because 2**16 == 1 mod 0xffff).
A region that carries a correct checksum therefore reads as a multiple of 0xffff;
CPython does that reduction in C, which is far faster than summing words.
"""

from __future__ import annotations

_MOD = 0xFFFF


def region_sum(data, start: int, end: int) -> int:
    """The checksum-equivalent value of ``data[start:end]`` (odd lengths zero-padded)."""
    value = int.from_bytes(data[start:end], "big")
    if (end - start) & 1:
        value <<= 8
    return value


def verifies(total: int) -> bool:
    """True if a sum over a region *including* its checksum field is all ones."""
    return total % _MOD == 0 and total != 0


def internet_checksum(data: bytes) -> int:
    """The checksum to store in a header whose checksum field is zero (for builders/tests)."""
    value = region_sum(data, 0, len(data))
    folded = value % _MOD
    if folded == 0:
        # The one's-complement sum is 0xffff (or 0 for all-zero data).
        return 0 if value else 0xFFFF
    return (~folded) & 0xFFFF

"""core/checksum.py against the word-by-word RFC 1071 reference of tests/support/checksum.py, for lengths
on both sides of the threshold above which a region is read in four parts."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from pmtud_relay.core import checksum as C
from tests.support.checksum import internet_checksum, ones_complement_sum


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=1600), st.integers(0, 40), st.integers(0, 40))
def test_region_sum_is_congruent_to_the_word_sum(body, lead, trail):
    data = b"\xa5" * lead + body + b"\x5a" * trail
    value = C.region_sum(data, lead, lead + len(body))
    # Congruent modulo 0xffff (0 and 0xffff are the same one's-complement number).
    assert value % 0xFFFF == ones_complement_sum(body) % 0xFFFF
    assert (value == 0) == (not any(body))


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=2, max_size=1600).filter(any), st.integers(0, 1599))
def test_a_region_with_its_checksum_verifies_and_one_changed_byte_does_not(body, where):
    # Reserve two bytes at offset 0 for the checksum, as in an ICMP header (checksum at +2 is
    # the same thing shifted by a word).
    zeroed = b"\0\0" + body[2:]
    csum = C.internet_checksum(zeroed)
    assert csum == internet_checksum(zeroed)
    good = struct.pack("!H", csum) + body[2:]
    assert C.verifies(C.region_sum(good, 0, len(good)))
    i = where % len(good)
    bad = good[:i] + bytes([(good[i] + 1) & 0xFF]) + good[i + 1 :]
    # Adding 1 (mod 256) to one byte changes its word by +1, +256, -255 or -65280: never by a
    # multiple of 0xffff, so the region no longer verifies.
    assert not C.verifies(C.region_sum(bad, 0, len(bad)))



def test_every_length_on_both_sides_of_the_split():
    """Deterministic, every length (odd and even) and two alignments, through both splits."""
    rnd = random.Random(5)
    data = bytes(rnd.randrange(256) for _ in range(1400))
    for lead in (0, 1):
        for length in range(0, 1300):
            body = data[lead : lead + length]
            value = C.region_sum(data, lead, lead + length)
            assert value % 0xFFFF == ones_complement_sum(body) % 0xFFFF, (lead, length)

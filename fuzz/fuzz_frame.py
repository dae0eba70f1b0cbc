"""atheris target: the frame parser and the whole relay pipeline (``Relay.handle``).

Input: byte 0 picks the packet type the capture reported (mostly PACKET_HOST) and, with its top
bit set, has the target recompute the IPv4 header and ICMP checksums first (so mutations get past
them into the quoted packet); the rest is the Ethernet frame. One relay instance lives for the
whole run (its dedup and rate-limit tables are capped at 64 entries so eviction runs too) on a clock
that advances 1 ms per input.

Asserted for every input: nothing raises; ``parse_frame`` returns a PTB or a Reason; a drop
carries no copy; a frame ``parse_frame`` rejects is dropped for that reason, except that a PTB
whose checksum fails may be dropped earlier by policy, dedup or a limit (checksums come last); a
relayed decision passes an independent re-check (``_common.check_relayed_frame``: checksums, no
fragment, type/code, quoted source a VIP, outer destination = quoted source, MTU in [floor, quoted
length), copy[12:] == input[12:]); the tables never exceed their caps.

    python fuzz/fuzz_frame.py fuzz/corpus/frame -runs=1000000
"""

import sys

import _common
import atheris

with atheris.instrument_imports(include=["pmtud_relay"]):
    from pmtud_relay.core.packet import PTB, parse_frame
    from pmtud_relay.core.reasons import PARSE_REASONS, Reason
    from pmtud_relay.core.relay import Relay

PKTTYPES = (0, 0, 0, 0, 0, 1, 2, 3, 4)  # host ×5, broadcast, multicast, other host, outgoing
RELAY = Relay(_common.relay_config())
_clock = [0.0]


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    pkttype = PKTTYPES[(data[0] & 0x7F) % len(PKTTYPES)]
    frame = bytes(data[1:])
    if data[0] & 0x80:  # recompute the checksums: mutations reach the quoted packet
        frame = _common.fix_checksums(frame)
    parsed = parse_frame(frame)
    assert parsed.__class__ is PTB or parsed.__class__ is Reason, type(parsed)
    _clock[0] += 0.001
    decision = RELAY.handle(frame, _clock[0], _common.SRC_MAC, pkttype)
    if decision.relay:
        _common.check_relayed_frame(frame, decision, pkttype)
    else:
        assert decision.copy is None and decision.reason is not Reason.RELAYED
        if parsed.__class__ is Reason:
            if parsed is Reason.BAD_CHECKSUM and decision.reason is not Reason.BAD_CHECKSUM:
                # Checksums are verified last (only for a PTB the relay would send): a corrupt
                # PTB may be dropped first by the policy, dedup or a rate limit, with its record.
                assert decision.reason not in PARSE_REASONS and decision.ptb is not None
            else:
                assert decision.reason is parsed and decision.ptb is None
    assert len(RELAY.dedup) <= _common.SMALL_TABLES and len(RELAY.limiter) <= _common.SMALL_TABLES


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()

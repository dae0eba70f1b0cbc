"""The relay state machine: frame bytes + clock value → decision. No I/O, no clock.

Pipeline: parse → policy → dedup → rate limits → ICMP checksum → build the copy.
Cheap checks run first: the checksum (a pass over a quote of up to 1 240 bytes, the
costliest step) runs only for a PTB that would otherwise be relayed, so duplicates,
spoofed PTBs about other addresses and a rate-limited flood never pay for it. A PTB
spends rate-limit tokens only when it is relayed (a corrupt one gets the tokens the
limits took for it back, so garbage cannot starve real PTBs), and is remembered for dedup
only once it is relayed, so a PTB dropped by a limit can still get through on a later
retransmission.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

from pmtud_relay.core import dedup as _dedup
from pmtud_relay.core import ratelimit as _rl
from pmtud_relay.core import shun as _shun
from pmtud_relay.core.frame import ALL_NODES_MAC, BROADCAST_MAC
from pmtud_relay.core.packet import PTB, checksum_ok, parse_frame_unverified
from pmtud_relay.core.policy import PACKET_HOST, Policy
from pmtud_relay.core.quoted import quoted_tag
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.slots import slotted


class Decision(NamedTuple):
    """What to do with one received frame.

    ``copy`` is the frame to send when ``relay`` is true. ``ptb`` is the parsed record
    whenever the frame was a well-formed PTB (also for policy/limit drops), else None.
    """

    relay: bool
    reason: Reason
    ptb: PTB | None
    copy: bytes | None


_new = tuple.__new__  # NamedTuple construction without its Python-level __new__
_RELAYED = Reason.RELAYED
_DUPLICATE = Reason.DUPLICATE
_BAD_CHECKSUM = Reason.BAD_CHECKSUM
_SEQ_SPAN = _dedup.SEQ_SPAN
_MASK = _dedup.MASK

#: Parser rejections carry no per-packet data: one shared Decision each.
_PARSE_DROPS = {r: Decision(False, r, None, None) for r in Reason}


@slotted
@dataclass(frozen=True)
class RelayConfig:
    """Everything that shapes decisions. Immutable; swap it with :meth:`Relay.reconfigure`."""

    policy: Policy = field(default_factory=Policy)
    dedup_window: float = _dedup.DEFAULT_WINDOW
    dedup_capacity: int = _dedup.DEFAULT_CAPACITY
    source_rate: float = _rl.DEFAULT_SOURCE_RATE
    source_burst: float = _rl.DEFAULT_SOURCE_BURST
    global_rate: float = _rl.DEFAULT_GLOBAL_RATE
    global_burst: float = _rl.DEFAULT_GLOBAL_BURST
    source_capacity: int = _rl.DEFAULT_SOURCE_CAPACITY
    # Share of global_rate/global_burst kept for sources relayed before a flood episode began,
    # and the table of such known sources (core/ratelimit.py; docs/rate-limits.md). 0: off.
    global_reserve: float = _rl.DEFAULT_RESERVE
    known_source_capacity: int = _rl.DEFAULT_KNOWN_CAPACITY
    known_source_expiry: float = _rl.DEFAULT_KNOWN_EXPIRY
    # Kernel shun list (core/shun.py): sources whose bucket drops more than this many PTB/s are
    # dropped in the kernel for a while; at most this many at once (0: never).
    shun_min_rate: float = _shun.DEFAULT_MIN_RATE
    shun_max_sources: int = _shun.DEFAULT_MAX_SOURCES
    v6_broadcast: bool = False  # send IPv6 copies to ff:ff:ff:ff:ff:ff instead of 33:33:00:00:00:01

    def with_policy(self, policy: Policy) -> RelayConfig:
        return replace(self, policy=policy)


def _limiter_shape(c: RelayConfig) -> tuple:
    return (c.source_rate, c.source_burst, c.global_rate, c.global_burst, c.source_capacity,
            c.global_reserve, c.known_source_capacity, c.known_source_expiry)


class Relay:
    """Sans-IO relay. Feed it frames with :meth:`handle`; it returns :class:`Decision`.

    ``counts`` tallies decisions by reason, for metrics and summaries.
    """

    def __init__(self, config: RelayConfig | None = None, now: float = 0.0):
        self.config = config or RelayConfig()
        self.counts: dict[Reason, int] = dict.fromkeys(Reason, 0)
        self.shunner = _shun.Shunner(
            min_rate=self.config.shun_min_rate, max_sources=self.config.shun_max_sources, now=now,
            bucket_rate=self.config.source_rate,
        )
        self._build_state(now)

    def _build_state(self, now: float) -> None:
        c = self.config
        self.policy = c.policy
        self.dedup = _dedup.Deduplicator(c.dedup_window, c.dedup_capacity)
        self.limiter = self._new_limiter(c, now)
        self._dst_v6 = BROADCAST_MAC if c.v6_broadcast else ALL_NODES_MAC

    @staticmethod
    def _new_limiter(c: RelayConfig, now: float) -> _rl.RateLimiter:
        return _rl.RateLimiter(
            c.source_rate, c.source_burst, c.global_rate, c.global_burst, c.source_capacity, now,
            reserve=c.global_reserve, known_capacity=c.known_source_capacity, known_expiry=c.known_source_expiry,
        )

    def reconfigure(self, config: RelayConfig, now: float) -> None:
        """Apply a new configuration.

        Dedup and rate-limit state survive when their shape is unchanged (a policy-only
        change such as a new VIP set must not reset the limits an attacker is held by).
        """
        old = self.config
        self.config = config
        self.policy = config.policy
        self._dst_v6 = BROADCAST_MAC if config.v6_broadcast else ALL_NODES_MAC
        # New shun settings apply to the next holds; current holds run out on their own.
        self.shunner.min_rate = config.shun_min_rate
        self.shunner.max_sources = config.shun_max_sources
        self.shunner.bucket_rate = config.source_rate
        if (old.dedup_window, old.dedup_capacity) != (config.dedup_window, config.dedup_capacity):
            self.dedup = _dedup.Deduplicator(config.dedup_window, config.dedup_capacity)
        if _limiter_shape(old) != _limiter_shape(config):
            self.limiter = self._new_limiter(config, now)

    def kernel_blocklist(self, now: float) -> frozenset[bytes] | None:
        """Outer sources a capture adapter should drop in the kernel (see core/shun.py): the
        new set when it changed, else None. Cheap enough to call once per batch."""
        shunner = self.shunner
        if not shunner.due(now):
            return None
        return shunner.update(self.limiter.take_source_drops(), now)

    def handle(self, frame: bytes, now: float, src_mac: bytes, pkttype: int = PACKET_HOST) -> Decision:
        """Decide about one received frame.

        ``now`` is a monotonic clock value in seconds; ``src_mac`` is the MAC of the
        interface the copy will leave from; ``pkttype`` is the Linux packet type the
        capture saw (PACKET_HOST for unicast to this host).
        """
        parsed = parse_frame_unverified(frame)
        # `.__class__ is` is the cheapest test; mypy does not narrow on it, hence the ignores.
        if parsed.__class__ is Reason:
            self.counts[parsed] += 1  # type: ignore[index]  # a Reason here (checked just above)
            return _PARSE_DROPS[parsed]  # type: ignore[index]  # a Reason here (checked just above)
        ptb: PTB = parsed  # type: ignore[assignment]  # not a Reason, so a PTB (ParseResult)
        reason = self.policy.check(ptb, pkttype)
        if reason is None:
            # (outer src, outer dst, mtu, inner src, inner dst, proto, sport, dport): one
            # C-level slice of the record, dedup_key() inlined. A PTB is a duplicate only if it
            # also quotes the word (TCP sequence number, SCTP tag) of the one relayed under this
            # key, or for TCP one a little after it: the same effect on the owner (core/dedup.py).
            # The word is read only when there is an entry to compare it with, or to remember.
            key = ptb[1:9]
            dedup = self.dedup
            base = dedup.recent(key, now)
            tag: int | None = None  # quoted_tag() not called yet
            if base is not None:
                tag = quoted_tag(ptb)
                if (tag - base) & _MASK < (_SEQ_SPAN if ptb[6] == 6 else 1):  # ptb[6]: proto
                    reason = _DUPLICATE
            if reason is None:
                reason = self.limiter.check(ptb[1], now)  # ptb.outer_src (no property call)
                if reason is None:
                    if not checksum_ok(ptb):  # a corrupt frame: reported as a parse drop
                        self.limiter.refund(ptb[1])
                        self.counts[_BAD_CHECKSUM] += 1
                        return _PARSE_DROPS[_BAD_CHECKSUM]
                    dedup.remember(key, now, quoted_tag(ptb) if tag is None else tag)
                    self.limiter.relayed(ptb[1], now)  # known source for the reserve
                    self.counts[_RELAYED] += 1
                    dst = BROADCAST_MAC if ptb[0] == 4 else self._dst_v6  # ptb.family
                    return _new(Decision, (True, _RELAYED, ptb, dst + src_mac + frame[12:]))  # frame.build_copy
        self.counts[reason] += 1
        return _new(Decision, (False, reason, ptb, None))

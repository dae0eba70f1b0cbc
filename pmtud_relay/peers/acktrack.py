"""The peer service's sending-side ack bookkeeping: which fan-out an owner acknowledged.

:class:`AckTrackingMixin` is the part of :class:`~pmtud_relay.peers.service.PeerService` that
reads acks arriving on the send sockets, hands them to the pure
:class:`~pmtud_relay.peers.ack.AckTracker` and ends the fan-outs whose wait
(:data:`ACK_EXPIRY`) is over, with a debug line for each.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Callable

from pmtud_relay.peers import ack as peerack
from pmtud_relay.peers.ack import AckEvent, AckTracker

ACK_EXPIRY = peerack.DEFAULT_EXPIRY


def _flow(ptb) -> tuple:
    """The PTB's flow, kept while its acks are awaited (raw: formatted only for a log line)."""
    return (ptb.inner_src, ptb.inner_dst, ptb.proto, ptb.sport, ptb.dport, ptb.mtu)


def _flow_kv(info) -> dict:
    if not info:
        return {}
    src, dst, proto, sport, dport, mtu = info
    return {"inner_src": str(ipaddress.ip_address(src)), "inner_dst": str(ipaddress.ip_address(dst)),
            "proto": proto, "sport": sport if sport >= 0 else None, "dport": dport if dport >= 0 else None,
            "mtu": mtu}


class AckTrackingMixin:
    """The sending side's acks of :class:`~pmtud_relay.peers.service.PeerService`, which
    sets everything declared here."""

    # Set by PeerService.__init__ and open().
    clock: Callable[[], float]
    wall: Callable[[], float]
    log: logging.Logger
    ack_tracker: AckTracker | None
    internal_errors: int
    _warn: Callable[..., None]

    # -- acknowledgements: sending side -------------------------------------------------------------
    def _on_ack_readable(self, sock) -> None:
        from pmtud_relay.peers.receiver import PeerListener

        try:
            batch = PeerListener.drain(sock)
            if not batch:
                return
            now, wall = self.clock(), self.wall()
            for data, host, _port in batch:
                self.handle_ack(data, host, now, wall)
        except Exception:  # noqa: BLE001
            self.internal_errors += 1
            self._warn("peer_ack_receive_error", {}, exc_info=True)

    def handle_ack(self, data: bytes, host: str, now: float, wall: float):
        tracker = self.ack_tracker
        if tracker is None:
            return None
        host = host.partition("%")[0]
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            pass
        result = tracker.handle(data, host, now, wall)
        if isinstance(result, AckEvent):
            if self.log.isEnabledFor(10):
                kv = _flow_kv(result.info)
                kv.update(peer=host, owner_verdict=result.verdict.label, rtt_ms=round(result.rtt * 1000, 3),
                          owner_delay_ms=round(result.delay * 1000, 3), first=result.first)
                self.log.debug("peer_ack", extra={"kv": kv})
        else:
            self._warn(f"peer_ack_dropped:{result.value}", {"peer": host})
        return result

    def expire_acks(self, now: float) -> None:
        """End the fan-outs whose wait is over (each unacknowledged one: a debug line)."""
        tracker = self.ack_tracker
        if tracker is None:
            return
        unacked = tracker.expire(now)
        if unacked and self.log.isEnabledFor(10):
            for entry in unacked:
                kv = _flow_kv(entry.info)
                kv.update(peers=",".join(sorted(entry.peers)), waited_s=tracker.expiry)
                self.log.debug("peer_no_owner_ack", extra={"kv": kv})

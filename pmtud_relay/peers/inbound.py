"""The peer service's receive path: listener → inbox → injection, then the owner's ack.

:class:`InboundMixin` is the part of :class:`~pmtud_relay.peers.service.PeerService` that
reads the listening sockets, hands each datagram to the pure :class:`~pmtud_relay.peers.inbox.PeerInbox`
(verify, policy), injects an accepted PTB into this host's own receive path and, when acks
are on, asks the confirmation service whether this host owns the flow and answers the sender
with one signed, rate-limited ack. The service owns the sockets and the state it reads here.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections import Counter
from typing import Any, Callable, TextIO

from pmtud_relay.core.policy import Policy
from pmtud_relay.core.relay import Decision
from pmtud_relay.peers import wire as peerproto
from pmtud_relay.peers.ack import AckGate, AckVerdict, encode_ack
from pmtud_relay.peers.inbox import InboxDecision, PeerInbox
from pmtud_relay.peers.wire import Keyring
from pmtud_relay.report import decision_record

#: Owner verdicts (pmtud_relay.confirm.verdict.OwnerVerdict values) a receiver acknowledges.
_ACKED_VERDICTS: dict[str | None, AckVerdict] = {"applied": AckVerdict.APPLIED, "not_applied": AckVerdict.NOT_APPLIED}


class InboundMixin:
    """The receive path of :class:`~pmtud_relay.peers.service.PeerService`, which sets
    everything declared here (the listening sockets, the inbox, the injector, the ack gate)."""

    # Set by PeerService.__init__ and open().
    settings: Any
    policy: Callable[[], Policy]
    dry_run: bool
    clock: Callable[[], float]
    wall: Callable[[], float]
    nonce: Callable[[int], bytes]
    log: logging.Logger
    out: TextIO
    keyring: Keyring | None
    inbox: PeerInbox | None
    listener: Any  # peers.receiver.PeerListener (imported lazily: it opens raw sockets)
    injector: Any  # peers.receiver.LoopbackInjector
    confirmer: Any  # the daemon's confirm.service.Confirmer
    ack_gate: AckGate | None
    injected: int
    inject_errors: Counter[str]
    acks_sent: Counter[str]
    ack_send_errors: Counter[str]
    internal_errors: int
    _warn: Callable[..., None]
    _write: Callable[[dict], None]

    # -- receiving ---------------------------------------------------------------------------------
    def _on_readable(self, sock) -> None:
        try:
            listener = self.listener
            batch = listener.drain(sock) if self.ack_gate is None else listener.drain_from(sock)
            if not batch:
                return
            now, wall = self.clock(), self.wall()
            policy = self.policy()
            if self.ack_gate is None:
                for data, host, port in batch:
                    self.handle_datagram(data, host, port, now, wall, policy)
            else:
                for data, host, port, local in batch:
                    self.handle_datagram(data, host, port, now, wall, policy, reply=(sock, local))
        except Exception:  # noqa: BLE001
            self.internal_errors += 1
            self._warn("peer_receive_error", {}, exc_info=True)

    def handle_datagram(self, data: bytes, host: str, port: int, now: float, wall: float,
                        policy: Policy, reply=None) -> InboxDecision:
        """One datagram from ``host``:``port``; ``reply``: (the socket it came in on, the local
        address it was sent to), where an acknowledgement goes back through."""
        inbox = self.inbox
        if inbox is None:  # open() makes one whenever there is a listener to read from
            raise RuntimeError("the peer service is not listening")
        decision = inbox.handle(data, now, wall, host, policy)
        sender = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        ptb, packet = decision.ptb, decision.packet  # both set whenever ``inject`` is
        if decision.inject and self.injector is not None and ptb is not None and packet is not None:
            err = self.injector.inject(packet, ptb.family, str(ipaddress.ip_address(ptb.outer_dst)))
            if err:
                name = errno.errorcode.get(err, str(err))
                self.inject_errors[name] += 1
                self._warn("peer_inject_failed", {"peer": sender, "errno": name})
            else:
                self.injected += 1
                if self.ack_gate is not None and self.confirmer is not None and reply is not None:
                    self._confirm(packet, data, host, port, now, reply)
        if self.dry_run:
            # A PeerReason is reported like a core Reason (its ``value``).
            rec = decision_record(Decision(decision.inject, decision.reason, ptb, None), "peer")  # type: ignore[arg-type]
            rec["verdict"] = "inject" if decision.inject else "drop"
            rec["peer"] = sender
            rec["key_id"] = decision.key_id
            self._write(rec)
        elif decision.inject:
            if self.log.isEnabledFor(10):
                rec = decision_record(Decision(True, decision.reason, ptb, None), "peer")  # type: ignore[arg-type]
                rec["peer"] = sender
                self.log.debug("peer_injected", extra={"kv": rec})
        else:
            self._warn(f"peer_rejected:{decision.reason.value}", {"peer": sender})
        return decision

    # -- acknowledgements: receiving side -----------------------------------------------------------
    def _confirm(self, packet: bytes, data: bytes, host: str, port: int, now: float, reply) -> None:
        """Ask who owns the flow; if this host does, answer the datagram's sender once."""
        from pmtud_relay.confirm.verdict import Origin

        acked = bytes(data[peerproto.NONCE_OFFSET:peerproto.NONCE_OFFSET + peerproto.NONCE_LEN])
        size = len(data)

        def on_verdict(verdict, seconds: float) -> None:
            self._answer(verdict, seconds, acked, size, host, port, reply)

        self.confirmer.submit(packet, Origin.PEER, now, on_verdict)

    def _answer(self, verdict, seconds: float, acked: bytes, size: int, host: str, port: int, reply) -> None:
        """Called once per injected datagram, on the loop, with the owner verdict."""
        ack_verdict = _ACKED_VERDICTS.get(getattr(verdict, "value", None))
        if self.log.isEnabledFor(10):
            self.log.debug("peer_owner_verdict", extra={"kv": {
                "peer": host, "owner_verdict": getattr(verdict, "value", verdict),
                "verdict_ms": round(seconds * 1000, 3), "ack": ack_verdict is not None}})
        if ack_verdict is None or self.ack_gate is None or self.keyring is None:
            return  # no owner here (or no answer): only the owner acknowledges
        try:
            ack = encode_ack(acked, ack_verdict, seconds, self.keyring, self.wall(), self.nonce(peerproto.NONCE_LEN))
            refused = self.ack_gate.allow(acked, len(ack), size, self.clock())
            if refused is not None:
                self._warn(f"peer_ack_not_sent:{refused}", {"peer": host})
                return
            from pmtud_relay.peers.receiver import PeerListener

            sock, local = reply
            err = PeerListener.reply(sock, ack, host, port, local)
            if err:
                name = errno.errorcode.get(err, str(err))
                self.ack_send_errors[name] += 1
                self._warn("peer_ack_send_failed", {"peer": host, "errno": name})
                return
            self.acks_sent[ack_verdict.label] += 1
        except Exception:  # noqa: BLE001
            self.internal_errors += 1
            self._warn("peer_ack_error", {}, exc_info=True)

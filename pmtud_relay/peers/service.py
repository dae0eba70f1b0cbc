"""Peer relay across L3 fabrics: settings, command-line options and the service the daemon runs.

``fanout`` chooses where a PTB this host captured and accepted goes:

* ``l2`` (default): broadcast on the segment it arrived on (the original behaviour);
* ``peers``: one signed UDP datagram to every peer serving its quoted source VIP;
* ``both``: both.

Independently, a host with ``--peer-listen`` (on by default with ``peers``/``both``) receives
datagrams from peers, verifies them, re-checks the PTB with its own policy and injects it into its
own receive path (:mod:`pmtud_relay.peers.receiver`). A received PTB is never relayed
again: the receive path has no reference to the fan-out, and the injected packet enters through
``lo``, where no capture listens. Protocol, keys and threat model: docs/peers.md.

Delivery acknowledgements (``acks``, on by default; :mod:`pmtud_relay.peers.ack`): the receiver
asks the confirmation service (:mod:`pmtud_relay.confirm`) whether this host owns the flow an
injected PTB quotes and, if so, answers the datagram's sender (its address and port) with one
signed ack, rate-limited. The sender reads acks on its send sockets and counts, per PTB it sent,
whether an owner acknowledged it within ``ACK_EXPIRY`` seconds.

One concern a module: :mod:`~pmtud_relay.peers.settings` (the options and their check),
:mod:`~pmtud_relay.peers.inbound` (the receive path: inbox, injection, the owner's ack),
:mod:`~pmtud_relay.peers.acktrack` (acks for the PTBs this host sent) and this one (the
service's sockets, lifecycle, peer and key refresh, fan-out, counters). The settings names
stay importable from here. About 420 lines: what is left is the one object whose state the
parts above read (opened, refreshed and closed together), so it is not cut further.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Callable, TextIO

from pmtud_relay import logs
from pmtud_relay.core.policy import Policy
from pmtud_relay.core.reasons import Reason
from pmtud_relay.core.relay import Decision
from pmtud_relay.peers import wire as peerproto
from pmtud_relay.peers.ack import AckDecoder, AckGate, AckTracker
from pmtud_relay.peers.acktrack import ACK_EXPIRY as ACK_EXPIRY
from pmtud_relay.peers.acktrack import AckTrackingMixin, _flow
from pmtud_relay.peers.inbound import InboundMixin
from pmtud_relay.peers.inbox import (
    InboxConfig,
    PeerInbox,
    PeerTable,
)
from pmtud_relay.peers.keys import KeyFileError, file_stamp, load_keyring
from pmtud_relay.peers.settings import DEFAULT_ACK_RATE as DEFAULT_ACK_RATE
from pmtud_relay.peers.settings import DEFAULT_LISTEN as DEFAULT_LISTEN
from pmtud_relay.peers.settings import DEFAULT_REFRESH as DEFAULT_REFRESH
from pmtud_relay.peers.settings import FANOUT_MODES as FANOUT_MODES
from pmtud_relay.peers.settings import PeerConfigError as PeerConfigError
from pmtud_relay.peers.settings import PeerSettings as PeerSettings
from pmtud_relay.peers.settings import build_settings as build_settings
from pmtud_relay.peers.sources import DEFAULT_DNS_INTERVAL as DEFAULT_DNS_INTERVAL
from pmtud_relay.peers.sources import PeerDirectory, local_addresses
from pmtud_relay.peers.wire import Keyring, PeerDecoder, PeerReason, encode, ptb_packet
from pmtud_relay.report import decision_record, logfmt, to_json

if TYPE_CHECKING:
    from pmtud_relay.peers.receiver import LoopbackInjector, PeerListener
    from pmtud_relay.peers.sender import PeerEmitter


class PeerError(RuntimeError):
    """The peer service cannot start (bind, raw socket, key file). ``exit_code`` for the CLI."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# -- the service ---------------------------------------------------------------------------------
class PeerService(InboundMixin, AckTrackingMixin):
    """Sender (fan-out), receiver (listen → verify → policy → inject) and the refresh loop.

    ``policy`` returns the host's current relay policy (its VIPs change with discovery).
    """

    def __init__(
        self,
        settings: PeerSettings,
        policy: Callable[[], Policy],
        *,
        dry_run: bool = False,
        out: TextIO = sys.stdout,
        json_output: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        nonce: Callable[[int], bytes] = os.urandom,
        own_addresses: Callable[[], frozenset[str]] = local_addresses,
        resolver=None,
        confirmer=None,
    ):
        self.settings = settings
        self.policy = policy
        self.dry_run = dry_run
        self.out = out
        self.json_output = json_output
        self.clock = clock
        self.wall = wall
        self.nonce = nonce
        self.own_addresses = own_addresses
        self.log = logs.get()
        now = clock()
        self.table = PeerTable((), settings.rate, settings.burst, now)
        self.directory = PeerDirectory(settings.peers, settings.peers_files, settings.peers_dns,
                                       settings.dns_interval, resolver)
        self.keyring: Keyring | None = None
        self._key_stamp: tuple[int, int, int, int] | None = None
        self.decoder: PeerDecoder | None = None
        self.inbox: PeerInbox | None = None
        self.emitter: PeerEmitter | None = None
        self.listener: PeerListener | None = None
        self.injector: LoopbackInjector | None = None
        self.tx = 0  # datagrams sent (or, in dry-run, that would have been)
        self.tx_errors: Counter[str] = Counter()
        self.injected = 0
        self.inject_errors: Counter[str] = Counter()
        self.key_reloads = 0
        self.internal_errors = 0
        self._last_warn: dict[str, float] = {}
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_errors: tuple[str, ...] = ()
        self._filter_for: frozenset[str] | None = None  # the peer addresses the listener's filter was built for
        # Delivery acknowledgements (core/peerack.py).
        self.confirmer = confirmer  # the daemon's confirm.service.Confirmer, set before start()
        self.ack_gate: AckGate | None = None  # receiving side
        self.ack_tracker: AckTracker | None = None  # sending side
        self.acks_sent: Counter[str] = Counter()  # by verdict label
        self.ack_send_errors: Counter[str] = Counter()  # by errno name
        self._ack_socks: list = []
        self._emitter_filter_for: frozenset[str] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def set_dedup(self, window: float, capacity: int) -> None:
        """Reload (SIGHUP): the receiver's dedup follows ``dedup_window``/``dedup_capacity``."""
        if self.inbox is not None:
            self.inbox.set_dedup(window, capacity)

    def open(self) -> None:
        """Load the keys, open the sockets. PeerError (with an exit code) on failure."""
        from pmtud_relay.peers.filter import program_for
        from pmtud_relay.peers.receiver import LoopbackInjector, PeerListener
        from pmtud_relay.peers.sender import PeerEmitter

        s = self.settings
        try:
            self.keyring = load_keyring(s.key_file)
        except KeyFileError as exc:
            raise PeerError(f"--peer-key-file: {exc}", 2) from None
        self._key_stamp = file_stamp(s.key_file)
        try:
            if s.listen:
                self.decoder = PeerDecoder(self.keyring, s.max_age)
                self.inbox = PeerInbox(self.decoder, InboxConfig(
                    dedup_window=s.dedup_window, dedup_capacity=s.dedup_capacity,
                    sender_rate=2 * s.rate, sender_burst=2 * s.burst), now=self.clock())
                if not self.dry_run:
                    self.injector = LoopbackInjector()
                # Until the first refresh resolves the peers: a sending host admits nobody yet.
                self._filter_for = self._filter_addresses()
                self.listener = PeerListener(list(s.listen), peer_filter=program_for(self._filter_for))
                self._log_filter(self.listener.filter)
            if s.sends and not self.dry_run:
                self.emitter = PeerEmitter()
                if s.acks:
                    self.ack_tracker = AckTracker(AckDecoder(self.keyring, s.max_age), ACK_EXPIRY)
                    self._ack_socks = self.emitter.open_all()
                    self._emitter_filter_for = frozenset()
                    self.emitter.set_filter(program_for(self._emitter_filter_for).program)
            if s.listen and s.acks and not self.dry_run:
                self.ack_gate = AckGate(s.ack_rate, 2 * s.ack_rate, self.clock())
        except PermissionError:
            self.close()
            raise PeerError("permission denied opening the raw IP socket that injects peer PTBs: "
                            "it needs CAP_NET_RAW", 77) from None
        except OSError as exc:
            self.close()
            where = ", ".join(f"{h or '*'}:{p}" for h, p in s.listen)
            raise PeerError(f"--peer-listen {where}: {exc.strerror or exc}", 1) from None

    async def start(self) -> None:
        """Resolve the peers once (before the daemon says it is ready), then watch sources."""
        self._loop = asyncio.get_running_loop()
        await self.refresh()
        if self.listener is not None:
            for sock in self.listener.socks:
                self._loop.add_reader(sock.fileno(), self._on_readable, sock)
        if self.ack_gate is not None and self.confirmer is None:
            # No owner lookup (confirm_owner off, or no sock_diag): nothing to acknowledge with.
            self.ack_gate = None
            self.log.info("peer_acks", extra={"kv": {"send": "off", "reason": "no owner lookup (confirm_owner)"}})
        for sock in self._ack_socks:
            self._loop.add_reader(sock.fileno(), self._on_ack_readable, sock)
        self._task = asyncio.create_task(self._refresh_loop())

    async def stop(self) -> None:
        if self._loop is not None and self.listener is not None:
            for sock in self.listener.socks:
                self._loop.remove_reader(sock.fileno())
        if self._loop is not None:
            for sock in self._ack_socks:
                self._loop.remove_reader(sock.fileno())
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def close(self) -> None:
        for part in (self.listener, self.injector, self.emitter):
            if part is not None:
                part.close()
        self.listener = self.injector = self.emitter = None
        self._ack_socks = []

    def describe(self) -> dict:
        return {
            "fanout": self.settings.fanout,
            "peers": len(self.table.peers),
            "peer_listen": ",".join(self.listener.bound()) if self.listener is not None else "none",
            "peer_keys": ",".join(str(k) for k in self.keyring.ids) if self.keyring else "",
            "peer_filter": self.listener.filter.mode if self.listener is not None and self.listener.filter else "none",
        }

    # -- refresh: peer list and keys -------------------------------------------------------------
    async def refresh(self) -> None:
        loop = asyncio.get_running_loop()
        now = self.clock()
        peers, errors, keyring, stamp = await loop.run_in_executor(None, self._refresh_blocking, now)
        if self.table.update(peers, self.clock()):
            self.log.info("peers_changed", extra={"kv": {
                "count": len(peers), "peers": ",".join(_peer_text(p) for p in peers) or "none"}})
        self._apply_filter()
        if errors != self._last_errors:
            self._last_errors = errors
            for err in errors:
                self.log.warning("peer_source_error", extra={"kv": {"error": err}})
        if keyring is not None:
            self._key_stamp = stamp
            if keyring != self.keyring:
                self.keyring = keyring
                if self.decoder is not None:
                    self.decoder.set_keyring(keyring)
                if self.ack_tracker is not None:
                    self.ack_tracker.decoder.set_keyring(keyring)
                self.key_reloads += 1
                self.log.info("peer_keys_reloaded", extra={"kv": {
                    "keys": ",".join(str(k) for k in keyring.ids), "send_key": keyring.send_id}})

    def _refresh_blocking(self, now: float):
        try:
            own = self.own_addresses()
        except Exception:  # noqa: BLE001 - netlink trouble must not stop the refresh
            own = frozenset()
        peers = self.directory.refresh(now, own)
        errors = tuple(self.directory.errors())
        keyring = stamp = None
        new_stamp = file_stamp(self.settings.key_file)
        if new_stamp != self._key_stamp and new_stamp is not None:
            try:
                keyring = load_keyring(self.settings.key_file)
                stamp = new_stamp
            except KeyFileError as exc:
                errors += (f"--peer-key-file: {exc} (keeping the previous keys)",)
        return peers, errors, keyring, stamp

    # -- the in-kernel filter on the listener (capture/peer_filter.py) ---------------------------
    def _filter_addresses(self) -> frozenset[str] | None:
        """Who may cost this host anything: the peers it sends to, or None (magic only) on a
        host that only listens (it has no list of senders)."""
        if not self.settings.sends:
            return None
        return frozenset(p.address for p in self.table.peers)

    def _apply_filter(self) -> None:
        """Rebuild the listener's kernel filter when the peer set changed (file, DNS, reload).
        If the kernel refuses the address program (too large for net.core.optmem_max), fall
        back to the magic alone and say so."""
        from pmtud_relay.peers.filter import program_for

        self._apply_emitter_filter()
        listener = self.listener
        if listener is None:
            return
        wanted = self._filter_addresses()
        if wanted == self._filter_for:
            return
        self._filter_for = wanted
        pf = program_for(wanted)
        try:
            listener.set_filter(pf)
        except OSError as exc:
            pf = program_for(None)._replace(
                reason=f"the kernel refused the {len(wanted or ())}-address filter: {exc.strerror or exc}")
            listener.set_filter(pf)
        self._log_filter(pf)

    def _apply_emitter_filter(self) -> None:
        """The send sockets receive acks: the same filter, by the peers' addresses (magic
        alone when the list does not fit a program)."""
        from pmtud_relay.peers.filter import program_for

        if not self._ack_socks or self.emitter is None:
            return
        wanted = frozenset(p.address for p in self.table.peers)
        if wanted == self._emitter_filter_for:
            return
        self._emitter_filter_for = wanted
        try:
            self.emitter.set_filter(program_for(wanted).program)
        except OSError:
            self.emitter.set_filter(program_for(None).program)

    def _log_filter(self, pf) -> None:
        if pf is None:
            return
        kv = {"mode": pf.mode, "addresses": len(pf.addresses), "instructions": len(pf.program)}
        if pf.reason:
            kv["reason"] = pf.reason
        if pf.mode == "magic" and self.settings.sends:  # a list that could not be used
            self.log.warning("peer_filter", extra={"kv": kv})
        else:
            self.log.info("peer_filter", extra={"kv": kv})

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001
                self.internal_errors += 1
                self._warn("peer_refresh_failed", {}, exc_info=True)
            self.expire_acks(self.clock())

    # -- sending ----------------------------------------------------------------------------------
    def fanout(self, ptb, now: float) -> None:
        """Send one relayed PTB to every peer serving its quoted source VIP (rate permitting)."""
        if not self.settings.sends or self.keyring is None:
            return
        try:
            targets = self.table.targets(ptb.inner_src, now)
            if targets.send:
                nonce = self.nonce(peerproto.NONCE_LEN)
                datagram = encode(ptb_packet(ptb), self.keyring, self.wall(), nonce)
                emitter = self.emitter
                sent_to = []
                for peer in targets.send:
                    self.tx += 1
                    if emitter is None:
                        continue
                    err = emitter.send(datagram, peer.address, peer.port)
                    if err:
                        name = errno.errorcode.get(err, str(err))
                        self.tx_errors[name] += 1
                        self._warn("peer_send_failed", {"peer": str(peer), "errno": name,
                                                        "total": sum(self.tx_errors.values())})
                    else:
                        sent_to.append(peer.address)
                if sent_to and self.ack_tracker is not None:
                    self.ack_tracker.sent(nonce, sent_to, now, _flow(ptb))
            if self.dry_run:
                rec = decision_record(Decision(True, Reason.RELAYED, ptb, None), "peers")
                rec["verdict"] = "send"
                rec["peers"] = ",".join(str(p) for p in targets.send)
                rec["limited"] = ",".join(str(p) for p in targets.limited)
                self._write(rec)
            elif targets.limited:
                self._warn("peer_rate_limited", {"peers": ",".join(str(p) for p in targets.limited)})
        except Exception:  # noqa: BLE001 - the L2 path and the other peers go on
            self.internal_errors += 1
            self._warn("peer_fanout_error", {}, exc_info=True)

    # -- reporting ---------------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Totals since start, for the summary line (``peer_rx_<reason>`` for every outcome)."""
        out = {"peers": len(self.table.peers), "peer_tx": self.tx,
               "peer_tx_limited": sum(self.table.limited.values()),
               "peer_tx_errors": sum(self.tx_errors.values())}
        if self.inbox is not None:
            for reason, n in self.inbox.counts.items():
                if n:
                    prefix = "peer_rx_" if isinstance(reason, PeerReason) else "peer_rx_ptb_"
                    out[prefix + reason.value] = n
            out["peer_injected"] = self.injected
            out["peer_inject_errors"] = sum(self.inject_errors.values())
        if self.key_reloads:
            out["peer_key_reloads"] = self.key_reloads
        tracker = self.ack_tracker
        if tracker is not None:
            self.expire_acks(self.clock())
            out["peer_acked"] = tracker.fanouts["delivered"]
            out["peer_unacked"] = tracker.fanouts["not_delivered"] + tracker.fanouts["evicted"]
            out["peer_awaiting_ack"] = len(tracker)
            for verdict, n in tracker.acks.items():
                out["peer_acks_" + verdict.label] = n
            out["peer_ack_drops"] = sum(tracker.drops.values())
        if self.ack_gate is not None:
            out["peer_acks_sent"] = self.ack_gate.counts["sent"] - sum(self.ack_send_errors.values())
            out["peer_acks_rate_limited"] = self.ack_gate.counts["rate_limited"]
        return out

    def _write(self, rec: dict) -> None:
        self.out.write((to_json(rec) if self.json_output else logfmt(rec)) + "\n")
        self.out.flush()

    def _warn(self, event: str, kv: dict, exc_info: bool = False, every: float = 10.0) -> None:
        """At most one line per event kind every ``every`` seconds."""
        now = self.clock()
        last = self._last_warn.get(event)
        if last is not None and now - last < every:
            return
        self._last_warn[event] = now
        name, _, reason = event.partition(":")
        if reason:
            kv = dict(kv, reason=reason)
        self.log.warning(name, exc_info=exc_info, extra={"kv": kv})


def _peer_text(peer) -> str:
    text = str(peer)
    if peer.prefixes is not None:
        text += "=" + "+".join(str(n) for n in peer.prefixes.networks)
    return text

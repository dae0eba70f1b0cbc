"""Peer relay settings, command line and service (pmtud_relay.peers.service), without namespaces.

Real UDP sockets on 127.0.0.1 only; raw-socket injection is exercised in tests/test_e2e_peers.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import io
import json
import os
import socket
import time

import pytest

from pmtud_relay import config as cfg
from pmtud_relay.cli import EXIT_CONFIG, build_parser, main
from pmtud_relay.core.packet import parse_frame
from pmtud_relay.core.policy import Policy, VipSet
from pmtud_relay.peers import service as peering
from pmtud_relay.peers.inbox import Peer, PeerSpec
from pmtud_relay.peers.service import PeerConfigError, PeerService, PeerSettings, build_settings
from pmtud_relay.peers.wire import Keyring, PeerReason, encode
from tests.support import frames as F

KEY_HEX = "5a" * 32
POLICY = Policy(vips=VipSet([F.VIP4, F.VIP6]))


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "peer.key"
    path.write_text(f"1:{KEY_HEX}\n")
    os.chmod(path, 0o600)
    return str(path)


def args(*argv: str):
    return build_parser().parse_args(["run", *argv])


def peer_settings(*argv: str):
    """Flags → the daemon's PeerSettings, the way ``run`` builds them (no environment, no file)."""
    loaded = cfg.load(args(*argv), environ={}, use_default_path=False)
    return cfg.peer_settings(loaded.settings)


# -- settings ---------------------------------------------------------------------------------------
def test_default_is_l2_only_and_peer_relay_off():
    assert peer_settings() is None


def test_peers_mode_from_the_command_line(key_file):
    s = peer_settings(
        "--fanout", "peers", "--peer", "198.51.100.18", "--peer", "[2001:db8:5:3::2]:2200=192.0.2.0/24",
        "--peers-file", "/etc/pmtud-relay/peers", "--peers-dns", "relays.example=2001:db8:ffff::/64",
        "--peer-key-file", key_file, "--peer-rate", "5", "--peer-burst", "7", "--peer-max-age", "3",
        "--peers-dns-interval", "30", "--peers-refresh", "0.5")
    assert s.fanout == "peers" and s.sends and not s.l2
    assert [str(p) for p in s.peers] == ["198.51.100.18:2106", "[2001:db8:5:3::2]:2200=192.0.2.0/24"]
    assert s.peers_files == ("/etc/pmtud-relay/peers",)
    assert [str(p) for p in s.peers_dns] == ["relays.example:2106=2001:db8:ffff::/64"]
    assert s.listen == (("", 2106),)  # receives by default
    assert (s.rate, s.burst, s.max_age, s.dns_interval, s.refresh) == (5, 7, 3, 30, 0.5)


def test_l2_host_can_receive_from_peers(key_file):
    s = peer_settings("--peer-listen", "198.51.100.2:2107", "--peer-listen", "[::1]",
                      "--peer-key-file", key_file)
    assert s.fanout == "l2" and s.l2 and not s.sends
    assert s.listen == (("198.51.100.2", 2107), ("::1", 2106))


def test_both_and_listen_none(key_file):
    s = peer_settings("--fanout", "both", "--peer", "198.51.100.18", "--peer-listen", "none",
                      "--peer-key-file", key_file)
    assert s.sends and s.l2 and s.listen == ()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--fanout", "peers"], "--fanout peers: name the peers"),
        (["--peer", "198.51.100.18"], "only sent to with --fanout peers or both"),
        (["--fanout", "peers", "--peer", "198.51.100.18"], "--peer-key-file: required"),
        (["--peer-listen", ":2106"], "--peer-key-file: required"),
        (["--peer-listen", "none", "--peer-listen", ":1", "--peer-key-file", "K"], "cannot be combined"),
        (["--peer-listen", ":2106", "--peer-key-file", "/nonexistent/key"],
         "--peer-key-file: /nonexistent/key: no such"),
    ],
)
def test_bad_peer_options_name_the_option(argv, message, key_file):
    argv = [key_file if a == "K" else a for a in argv]
    with pytest.raises(cfg.ConfigError, match=message.replace("(", r"\(")):
        peer_settings(*argv)


def test_build_settings_validates_strings_from_files_and_environment(key_file):
    """Values from TOML or PMTUD_RELAY_* do not pass through argparse: build_settings checks them."""
    for kw, message in [
        ({"fanout": "peers", "peers": ["198.51.100.18:0"]}, "--peer: "),
        ({"fanout": "peers", "peers_dns": ["198.51.100.18"]}, "not a name"),
        ({"listen": ["bogus:1"]}, "--peer-listen: "),
    ]:
        with pytest.raises(PeerConfigError, match=message):
            build_settings(key_file=key_file, **kw)


def test_build_settings_validates_numbers():
    for kw, opt in [({"rate": 0}, "--peer-rate"), ({"burst": 0.5}, "--peer-burst"), ({"max_age": 0}, "--peer-max-age"),
                    ({"dns_interval": -1}, "--peers-dns-interval"), ({"fanout": "mesh"}, "--fanout")]:
        with pytest.raises(PeerConfigError, match=opt):
            build_settings(**kw)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--fanout", "mesh"], "--fanout"),
        (["--peer-rate", "0"], "--peer-rate"),
        (["--peer-max-age", "x"], "--peer-max-age"),
        (["--peer", "198.51.100.18:0"], "--peer"),
        (["--peers-dns", "198.51.100.18"], "--peers-dns"),
        (["--peer-listen", "bogus:1"], "--peer-listen"),
    ],
)
def test_parser_rejects_bad_values_naming_the_flag(capsys, argv, flag):
    with pytest.raises(SystemExit) as exc:
        args(*argv)
    assert exc.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_main_reports_peer_config_errors_before_touching_sockets(capsys, tmp_path):
    loose = tmp_path / "loose.key"
    loose.write_text(f"1:{KEY_HEX}\n")
    os.chmod(loose, 0o644)
    rc = main(["run", "-i", "lo", "--fanout", "peers", "--peer", "198.51.100.18", "--peer-key-file", str(loose)])
    assert rc == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "--peer-key-file" in err and "0644" in err and KEY_HEX not in err


# -- the service, in process ----------------------------------------------------------------------------
class FakeEmitter:
    def __init__(self, fail: dict | None = None):
        self.sent: list[tuple[str, int, bytes]] = []
        self.fail = fail or {}

    def send(self, datagram, address, port):
        self.sent.append((address, port, datagram))
        return self.fail.get(address, 0)

    def close(self):
        pass


class FakeInjector:
    def __init__(self):
        self.injected: list[tuple[bytes, int, str]] = []

    def inject(self, packet, family, dst):
        self.injected.append((packet, family, dst))
        return 0

    def close(self):
        pass


def service(key_file, peers=(), *, listen=(), fanout="peers", dry_run=False, out=None, rate=100.0, burst=100.0):
    settings = PeerSettings(fanout=fanout, peers=tuple(peers), listen=listen, key_file=key_file, rate=rate, burst=burst)
    wall = [1_700_000_000.0]
    svc = PeerService(settings, lambda: POLICY, dry_run=dry_run, out=out or io.StringIO(), json_output=True,
                      clock=lambda: 0.0, wall=lambda: wall[0], own_addresses=frozenset)
    return svc


def prime(svc, key_file, peers):
    from pmtud_relay.peers.inbox import InboxConfig, PeerInbox
    from pmtud_relay.peers.keys import load_keyring
    from pmtud_relay.peers.wire import PeerDecoder

    svc.keyring = load_keyring(key_file)
    svc.decoder = PeerDecoder(svc.keyring)
    svc.inbox = PeerInbox(svc.decoder, InboxConfig())
    svc.table.update(peers, 0.0)


def test_fanout_targets_serving_peers_and_errors_do_not_stop_the_others(key_file):
    svc = service(key_file)
    peers = [Peer("198.51.100.18"), Peer("198.51.100.34", prefixes=VipSet(["192.0.2.200"])),
             Peer("198.51.100.50"), Peer("2001:db8:5:4::2", 2200)]
    prime(svc, key_file, peers)
    svc.emitter = FakeEmitter(fail={"198.51.100.18": errno.ENETUNREACH})
    ptb = parse_frame(F.ptb_v4())
    svc.fanout(ptb, 0.0)
    sent_to = [(a, p) for a, p, _ in svc.emitter.sent]
    assert sent_to == [("198.51.100.18", 2106), ("198.51.100.50", 2106), ("2001:db8:5:4::2", 2200)]
    assert len({d for _, _, d in svc.emitter.sent}) == 1  # one datagram, signed once
    assert svc.stats()["peer_tx"] == 3 and svc.stats()["peer_tx_errors"] == 1
    assert svc.tx_errors == {"ENETUNREACH": 1}


def test_fanout_rate_limits_per_peer(key_file):
    svc = service(key_file, rate=1.0, burst=2)
    prime(svc, key_file, [Peer("198.51.100.18")])
    svc.emitter = FakeEmitter()
    for _ in range(5):
        svc.fanout(parse_frame(F.ptb_v4()), 0.0)
    assert len(svc.emitter.sent) == 2 and svc.stats()["peer_tx_limited"] == 3


def test_received_ptb_is_injected_and_never_relayed_again(key_file):
    """Loop freedom, structurally: the receive path injects and never reaches the fan-out."""
    svc = service(key_file, listen=(("127.0.0.1", 0),), fanout="both")
    prime(svc, key_file, [Peer("198.51.100.18"), Peer("198.51.100.34")])
    svc.emitter = FakeEmitter()
    svc.injector = FakeInjector()
    calls = []
    svc.fanout = lambda *a: calls.append(a)  # any call would be a relay loop
    pkt = F.ptb_v6()[14:]
    data = encode(pkt, Keyring([(1, bytes.fromhex(KEY_HEX))]), 1_700_000_000.0, b"\x01" * 12)
    d = svc.handle_datagram(data, "198.51.100.18", 40000, 0.0, 1_700_000_000.0, POLICY)
    assert d.inject
    assert svc.injector.injected == [(pkt, 6, F.VIP6)]
    assert calls == [] and svc.emitter.sent == []
    # the same datagram again is a replay: counted, not injected
    d = svc.handle_datagram(data, "198.51.100.18", 40000, 0.0, 1_700_000_000.0, POLICY)
    assert d.reason is PeerReason.REPLAY and len(svc.injector.injected) == 1
    assert svc.stats()["peer_rx_replay"] == 1 and svc.stats()["peer_injected"] == 1


def test_dry_run_reports_and_injects_nothing(key_file):
    out = io.StringIO()
    svc = service(key_file, listen=(("127.0.0.1", 0),), dry_run=True, out=out)
    prime(svc, key_file, [Peer("198.51.100.18")])
    ptb = parse_frame(F.ptb_v4())
    svc.fanout(ptb, 0.0)
    data = encode(F.ptb_v4()[14:], Keyring([(1, bytes.fromhex(KEY_HEX))]), 1_700_000_000.0, b"\x02" * 12)
    svc.handle_datagram(data, "198.51.100.18", 40000, 0.0, 1_700_000_000.0, POLICY)
    svc.handle_datagram(b"junk" * 20, "198.51.100.99", 40000, 0.0, 1_700_000_000.0, POLICY)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(rec["verdict"], rec["reason"]) for rec in lines] == [("send", "relayed"), ("inject", "accepted"),
                                                            ("drop", "bad_magic")]
    assert lines[0]["peers"] == "198.51.100.18:2106" and lines[1]["peer"] == "198.51.100.18:40000"
    assert lines[1]["inner_src"] == F.VIP4 and lines[1]["key_id"] == 1
    assert svc.emitter is None and svc.injector is None


def test_service_over_real_loopback_udp(key_file):
    """A sending and a receiving service in one event loop, talking over 127.0.0.1."""
    async def scenario():
        out = io.StringIO()
        rx = service(key_file, listen=(("127.0.0.1", 0),), fanout="l2", dry_run=True, out=out)
        rx.open()
        port = rx.listener.socks[0].getsockname()[1]
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
        closed.close()  # nobody listens here: ICMP port unreachable, never noticed by the sender
        tx = service(key_file, peers=(PeerSpec("127.0.0.1", dead_port), PeerSpec("127.0.0.1", port)))
        tx.open()
        try:
            await rx.start()
            await tx.start()
            assert {str(p) for p in tx.table.peers} == {f"127.0.0.1:{dead_port}", f"127.0.0.1:{port}"}
            t0 = time.perf_counter()
            for dport in range(40000, 40005):
                tx.fanout(parse_frame(F.ptb_v4(dport=dport)), 0.0)
            elapsed = time.perf_counter() - t0
            deadline = time.monotonic() + 3
            while out.getvalue().count("\n") < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            await tx.stop()
            await rx.stop()
            tx.close()
            rx.close()
        return out.getvalue(), elapsed, tx.stats(), rx.stats()

    text, elapsed, txs, rxs = asyncio.run(scenario())
    lines = [json.loads(line) for line in text.splitlines()]
    assert [rec["verdict"] for rec in lines] == ["inject"] * 5, lines
    assert sorted(rec["dport"] for rec in lines) == list(range(40000, 40005))
    assert txs["peer_tx"] == 10 and elapsed < 0.5
    assert rxs["peer_rx_accepted"] == 5


def test_open_reports_a_busy_port(key_file):
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        svc = service(key_file, listen=(("127.0.0.1", busy.getsockname()[1]),), fanout="l2", dry_run=True)
        with pytest.raises(peering.PeerError, match="--peer-listen 127.0.0.1:.*in use"):
            svc.open()
    finally:
        busy.close()


def test_key_rotation_is_picked_up_by_refresh(key_file):
    async def scenario():
        svc = service(key_file, listen=(("127.0.0.1", 0),), fanout="l2", dry_run=True)
        svc.open()
        try:
            await svc.refresh()
            assert svc.keyring.ids == (1,)
            tmp = key_file + ".new"
            with open(tmp, "w") as f:
                f.write(f"2:{'6b' * 32}\n1:{KEY_HEX}\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, key_file)
            await svc.refresh()
            assert svc.keyring.ids == (2, 1) and svc.decoder.keyring.send_id == 2
            os.chmod(key_file, 0o644)  # a broken change keeps the running keys
            os.utime(key_file, ns=(5, 5))
            await svc.refresh()
            assert svc.keyring.ids == (2, 1) and svc.key_reloads == 1
        finally:
            svc.close()

    asyncio.run(scenario())


def test_prometheus_collector_exports_closed_label_sets(key_file):
    from prometheus_client import CollectorRegistry, generate_latest

    from pmtud_relay.peers.metrics import RX_REASONS, PeerCollector

    svc = service(key_file, listen=(("127.0.0.1", 0),), fanout="both")
    prime(svc, key_file, [Peer("198.51.100.18"), Peer("198.51.100.34")])
    svc.emitter = FakeEmitter(fail={"198.51.100.34": errno.EHOSTUNREACH})
    svc.injector = FakeInjector()
    svc.fanout(parse_frame(F.ptb_v4()), 0.0)
    data = encode(F.ptb_v4()[14:], Keyring([(1, bytes.fromhex(KEY_HEX))]), 1_700_000_000.0, b"\x03" * 12)
    svc.handle_datagram(data, "198.51.100.18", 40000, 0.0, 1_700_000_000.0, POLICY)
    svc.handle_datagram(data, "198.51.100.18", 40000, 0.0, 1_700_000_000.0, POLICY)
    bad = encode(F.ptb_v4(outer_dst="192.0.2.99", src="192.0.2.99")[14:], Keyring([(1, bytes.fromhex(KEY_HEX))]),
                 1_700_000_000.0, b"\x04" * 12)
    svc.handle_datagram(bad, "198.51.100.18", 40000, 0.0, 1_700_000_000.0, POLICY)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PeerCollector(lambda: svc))
    text = generate_latest(registry).decode()
    assert "pmtud_relay_peers 2.0" in text
    assert "pmtud_relay_peer_datagrams_sent_total 2.0" in text
    assert 'pmtud_relay_peer_send_errors_total{errno="EHOSTUNREACH"} 1.0' in text
    assert 'pmtud_relay_peer_datagrams_received_total{reason="accepted"} 1.0' in text
    assert 'pmtud_relay_peer_datagrams_received_total{reason="replay"} 1.0' in text
    assert 'pmtud_relay_peer_datagrams_received_total{reason="ptb_not_vip"} 1.0' in text
    assert 'pmtud_relay_peer_datagrams_received_total{reason="bad_mac"} 0.0' in text  # exported before it happens
    assert text.count("pmtud_relay_peer_datagrams_received_total{") == len(RX_REASONS)
    assert "pmtud_relay_peer_injected_total 1.0" in text
    empty = CollectorRegistry(auto_describe=False)
    empty.register(PeerCollector(lambda: None))
    assert "pmtud_relay_peer" not in generate_latest(empty).decode()


# -- delivery acknowledgements (core/peerack.py) over real loopback UDP -----------------------------
class FakeConfirmer:
    """Stands in for confirm.service.Confirmer (the owner lookup is tested on real kernels in
    tests/test_e2e_peers.py): answers every submit with ``verdict``, later, on the loop."""

    def __init__(self, verdict):
        self.verdict = verdict
        self.submitted = []

    def submit(self, packet, origin, now, on_verdict=None):
        self.submitted.append((packet, origin))
        asyncio.get_running_loop().call_soon(on_verdict, self.verdict, 0.002)


def ack_pair(key_file, verdict, clock):
    """A sender (tx) and a receiver (rx, a fake injector and confirmer) over 127.0.0.1."""
    rx_settings = PeerSettings(fanout="l2", listen=(("127.0.0.1", 0),), key_file=key_file, rate=100.0, burst=100.0)
    rx = PeerService(rx_settings, lambda: POLICY, clock=lambda: clock[0], own_addresses=frozenset,
                     confirmer=FakeConfirmer(verdict))
    rx.open()
    rx.injector.close()
    rx.injector = FakeInjector()
    port = rx.listener.socks[0].getsockname()[1]
    tx_settings = PeerSettings(fanout="peers", peers=(PeerSpec("127.0.0.1", port),), key_file=key_file,
                               rate=100.0, burst=100.0)
    tx = PeerService(tx_settings, lambda: POLICY, clock=lambda: clock[0], own_addresses=frozenset)
    tx.open()
    return tx, rx


async def _wait(cond, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_owner_acks_once_and_sender_counts_delivered(key_file):
    from pmtud_relay.confirm.verdict import Origin, OwnerVerdict
    from pmtud_relay.peers.ack import AckVerdict

    async def scenario():
        clock = [10.0]
        tx, rx = ack_pair(key_file, OwnerVerdict.APPLIED, clock)
        try:
            await rx.start()
            await tx.start()
            for dport in (40000, 40001):
                tx.fanout(parse_frame(F.ptb_v4(dport=dport)), clock[0])
            await _wait(lambda: tx.ack_tracker.acks[AckVerdict.APPLIED] >= 2)
            await asyncio.sleep(0.05)  # anything more would arrive now
        finally:
            await tx.stop()
            await rx.stop()
            tx.close()
            rx.close()
        return tx, rx

    tx, rx = asyncio.run(scenario())
    assert [o for _, o in rx.confirmer.submitted] == [Origin.PEER, Origin.PEER]
    assert rx.acks_sent == {"applied": 2} and rx.ack_gate.counts["sent"] == 2
    assert tx.ack_tracker.acks == {AckVerdict.APPLIED: 2, AckVerdict.NOT_APPLIED: 0}
    assert tx.ack_tracker.fanouts == {"delivered": 2, "not_delivered": 0, "evicted": 0}
    assert sum(tx.ack_tracker.drops.values()) == 0
    stats = tx.stats()
    assert stats["peer_acked"] == 2 and stats["peer_acks_applied"] == 2 and stats["peer_unacked"] == 0
    assert rx.stats()["peer_acks_sent"] == 2
    tx_text, rx_text = metrics_text(tx), metrics_text(rx)
    assert 'pmtud_relay_peer_acks_total{result="applied"} 2.0' in tx_text
    assert 'pmtud_relay_peer_acks_total{result="not_applied"} 0.0' in tx_text
    assert 'pmtud_relay_peer_fanouts_total{result="delivered"} 2.0' in tx_text
    assert 'pmtud_relay_peer_ack_drops_total{reason="unsolicited"} 0.0' in tx_text
    assert 'pmtud_relay_peer_acks_sent_total{result="applied"} 2.0' in rx_text
    assert 'pmtud_relay_peer_acks_not_sent_total{reason="rate_limited"} 0.0' in rx_text


def metrics_text(svc) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    from pmtud_relay.peers.metrics import PeerCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(PeerCollector(lambda: svc))
    return generate_latest(registry).decode()


@pytest.mark.parametrize("verdict", ["ORPHAN", "UNKNOWN"])
def test_no_ack_without_an_owner_and_the_fanout_expires_undelivered(key_file, verdict):
    from pmtud_relay.confirm.verdict import OwnerVerdict

    async def scenario():
        clock = [10.0]
        tx, rx = ack_pair(key_file, OwnerVerdict[verdict], clock)
        try:
            await rx.start()
            await tx.start()
            tx.fanout(parse_frame(F.ptb_v4()), clock[0])
            await _wait(lambda: rx.confirmer.submitted)
            await asyncio.sleep(0.1)
            before = dict(tx.ack_tracker.fanouts)
            clock[0] += peering.ACK_EXPIRY
            tx.expire_acks(clock[0])
            injected = list(rx.injector.injected)
        finally:
            await tx.stop()
            await rx.stop()
            tx.close()
            rx.close()
        return tx, rx, before, injected

    tx, rx, before, injected = asyncio.run(scenario())
    assert len(rx.confirmer.submitted) == 1 and len(injected) == 1
    assert not rx.acks_sent and rx.ack_gate.counts["sent"] == 0
    assert before == {"delivered": 0, "not_delivered": 0, "evicted": 0}
    assert tx.ack_tracker.fanouts == {"delivered": 0, "not_delivered": 1, "evicted": 0}
    assert tx.stats()["peer_unacked"] == 1


def test_acks_off_sends_and_reads_none(key_file):
    settings = PeerSettings(fanout="peers", peers=(PeerSpec("127.0.0.1", 9),), listen=(("127.0.0.1", 0),),
                            key_file=key_file, acks=False)
    svc = PeerService(settings, lambda: POLICY, own_addresses=frozenset)
    svc.open()
    try:
        assert svc.ack_tracker is None and svc.ack_gate is None and svc._ack_socks == []
    finally:
        svc.close()
    assert peer_settings("--fanout", "peers", "--peer", "192.0.2.1", "--peer-key-file", key_file,
                         "--no-peer-acks").acks is False
    assert peer_settings("--fanout", "peers", "--peer", "192.0.2.1", "--peer-key-file", key_file,
                         "--peer-ack-rate", "5").ack_rate == 5.0


@pytest.mark.parametrize("bind", ["", "0.0.0.0"], ids=["dual-stack", "ipv4"])
def test_listener_reports_the_local_address_and_replies_from_it(bind):
    """drain_from/reply (acks): the local address a datagram was sent to, and a reply from it."""
    from pmtud_relay.peers.receiver import PeerListener

    listener = PeerListener([(bind, 0)])
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock = listener.socks[0]
        port = sock.getsockname()[1]
        client.bind(("127.0.0.1", 0))
        client.settimeout(2)
        client.sendto(b"PMTR hello", ("127.0.0.2", port))  # any 127/8 address is local
        deadline = time.monotonic() + 2
        batch = []
        while not batch and time.monotonic() < deadline:
            batch = PeerListener.drain_from(sock)
        [(data, host, cport, local)] = batch
        assert (data, host, cport) == (b"PMTR hello", "127.0.0.1", client.getsockname()[1])
        assert local is not None and local[0][-4:] == bytes([127, 0, 0, 2])
        assert PeerListener.reply(sock, b"ack", host, cport, local) == 0
        reply, src = client.recvfrom(100)
        assert reply == b"ack" and src == ("127.0.0.2", port)  # not 127.0.0.1, the route's choice
    finally:
        client.close()
        listener.close()


def test_receiver_dedup_follows_dedup_window(key_file):
    """The same PTB from two peers 2 s apart: injected twice with a 1 s dedup window (the
    default), once with dedup_window = 5 — the setting reaches the peer inbox."""
    keyring = Keyring([(1, bytes.fromhex(KEY_HEX))])
    pkt = F.ptb_v4()[14:]
    first = encode(pkt, keyring, 1_700_000_000.0, b"\x03" * 12)
    second = encode(pkt, keyring, 1_700_000_002.0, b"\x04" * 12)  # another peer's copy: new nonce

    def reasons(*flags):
        settings = peer_settings("--peer-listen", "127.0.0.1:2106", "--peer-key-file", key_file, *flags)
        settings = dataclasses.replace(settings, listen=(("127.0.0.1", 0),))  # any free port
        svc = PeerService(settings, lambda: POLICY, dry_run=True, out=io.StringIO(),
                          clock=lambda: 0.0, wall=lambda: 1_700_000_000.0, own_addresses=frozenset)
        svc.open()
        try:
            assert svc.inbox.config.dedup_window == settings.dedup_window
            return [svc.handle_datagram(data, src, 40000, now, 1_700_000_000.0 + now, POLICY).reason.value
                    for data, src, now in ((first, "198.51.100.18", 0.0), (second, "198.51.100.34", 2.0))]
        finally:
            svc.close()

    assert reasons() == ["accepted", "accepted"]
    assert reasons("--dedup-window", "5", "--dedup-capacity", "16") == ["accepted", "duplicate"]
    assert peer_settings("--peer-listen", "127.0.0.1:2106", "--peer-key-file", key_file,
                         "--dedup-capacity", "16").dedup_capacity == 16


def test_reload_carries_a_new_dedup_window_to_the_peer_inbox(key_file, tmp_path):
    """SIGHUP with a new dedup_window/dedup_capacity: the relay's dedup and the peer receiver's
    both follow it (the receiver is the same PTB-level dedup, for PTBs from peers)."""
    from pmtud_relay.daemon import RelayDaemon

    keyring = Keyring([(1, bytes.fromhex(KEY_HEX))])
    pkt = F.ptb_v4()[14:]
    first = encode(pkt, keyring, 1_700_000_000.0, b"\x05" * 12)
    second = encode(pkt, keyring, 1_700_000_002.0, b"\x06" * 12)  # another peer's copy, 2 s later
    path = tmp_path / "relay.toml"
    path.write_text('vips = ["192.0.2.10"]\n')
    argv = ["--config", str(path), "--peer-listen", "127.0.0.1:2106",
            "--peer-key-file", key_file]
    loaded = cfg.load(args(*argv), environ={}, use_default_path=False)
    settings = cfg.daemon_settings(loaded.settings, ("lo",), dry_run=True)
    d = RelayDaemon(settings, out=io.StringIO(), clock=lambda: 0.0)
    peers = dataclasses.replace(settings.peers, listen=(("127.0.0.1", 0),))
    d.peering = svc = PeerService(peers, lambda: POLICY, dry_run=True, out=io.StringIO(), clock=lambda: 0.0,
                                  wall=lambda: 1_700_000_000.0, own_addresses=frozenset)
    svc.open()
    try:
        d.config = loaded.settings
        path.write_text('vips = ["192.0.2.10"]\ndedup_window = 5\ndedup_capacity = 16\n')
        d.reloader = lambda: cfg.reload(args(*argv), {})
        assert d.reload()
        assert d.relay.dedup.window == 5.0
        assert (svc.inbox.config.dedup_window, svc.inbox.config.dedup_capacity) == (5.0, 16)
        got = [svc.handle_datagram(data, src, 40000, now, 1_700_000_000.0 + now, POLICY).reason.value
               for data, src, now in ((first, "198.51.100.18", 0.0), (second, "198.51.100.34", 2.0))]
        assert got == ["accepted", "duplicate"]
    finally:
        svc.close()

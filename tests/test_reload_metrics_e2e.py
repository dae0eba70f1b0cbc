"""The daemon end to end on ``lo`` of a network namespace the test creates: config file,
/metrics, /healthz, /readyz, SIGHUP reload (applied, refused when invalid, refused when an
interface cannot be opened), clean stop.

The daemon is started as ``ip netns exec NS python -m pmtud_relay run --config FILE`` (cli.py
loads the file through pmtud_relay.config; daemon.py serves pmtud_relay.metrics and reloads on
SIGHUP); the test injects PTBs and scrapes /metrics from a thread inside that namespace
(``tests.support.netns.in_ns``), so nothing is sent or listened on in the host's namespace.
Needs root (namespaces, AF_PACKET capture and injection).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from pmtud_relay import cli
from tests.support.metrics import http_get, sample, wait
from tests.support.netns import NetNS, in_ns, terminate

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_NET_RAW) to capture and inject on lo"),
]

VIP = "192.0.2.10"


PORT = 9477  # the namespace is the test's own: no other listener there


@pytest.fixture
def netns():
    with NetNS() as ns:
        yield ns


@pytest.mark.timeout(90)
def test_metrics_health_and_sighup_reload(tmp_path, netns):
    from tests.support import frames as F

    port = PORT
    base = f"http://127.0.0.1:{port}"

    def get(url: str) -> tuple[int, str]:
        return in_ns(netns.name, lambda: http_get(url))

    def _ok(url: str) -> bool:
        try:
            return get(url)[0] == 200
        except OSError:
            return False

    def inject(frames: list[bytes]) -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
            sock.bind(("lo", 0))
            for frame in frames:
                sock.send(frame)

    conf = tmp_path / "config.toml"
    conf.write_text(f'interfaces = ["lo"]\nvips = ["{VIP}"]\nmetrics_address = "127.0.0.1:{port}"\n')
    stderr = open(tmp_path / "stderr", "w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMTUD_RELAY_")}
    env["PMTUD_RELAY_LOG_LEVEL"] = "debug"
    proc = subprocess.Popen(["ip", "netns", "exec", netns.name, sys.executable, "-m", "pmtud_relay", "run",
                             "--config", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=tmp_path)
    log = lambda: (tmp_path / "stderr").read_text()  # noqa: E731
    try:
        wait(lambda: proc.poll() is not None or _ok(base + "/readyz"), what="/readyz 200:\n" + log())
        assert proc.poll() is None, log()
        assert get(base + "/healthz")[0] == 200

        in_ns(netns.name, lambda: inject([F.ptb_v4(dst_mac="00:00:00:00:00:00", dport=51000 + i) for i in range(3)]))
        metric = lambda name, **labels: sample(get(base + "/metrics")[1], name, **labels)  # noqa: E731
        wait(lambda: metric("pmtud_relay_ptb_relayed_total", interface="lo", family="ipv4") == 3,
             what="3 relayed PTBs in /metrics")
        assert metric("pmtud_relay_vips", family="ipv4") == 1
        assert metric("pmtud_relay_ready") == 1

        # a valid change is applied live
        conf.write_text(f'interfaces = ["lo"]\nvips = ["{VIP}", "192.0.2.11"]\nsource_rate = 2\n'
                        f'metrics_address = "127.0.0.1:{port}"\n')
        proc.send_signal(signal.SIGHUP)
        wait(lambda: metric("pmtud_relay_config_reloads_total", result="success") == 1, what="reload success")
        assert metric("pmtud_relay_vips", family="ipv4") == 2

        # an invalid file is refused; the daemon keeps running with the old configuration
        conf.write_text("source_rate = -1\n")
        proc.send_signal(signal.SIGHUP)
        wait(lambda: metric("pmtud_relay_config_reloads_total", result="failure") == 1, what="reload failure")
        assert f"{conf}: source_rate: must be > 0, got -1" in log()
        assert metric("pmtud_relay_vips", family="ipv4") == 2 and proc.poll() is None

        # an interface that does not exist (yet) is waited for, as at start: applied, not ready
        conf.write_text(f'interfaces = ["lo", "pmr-nope0"]\nvips = ["{VIP}"]\nmetrics_address = "127.0.0.1:{port}"\n')
        proc.send_signal(signal.SIGHUP)
        wait(lambda: metric("pmtud_relay_config_reloads_total", result="success") == 2, what="second success")
        assert metric("pmtud_relay_vips", family="ipv4") == 1
        assert metric("pmtud_relay_interfaces_waiting") == 1 and metric("pmtud_relay_ready") == 0
        assert get(base + "/readyz")[0] == 503
        assert "event=interfaces_waiting interfaces=pmr-nope0" in log() and proc.poll() is None
    finally:
        rc = terminate(proc, 15)  # None: hung on SIGTERM, killed; fails below (unless the body already failed)
        stderr.close()
    assert rc == 0, f"exit {rc} (None: did not stop within 15 s of SIGTERM, killed)\n" + log()
    assert "Traceback" not in log(), log()


@pytest.mark.timeout(60)
def test_port_in_use_is_one_sentence_naming_metrics_address(tmp_path, netns):
    holder = in_ns(netns.name, lambda: socket.create_server(("127.0.0.1", 0)))  # stays in the namespace
    port = holder.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMTUD_RELAY_")}
    env.update(PMTUD_RELAY_CONFIG="", PMTUD_RELAY_METRICS_ADDRESS=f"127.0.0.1:{port}")
    try:
        proc = subprocess.run(["ip", "netns", "exec", netns.name, sys.executable, "-m", "pmtud_relay", "run",
                               "-i", "lo", "--vip", VIP], capture_output=True, text=True, env=env, timeout=30)
    finally:
        holder.close()
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pmtud-relay:")]
    assert lines == [f"pmtud-relay: metrics_address 127.0.0.1:{port}: cannot listen: address already in use "
                     "(another process listens there; choose another metrics_address, or \"\" to disable the listener)"]


def test_config_check_subcommand(tmp_path, capsys, monkeypatch):
    for k in list(os.environ):
        if k.startswith("PMTUD_RELAY_"):
            monkeypatch.delenv(k)
    good = tmp_path / "good.toml"
    good.write_text('ports = [443]\n')
    assert cli.main(["config", "check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "ports = [443]" in out and str(good) in out
    bad = tmp_path / "bad.toml"
    bad.write_text("source_rte = 1\n")
    assert cli.main(["config", "check", str(bad)]) == cli.EXIT_CONFIG
    assert f"{bad}: source_rte: unknown key (did you mean 'source_rate'?)" in capsys.readouterr().err

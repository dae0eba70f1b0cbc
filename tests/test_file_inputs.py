"""Every file the daemon reads (config, peer key file, peers files, resolv.conf, hosts) is opened
without blocking, refused unless it is a regular file, and read with a bound (pmtud_relay.safefile).

Attack (issue 18, item 3): a FIFO named by --config or --peer-key-file froze start-up with no
message (open() waits for a writer; SIGTERM was not handled yet); a config replaced by a FIFO and
a SIGHUP stopped relaying and /healthz (the reload reads the file on the event loop).

The start-up cases run the real command line in a subprocess; the reload case runs the daemon in
a network namespace of its own and checks it keeps relaying and answering /healthz.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from pmtud_relay import config as cfg
from pmtud_relay import safefile
from pmtud_relay.peers import dns as peerdns
from pmtud_relay.peers.keys import KeyFileError, load_keyring
from pmtud_relay.peers.sources import PeersFile

VIP = "192.0.2.10"
QUICK = 10.0  # seconds: a refusal takes well under one; a blocked open never ends


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PMTUD_RELAY_")}


def _fifo(tmp_path, name: str = "fifo") -> str:
    path = str(tmp_path / name)
    os.mkfifo(path, 0o600)
    return path


def _unblock(fifo: str) -> None:
    """Open ``fifo`` for writing and close it: a reader blocked in open()/read() returns (EOF)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while a reader waits
    except OSError:
        return
    os.close(fd)


def within(fn, fifo: str, seconds: float = QUICK):
    """Run ``fn`` in a thread; fail if it does not return within ``seconds`` (it is blocked on
    ``fifo``, which is then opened for writing so the thread ends and the test can fail)."""
    out: dict = {}

    def body() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            out["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        deadline = time.monotonic() + 5
        while t.is_alive() and time.monotonic() < deadline:
            _unblock(fifo)
            t.join(0.1)
        pytest.fail(f"blocked on the FIFO {fifo} for {seconds} s")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _run(argv: list[str], env: dict[str, str], fifo: str) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "pmtud_relay", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=QUICK)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        pytest.fail(f"pmtud-relay {' '.join(argv)}: still running after {QUICK} s (blocked on {fifo})")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -- start-up: the real command line ------------------------------------------------------------
@pytest.mark.timeout(60)
def test_config_fifo_at_start_exits_2_naming_the_flag(tmp_path):
    fifo = _fifo(tmp_path)
    r = _run(["run", "--config", fifo, "-i", "lo", "--vip", VIP], _clean_env(), fifo)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"pmtud-relay: --config: {fifo}: not a regular file (a FIFO)", r.stderr


@pytest.mark.timeout(60)
def test_config_fifo_from_environment_exits_2_naming_the_variable(tmp_path):
    fifo = _fifo(tmp_path)
    env = _clean_env()
    env["PMTUD_RELAY_CONFIG"] = fifo
    r = _run(["run", "-i", "lo", "--vip", VIP], env, fifo)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"pmtud-relay: PMTUD_RELAY_CONFIG: {fifo}: not a regular file (a FIFO)", r.stderr


@pytest.mark.timeout(60)
def test_peer_key_file_fifo_at_start_exits_2_naming_the_flag(tmp_path):
    fifo = _fifo(tmp_path, "peer.key")
    r = _run(["run", "--config", "", "-i", "lo", "--vip", VIP, "--fanout", "peers", "--peer", "192.0.2.20",
              "--peer-key-file", fifo], _clean_env(), fifo)
    assert r.returncode == 2, r.stderr
    assert "--peer-key-file" in r.stderr and f"{fifo}: not a regular file (a FIFO)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# -- each reader, in process ------------------------------------------------------------------
def test_config_reader_refuses_fifo_device_and_oversized_files(tmp_path):
    fifo = _fifo(tmp_path)
    with pytest.raises(cfg.ConfigError, match=r"not a regular file \(a FIFO\)$"):
        within(lambda: cfg.load(None, {}, path=fifo), fifo)
    with pytest.raises(cfg.ConfigError, match=r"/dev/zero: not a regular file \(a character device\)$"):
        cfg.load(None, {}, path="/dev/zero")
    big = tmp_path / "big.toml"
    big.write_bytes(b"# padding\n" * (cfg.MAX_CONFIG_FILE // 10 + 1))
    with pytest.raises(cfg.ConfigError, match=f"larger than {cfg.MAX_CONFIG_FILE} bytes"):
        cfg.load(None, {}, path=str(big))
    fine = tmp_path / "fine.toml"
    fine.write_text("source_rate = 5\n")
    assert cfg.load(None, {}, path=str(fine)).settings.source_rate == 5


def test_config_symlink_to_a_regular_file_is_followed(tmp_path):
    """Kubernetes mounts a ConfigMap as symlinks: they must keep working."""
    real = tmp_path / "real.toml"
    real.write_text("source_rate = 7\n")
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    assert cfg.load(None, {}, path=str(link)).settings.source_rate == 7
    fifo = _fifo(tmp_path)
    (tmp_path / "to-fifo.toml").symlink_to(fifo)
    with pytest.raises(cfg.ConfigError, match=r"not a regular file \(a FIFO\)"):
        within(lambda: cfg.load(None, {}, path=str(tmp_path / "to-fifo.toml")), fifo)


def test_key_file_fifo_is_refused_without_blocking(tmp_path):
    fifo = _fifo(tmp_path, "peer.key")
    with pytest.raises(KeyFileError, match=r"not a regular file \(a FIFO\)"):
        within(lambda: load_keyring(fifo), fifo)


def test_peers_file_fifo_keeps_the_list_and_reports(tmp_path):
    path = tmp_path / "peers"
    path.write_text("192.0.2.20\n")
    pf = PeersFile(str(path))
    assert pf.poll() and [s.host for s in pf.specs] == ["192.0.2.20"]
    path.unlink()
    os.mkfifo(path, 0o600)
    assert within(pf.poll, str(path)) is False
    assert [s.host for s in pf.specs] == ["192.0.2.20"]
    assert pf.error == f"{path}: not a regular file (a FIFO)"


def test_resolv_conf_and_hosts_fifo_read_as_empty(tmp_path):
    # A FIFO as resolv.conf: no nameserver, so the name goes to getaddrinfo (None), at once.
    fifo = _fifo(tmp_path)
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    client = peerdns.DnsClient(resolv_conf=fifo, hosts=str(hosts))
    assert within(lambda: client.resolve("peers.example.org"), fifo) is None
    assert within(lambda: peerdns.in_hosts_file("example.org", fifo), fifo) is False


def test_safefile_bound_and_kinds(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert safefile.read_regular(str(path), 100) == b"x" * 100
    with pytest.raises(safefile.FileRefused, match="larger than 99 bytes"):
        safefile.read_regular(str(path), 99)
    with pytest.raises(safefile.FileRefused, match=r"not a regular file \(a directory\)"):
        safefile.read_regular(str(tmp_path), 10)
    with pytest.raises(safefile.FileRefused, match="no such file"):
        safefile.read_regular(str(tmp_path / "nope"), 10)
    sock_path = str(tmp_path / "sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(sock_path)
        with pytest.raises(safefile.FileRefused, match=r"not a regular file \(a socket\)"):
            safefile.read_regular(sock_path, 10)


# -- reload: the running daemon in a namespace ----------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, AF_PACKET capture on lo)")
@pytest.mark.timeout(90)
def test_sighup_with_config_replaced_by_fifo_keeps_relaying(tmp_path):
    from tests.support import frames as F
    from tests.support.metrics import http_get, sample, wait
    from tests.support.netns import NetNS, in_ns, terminate

    port = 9478
    base = f"http://127.0.0.1:{port}"
    with NetNS() as netns:
        def get(url: str):
            return in_ns(netns.name, lambda: http_get(url))

        def ok(url: str) -> bool:
            try:
                return get(url)[0] == 200
            except OSError:
                return False

        def inject(first_port: int, count: int) -> None:
            def send() -> None:
                with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
                    sock.bind(("lo", 0))
                    for i in range(count):
                        sock.send(F.ptb_v4(dst_mac="00:00:00:00:00:00", dport=first_port + i))
            in_ns(netns.name, send)

        def relayed():
            return sample(get(base + "/metrics")[1], "pmtud_relay_ptb_relayed_total", interface="lo", family="ipv4")

        conf = tmp_path / "config.toml"
        conf.write_text(f'interfaces = ["lo"]\nvips = ["{VIP}"]\nmetrics_address = "127.0.0.1:{port}"\n')
        stderr = open(tmp_path / "stderr", "w")
        env = _clean_env()
        proc = subprocess.Popen(["ip", "netns", "exec", netns.name, sys.executable, "-m", "pmtud_relay", "run",
                                 "--config", str(conf)], stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        log = lambda: (tmp_path / "stderr").read_text()  # noqa: E731
        fifo = str(conf)
        try:
            wait(lambda: proc.poll() is not None or ok(base + "/readyz"), what="/readyz 200:\n" + log())
            assert proc.poll() is None, log()
            inject(51000, 2)
            wait(lambda: relayed() == 2, what="2 relayed PTBs")

            conf.unlink()
            os.mkfifo(fifo, 0o600)
            proc.send_signal(signal.SIGHUP)
            # Before the fix the loop is stuck in open(): /healthz times out from here on.
            wait(lambda: "config_reload_failed" in log(), timeout=10, what="the refused reload in the log:\n" + log())
            assert f"{fifo}: not a regular file (a FIFO)" in log()
            assert get(base + "/healthz")[0] == 200
            inject(52000, 3)
            wait(lambda: relayed() == 5, timeout=10, what="3 more relayed PTBs after the refused reload")
            assert sample(get(base + "/metrics")[1], "pmtud_relay_config_reloads_total", result="failure") == 1
        finally:
            _unblock(fifo)  # a daemon stuck in open() gets EOF and can see SIGTERM
            rc = terminate(proc, 15)
            stderr.close()
        assert rc == 0, f"exit {rc}\n" + log()
        assert "Traceback" not in log(), log()

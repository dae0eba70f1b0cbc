"""Every count and size setting has a documented maximum, and a VIP prefix that covers (nearly)
every address needs an explicit flag (issue 18, item 6).

Attack: ``--dedup-capacity``/``--source-capacity`` accepted 10^12 and TOML 99999999999999999999,
so the tables that bound memory under a flood had no bound; ``--vip 0.0.0.0/0`` made every
address a VIP, which turns off the quoted-source check. Each source (flag, environment, TOML)
must refuse them with a message naming the key.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from pmtud_relay import cli
from pmtud_relay import config as cfg

#: key → the documented maximum (docs/configuration.md, generated from the schema).
MAXIMA = {
    "dedup_capacity": 262144,
    "source_capacity": 262144,
    "shun_max_sources": 256,
    "known_source_capacity": 65536,
    "known_source_expiry": 86400,
    "source_burst": 1_000_000,
    "global_burst": 1_000_000,
    "peer_burst": 1_000_000,
    "source_rate": 1_000_000,
    "global_rate": 1_000_000,
    "peer_rate": 1_000_000,
    "shun_min_rate": 1_000_000,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pmtud-relay run", exit_on_error=False)
    cfg.add_arguments(p)
    return p


def error_of(fn, *a, **kw) -> str:
    with pytest.raises(cfg.ConfigError) as info:
        fn(*a, **kw)
    return str(info.value)


def _text(value) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@pytest.mark.parametrize("name", sorted(MAXIMA))
def test_schema_states_the_maximum(name):
    key = cfg.KEYS[name]
    assert key.maximum == MAXIMA[name]
    assert f"at most {_text(MAXIMA[name])}" in cfg.markdown_table().split(f"| `{name}` |", 1)[1].split("\n", 1)[0]


@pytest.mark.parametrize("name", sorted(MAXIMA))
def test_the_maximum_is_accepted_one_above_is_refused_everywhere(name, tmp_path, capsys):
    key = cfg.KEYS[name]
    top = MAXIMA[name]
    over = top + 1
    # at the maximum: fine from every source
    assert getattr(cfg.load(parser().parse_args([key.flag, _text(top)]), {}).settings, name) == top
    assert getattr(cfg.load(None, {key.env: _text(top)}).settings, name) == top
    good = tmp_path / "good.toml"
    good.write_text(f"{name} = {_text(top)}\n")
    assert getattr(cfg.load(None, {}, path=str(good)).settings, name) == top
    # one above: refused, naming the key
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["run", key.flag, _text(over)])
    assert info.value.code == 2
    limit = f"must be at most {_text(top)}, got {_text(over)}"
    assert f"argument {key.flag}: {limit}" in capsys.readouterr().err
    assert error_of(cfg.load, None, {key.env: _text(over)}) == f"{key.env}: {limit}"
    bad = tmp_path / "bad.toml"
    bad.write_text(f"{name} = {_text(over)}\n")
    assert error_of(cfg.load, None, {}, path=str(bad)) == f"{bad}: {name}: {limit}"


def test_the_reported_values(tmp_path):
    """The issue's figures: 10^12 on the command line, 99999999999999999999 in TOML."""
    assert error_of(cfg.load, None, {"PMTUD_RELAY_DEDUP_CAPACITY": "1000000000000"}) == (
        "PMTUD_RELAY_DEDUP_CAPACITY: must be at most 262144, got 1000000000000")
    path = tmp_path / "c.toml"
    path.write_text("source_capacity = 99999999999999999999\n")
    assert error_of(cfg.load, None, {}, path=str(path)) == (
        f"{path}: source_capacity: must be at most 262144, got 99999999999999999999")
    path.write_text("global_burst = 99999999999999999999\n")
    assert error_of(cfg.load, None, {}, path=str(path)) == (
        f"{path}: global_burst: must be at most 1000000, got 1e+20")


def test_run_with_a_capacity_of_10_to_the_12_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMTUD_RELAY_")}
    r = subprocess.run([sys.executable, "-m", "pmtud_relay", "run", "--config", "", "--source-capacity",
                        "1000000000000"], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 2
    assert "argument --source-capacity: must be at most 262144, got 1000000000000" in r.stderr


@pytest.mark.parametrize("value,reason", [
    ("0.51", "must be within 0..0.5, got 0.51"),
    ("-0.1", "must be within 0..0.5, got -0.1"),
    ("nan", "must be a finite number, got nan"),
    ("lots", "'lots' is not a number"),
])
def test_global_reserve_is_a_share_of_at_most_a_half(value, reason, tmp_path):
    assert error_of(cfg.load, None, {"PMTUD_RELAY_GLOBAL_RESERVE": value}) == f"PMTUD_RELAY_GLOBAL_RESERVE: {reason}"
    assert cfg.KEYS["global_reserve"].maximum == 0.5
    for ok in ("0", "0.5", "0.2"):
        settings = cfg.load(parser().parse_args(["--global-reserve", ok]), {}).settings
        assert settings.global_reserve == float(ok)
        assert cfg.relay_config(settings).global_reserve == float(ok)
    path = tmp_path / "c.toml"
    path.write_text("global_reserve = 0.75\n")
    assert error_of(cfg.load, None, {}, path=str(path)) == f"{path}: global_reserve: must be within 0..0.5, got 0.75"
    path.write_text("known_source_expiry = 0\n")
    assert error_of(cfg.load, None, {}, path=str(path)) == f"{path}: known_source_expiry: must be > 0, got 0"
    path.write_text("known_source_capacity = 0\n")
    assert error_of(cfg.load, None, {}, path=str(path)) == f"{path}: known_source_capacity: must be >= 1, got 0"


def test_shun_maximum_fits_the_kernel_filter():
    """At the maximum, whatever the mix of IPv4 and IPv6 sources (each sampled or dropped), the
    blocklist prefix and the PTB filter together stay within the kernel's 4 096 instructions
    (BPF_MAXINSNS) with room to spare, so the setting can never produce a filter the kernel refuses."""
    from pmtud_relay.capture import bpf
    from pmtud_relay.capture.afpacket import blocklist_prefix

    top = MAXIMA["shun_max_sources"]
    for n4 in range(0, top + 1, 16):
        sources = {bytes([198, 51, i // 256, i % 256]): 2 << (i % 12) for i in range(n4)}
        sources.update({bytes(14) + (i + 1).to_bytes(2, "big"): None for i in range(top - n4)})
        assert len(blocklist_prefix(sources) + bpf.ptb_filter()) <= 3 * 4096 // 4


# -- VIP prefixes that cover (nearly) everything -------------------------------------------------
WIDE = ["0.0.0.0/0", "::/0", "0.0.0.0/1", "128.0.0.0/7", "2000::/3", "2000::/15"]
NARROW = ["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/16", "2001:db8::/32", "192.0.2.10"]


@pytest.mark.parametrize("prefix", WIDE)
def test_wide_vip_prefix_is_refused_without_the_flag(prefix, tmp_path):
    msg = error_of(cfg.load, parser().parse_args(["--vip", prefix]), {})
    assert msg.startswith(f"--vip: {prefix} is shorter than /"), msg
    assert "--allow-any-vip" in msg
    msg = error_of(cfg.load, None, {"PMTUD_RELAY_VIPS": f"192.0.2.10,{prefix}"})
    assert msg.startswith(f"PMTUD_RELAY_VIPS: {prefix} is shorter than /"), msg
    path = tmp_path / "c.toml"
    path.write_text(f'vips = ["{prefix}"]\n')
    assert error_of(cfg.load, None, {}, path=str(path)).startswith(f"{path}: vips: {prefix} is shorter than /")


@pytest.mark.parametrize("prefix", WIDE)
def test_wide_vip_prefix_is_accepted_with_the_flag(prefix, tmp_path):
    s = cfg.load(parser().parse_args(["--vip", prefix, "--allow-any-vip"]), {}).settings
    assert s.allow_any_vip and cfg.wide_vips(s) == [prefix]
    path = tmp_path / "c.toml"
    path.write_text(f'vips = ["{prefix}"]\nallow_any_vip = true\n')
    assert cfg.wide_vips(cfg.load(None, {}, path=str(path)).settings) == [prefix]
    assert cfg.load(None, {"PMTUD_RELAY_VIPS": prefix, "PMTUD_RELAY_ALLOW_ANY_VIP": "yes"}).settings.vips


@pytest.mark.parametrize("prefix", NARROW)
def test_ordinary_vip_prefixes_need_no_flag(prefix):
    s = cfg.load(parser().parse_args(["--vip", prefix]), {}).settings
    assert cfg.wide_vips(s) == []


def test_reload_to_a_wide_vip_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('vips = ["192.0.2.10"]\n')
    args = parser().parse_args(["--config", str(path)])
    cfg.load(args, {})
    path.write_text('vips = ["0.0.0.0/0"]\n')
    assert error_of(cfg.reload, args, {}).startswith(f"{path}: vips: 0.0.0.0/0 is shorter than /8")


@pytest.mark.timeout(60)
def test_run_warns_at_start_when_a_wide_vip_is_allowed(tmp_path):
    """dry-run on lo with --vip ::/0 --allow-any-vip: it starts, and says so at warning level."""
    if os.geteuid() != 0:
        pytest.skip("needs CAP_NET_RAW for the capture on lo")
    import signal
    import time

    from tests.support.netns import NetNS, terminate

    env = {k: v for k, v in os.environ.items() if not k.startswith("PMTUD_RELAY_")}
    with NetNS() as ns:
        err = open(tmp_path / "stderr", "w")
        proc = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-m", "pmtud_relay", "dry-run",
                                 "--config", "", "-i", "lo", "--vip", "::/0", "--vip", "192.0.2.10",
                                 "--allow-any-vip"], stdout=subprocess.DEVNULL, stderr=err, env=env)
        log = lambda: (tmp_path / "stderr").read_text()  # noqa: E731
        try:
            deadline = time.monotonic() + 20
            while "event=ready" not in log() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "event=ready" in log(), log()
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = terminate(proc, 15)
            err.close()
    lines = [line for line in log().splitlines() if "event=vip_prefix_allows_any" in line]
    assert len(lines) == 1 and "level=warning" in lines[0] and "::/0" in lines[0], log()
    assert rc == 0, log()

"""Command-line options → RelayConfig, and clear errors that name the option at fault."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

import pytest

from pmtud_relay import cli, logs
from pmtud_relay import config as cfg
from pmtud_relay.cli import ConfigError, build_parser
from pmtud_relay.core.policy import Policy, VipSet
from pmtud_relay.core.relay import RelayConfig


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    """cli.main() configures the pmtud_relay logger (a writer thread on this test's stderr, no
    propagation): undo that, so later tests' caplog sees the daemon's records again."""
    log = logging.getLogger(logs.LOGGER_NAME)
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    logs.shutdown()
    log.handlers[:] = saved[0]
    log.setLevel(saved[1])
    log.propagate = saved[2]


def config_for(*argv: str, command: str = "run") -> tuple[RelayConfig, bool]:
    """The core's configuration from flags (and --config) only; (config, discover_vips)."""
    settings = cfg.load(build_parser().parse_args([command, *argv]), environ={}, use_default_path=False).settings
    return cfg.relay_config(settings), cfg.discover_vips(settings)


def parse_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", *argv])
    assert info.value.code == 2
    return capsys.readouterr().err


# -- defaults and mapping --------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "dry-run"])
def test_defaults_are_the_core_defaults(command):
    config, discover = config_for(command=command)
    assert config == RelayConfig()
    assert discover is True  # no --vip: service addresses are discovered


def test_every_option_maps_to_the_config():
    config, discover = config_for(
        "--vip", "192.0.2.0/24",
        "--vip", "2001:db8:2::10",
        "--floor-v4", "1000",
        "--floor-v6", "1400",
        "--protocol", "tcp",
        "--protocol", "17",
        "--port", "443",
        "--port", "8443",
        "--dedup-window", "0",
        "--dedup-capacity", "10",
        "--source-rate", "2.5",
        "--source-burst", "4",
        "--global-rate", "20",
        "--global-burst", "40",
        "--source-capacity", "99",
        "--v6-broadcast",
    )  # fmt: skip
    assert discover is False
    assert config == RelayConfig(
        policy=Policy(
            vips=VipSet(["192.0.2.0/24", "2001:db8:2::10/128"]),
            floor_v4=1000,
            floor_v6=1400,
            protocols=frozenset({6, 17}),
            ports=frozenset({443, 8443}),
        ),
        dedup_window=0.0,
        dedup_capacity=10,
        source_rate=2.5,
        source_burst=4.0,
        global_rate=20.0,
        global_burst=40.0,
        source_capacity=99,
        v6_broadcast=True,
    )


def test_vip_host_bits_are_tolerated():
    config, _ = config_for("--vip", "192.0.2.77/24")
    assert config.policy.vips.networks == (ipaddress.ip_network("192.0.2.0/24"),)


def test_interfaces_are_collected():
    args = build_parser().parse_args(["run", "-i", "eth0", "--interface", "eth1"])
    assert args.interfaces == ["eth0", "eth1"]
    assert build_parser().parse_args(["run"]).interfaces is cli.cfg.UNSET  # "not given": env/file/default apply


def test_dry_run_json_flag():
    assert build_parser().parse_args(["dry-run", "--json"]).json is True
    assert build_parser().parse_args(["dry-run"]).json is False


# -- argparse errors (exit status 2, option named on stderr) ---------------------------


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--port", "0"], "--port"),
        (["--port", "65536"], "--port"),
        (["--port", "https"], "--port"),
        (["--vip", "nonsense"], "--vip"),
        (["--vip", "192.0.2.0/33"], "--vip"),
        (["--dedup-window", "-1"], "--dedup-window"),
        (["--dedup-window", "soon"], "--dedup-window"),
        (["--dedup-capacity", "0"], "--dedup-capacity"),
        (["--source-rate", "0"], "--source-rate"),
        (["--source-rate", "-5"], "--source-rate"),
        (["--global-rate", "nan"], "--global-rate"),
        (["--source-burst", "0"], "--source-burst"),
        (["--source-capacity", "1.5"], "--source-capacity"),
        (["--floor-v4", "abc"], "--floor-v4"),
        (["--log-level", "loud"], "--log-level"),
        (["--vip-refresh", "0"], "--vip-refresh"),
        # range checks happen at parse time too (pmtud_relay.config schema)
        (["--floor-v4", "10"], "--floor-v4"),
        (["--floor-v4", "67"], "--floor-v4"),
        (["--floor-v4", "70000"], "--floor-v4"),
        (["--floor-v6", "1279"], "--floor-v6"),
        (["--floor-v6", "552"], "--floor-v6"),
        (["--protocol", "foo"], "--protocol"),
        (["--protocol", "300"], "--protocol"),
        (["--source-burst", "0.5"], "--source-burst"),
        (["--global-burst", "0.5"], "--global-burst"),
    ],
)
def test_bad_values_are_rejected_by_the_parser(capsys, argv, option):
    err = parse_error(capsys, *argv)
    assert f"argument {option}" in err
    assert argv[1] in err  # the offending value is quoted back


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([])
    assert info.value.code == 2
    assert "required" in capsys.readouterr().err


# -- ConfigError: from the environment or the config file (flags fail in argparse) -------


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PMTUD_RELAY_FLOOR_V4": "10"}, "PMTUD_RELAY_FLOOR_V4: must be within 68..65535, got 10"),
        ({"PMTUD_RELAY_PROTOCOLS": "tcp,foo"}, "PMTUD_RELAY_PROTOCOLS: unknown protocol 'foo'"),
        ({"PMTUD_RELAY_SOURCE_BURST": "0.5"}, "PMTUD_RELAY_SOURCE_BURST: must be >= 1, got 0.5"),
    ],
)
def test_bad_environment_raises_config_error_naming_the_variable(monkeypatch, capsys, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PMTUD_RELAY_CONFIG", "")
    assert cli.main(["run", "-i", "pmr-no-such-if0"]) == cli.EXIT_CONFIG
    assert message in capsys.readouterr().err


def test_floor_limits_are_accepted():
    config, _ = config_for("--floor-v4", "68", "--floor-v6", "1280")
    assert (config.policy.floor_v4, config.policy.floor_v6) == (68, 1280)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# -- main ------------------------------------------------------------------------------


def _can_open_packet_sockets() -> bool:
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except PermissionError:
        return False
    return True


@pytest.mark.timeout(30)
def test_main_with_a_missing_interface_and_no_link_events_exits_with_a_config_error(capsys, monkeypatch):
    # With link events a missing interface is waited for (tests/test_daemon_interfaces.py); without
    # them nothing would ever bind it, so it stays a configuration error.
    from pmtud_relay.netlink import linkwatch

    def no_rtnetlink():
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

    monkeypatch.setattr(linkwatch, "LinkWatcher", no_rtnetlink)
    code = cli.main(["run", "-i", "pmr-no-such-if0", "--config", "", "--metrics-address", ""])
    err = capsys.readouterr().err
    if _can_open_packet_sockets():
        # Root / CAP_NET_RAW: binding the capture socket fails with ENODEV.
        assert code == cli.EXIT_CONFIG == 2
        assert "--interface" in err and "pmr-no-such-if0" in err
        assert "no such interface" in err
    else:
        assert code == cli.EXIT_PRIVILEGE
        assert "CAP_NET_RAW" in err


def test_main_reports_config_errors_before_touching_sockets(capsys, monkeypatch):
    def fail(*_a, **_k):  # pragma: no cover - must not be reached
        raise AssertionError("opened a socket before validating options")

    monkeypatch.setattr(socket, "socket", fail)
    monkeypatch.setenv("PMTUD_RELAY_CONFIG", "")
    monkeypatch.setenv("PMTUD_RELAY_FLOOR_V4", "10")
    code = cli.main(["run", "-i", "pmr-no-such-if0"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_CONFIG
    assert "PMTUD_RELAY_FLOOR_V4" in err


def test_main_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--port", "0"])
    assert info.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_enodev_is_the_errno_for_a_missing_interface():
    # The CLI maps ENODEV/ENXIO to the --interface sentence; check the kernel agrees.
    if not _can_open_packet_sockets():
        pytest.skip("needs CAP_NET_RAW to open an AF_PACKET socket")
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        with pytest.raises(OSError) as info:
            sock.bind(("pmr-no-such-if0", 0))
        assert info.value.errno in (errno.ENODEV, errno.ENXIO)
    finally:
        sock.close()

"""The configuration schema: sources, precedence, errors, reload, printing and docs."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import pathlib

import pytest

from pmtud_relay import config as cfg
from pmtud_relay.core import dedup
from pmtud_relay.core import policy as pol
from pmtud_relay.core import ratelimit as rl
from pmtud_relay.core.relay import RelayConfig
from pmtud_relay.daemon import DaemonSettings

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pmtud-relay run", exit_on_error=False)
    cfg.add_arguments(p)
    return p


def load(argv=(), env=None, path=None, **kw):
    """Load with no default file (so a real /etc/pmtud-relay/config.toml never leaks in)."""
    return cfg.load(parser().parse_args(list(argv)), env or {}, path=path, use_default_path=False, **kw)


def write(tmp_path, text: str, name: str = "config.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def error_of(fn, *a, **kw) -> str:
    with pytest.raises(cfg.ConfigError) as info:
        fn(*a, **kw)
    return str(info.value)


# -- the schema itself -----------------------------------------------------------------------


def test_settings_has_exactly_the_schema_keys():
    assert [f.name for f in dataclasses.fields(cfg.Settings)] == [k.name for k in cfg.SCHEMA]
    assert len(cfg.KEYS) == len(cfg.SCHEMA)
    for key in cfg.SCHEMA:
        assert key.name == key.name.lower() and " " not in key.name
        assert key.help and key.group
        assert key.reload in ("live", "restart")


def test_required_keys_are_present():
    for name in ("interfaces", "vips", "floor_v4", "floor_v6", "protocols", "ports", "dedup_window",
                 "dedup_capacity", "source_rate", "source_burst", "global_rate", "global_burst",
                 "source_capacity", "v6_broadcast", "log_level", "log_format", "vip_refresh",
                 "summary_interval", "metrics_address", "capture", "nflog_group", "manage_rules",
                 "rules_backend"):
        assert name in cfg.KEYS, name


def test_defaults_come_from_the_core_modules():
    d = cfg.Settings()
    assert d.floor_v4 == pol.DEFAULT_FLOOR_V4 and d.floor_v6 == pol.DEFAULT_FLOOR_V6
    assert (d.dedup_window, d.dedup_capacity) == (dedup.DEFAULT_WINDOW, dedup.DEFAULT_CAPACITY)
    assert (d.source_rate, d.source_burst, d.global_rate, d.global_burst, d.source_capacity) == (
        rl.DEFAULT_SOURCE_RATE, rl.DEFAULT_SOURCE_BURST, rl.DEFAULT_GLOBAL_RATE,
        rl.DEFAULT_GLOBAL_BURST, rl.DEFAULT_SOURCE_CAPACITY)
    assert (d.global_reserve, d.known_source_capacity, d.known_source_expiry) == (
        rl.DEFAULT_RESERVE, rl.DEFAULT_KNOWN_CAPACITY, rl.DEFAULT_KNOWN_EXPIRY)
    defaults = DaemonSettings(interfaces=(), relay=RelayConfig())
    assert d.vip_refresh == defaults.vip_refresh and d.summary_interval == defaults.summary_interval
    assert d.metrics_address == "127.0.0.1:9781"
    assert cfg.relay_config(d) == RelayConfig()


def test_every_default_passes_its_own_validation():
    for key in cfg.SCHEMA:
        assert cfg.validate(key, key.default) == key.default


def test_settings_are_frozen():
    s = cfg.Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.source_rate = 1.0  # type: ignore[misc]


def test_env_names_and_flags_follow_the_rule():
    for key in cfg.SCHEMA:
        assert key.env == "PMTUD_RELAY_" + key.name.upper()
        assert key.flag == "--" + key.name.replace("_", "-")


# -- argparse --------------------------------------------------------------------------------


def test_argparse_defaults_are_the_unset_sentinel():
    args = parser().parse_args([])
    for key in cfg.SCHEMA:
        assert getattr(args, key.name) is cfg.UNSET
    assert args.config is cfg.UNSET


def test_flags_lists_bools_and_compatible_spellings():
    args = parser().parse_args(["-i", "eth0", "--interface", "eth1", "--interfaces", "eth2",
                                "--vip", "192.0.2.10", "--vips", "2001:db8::/64",
                                "--port", "443", "--ports", "80", "--protocol", "tcp",
                                "--v6-broadcast", "--source-rate", "7"])
    s = cfg.load(args, {}, use_default_path=False).settings
    assert s.interfaces == ("eth0", "eth1", "eth2")
    assert s.vips == (ipaddress.ip_network("192.0.2.10/32"), ipaddress.ip_network("2001:db8::/64"))
    assert s.ports == (443, 80) and s.protocols == ("tcp",)
    assert s.v6_broadcast is True and s.source_rate == 7.0
    assert load(["--v6-broadcast", "--no-v6-broadcast"]).settings.v6_broadcast is False


def flag_error(*argv: str) -> str:
    with pytest.raises(argparse.ArgumentError) as info:
        parser().parse_args(list(argv))
    return str(info.value)


def test_bad_flags_fail_at_parse_time_naming_the_flag():
    assert flag_error("--port", "x") == "argument --port/--ports: 'x' is not a port number"
    assert flag_error("--ports", "70000") == "argument --port/--ports: port must be within 1..65535, got 70000"
    assert flag_error("--source-rate", "0") == "argument --source-rate: must be > 0, got 0"
    assert flag_error("--source-rate", "-5") == "argument --source-rate: must be > 0, got -5"
    assert flag_error("--global-rate", "nan") == "argument --global-rate: must be a finite number, got nan"
    assert flag_error("--source-burst", "0.5") == "argument --source-burst: must be >= 1, got 0.5"
    assert flag_error("--source-capacity", "1.5") == "argument --source-capacity: '1.5' is not an integer"
    assert flag_error("--floor-v6", "1000") == "argument --floor-v6: must be within 1280..65535, got 1000"
    assert "must be one of debug, info, warning, error, got 'loud'" in flag_error("--log-level", "loud")
    assert "unknown protocol 'gre'" in flag_error("--protocol", "gre")
    assert "'192.0.2.0/33' is not an IP address or prefix" in flag_error("--vip", "192.0.2.0/33")
    assert "'a/b' is not an interface name" in flag_error("--interface", "a/b")
    assert "argument --metrics-address" in flag_error("--metrics-address", "localhost:80")


def test_flag_values_set_on_a_namespace_are_checked_by_load_too():
    args = parser().parse_args([])
    args.ports = ["x"]  # e.g. a namespace built by other code
    assert error_of(cfg.load, args, {}, use_default_path=False) == "--ports: 'x' is not a port number"


# -- environment -----------------------------------------------------------------------------


def test_env_values_lists_and_bools():
    env = {"PMTUD_RELAY_PORTS": "80, 443", "PMTUD_RELAY_INTERFACES": "eth0,eth1",
           "PMTUD_RELAY_V6_BROADCAST": "yes", "PMTUD_RELAY_SOURCE_RATE": "2.5",
           "PMTUD_RELAY_VIPS": "192.0.2.0/24", "PMTUD_RELAY_METRICS_ADDRESS": ""}
    loaded = load(env=env)
    s = loaded.settings
    assert s.ports == (80, 443) and s.interfaces == ("eth0", "eth1")
    assert s.v6_broadcast is True and s.source_rate == 2.5
    assert s.vips == (ipaddress.ip_network("192.0.2.0/24"),)
    assert s.metrics_address == ""
    assert loaded.sources["ports"] == "PMTUD_RELAY_PORTS"
    for text, value in [("true", True), ("1", True), ("on", True), ("False", False), ("0", False), ("no", False)]:
        env = {"PMTUD_RELAY_MANAGE_RULES": text, "PMTUD_RELAY_CAPTURE": "nflog"}
        assert load(env=env).settings.manage_rules is value
    assert load(env={"PMTUD_RELAY_PORTS": ""}).settings.ports == ()


def test_env_errors_name_the_variable():
    assert error_of(load, env={"PMTUD_RELAY_PORTS": "x"}) == "PMTUD_RELAY_PORTS: 'x' is not a port number"
    assert error_of(load, env={"PMTUD_RELAY_PORTS": "80,,443"}) == "PMTUD_RELAY_PORTS: empty list item"
    assert error_of(load, env={"PMTUD_RELAY_SOURCE_RATE": "-1"}) == "PMTUD_RELAY_SOURCE_RATE: must be > 0, got -1"
    assert "PMTUD_RELAY_V6_BROADCAST: 'maybe' is not a boolean" in error_of(
        load, env={"PMTUD_RELAY_V6_BROADCAST": "maybe"})
    msg = error_of(load, env={"PMTUD_RELAY_SOURCE_RTE": "1"})
    assert msg == "PMTUD_RELAY_SOURCE_RTE: unknown setting (did you mean 'PMTUD_RELAY_SOURCE_RATE'?)"
    assert error_of(load, env={"PMTUD_RELAY_BOGUS": "1"}) == "PMTUD_RELAY_BOGUS: unknown setting"


def test_unrelated_env_vars_are_ignored():
    assert load(env={"PMTUD_RELAYX": "1", "HOME": "/root", "PMTUD": "1"}).settings == cfg.Settings()


# -- file ------------------------------------------------------------------------------------


def test_file_values(tmp_path):
    path = write(tmp_path, """
interfaces = ["eth0"]
vips = ["192.0.2.10", "2001:db8::/64"]
protocols = ["tcp", 17]
ports = [443]
source_rate = 5          # an integer is fine for a number
dedup_window = 0.5
v6_broadcast = true
log_format = "json"
metrics_address = "[::1]:9781"
capture = "nflog"
nflog_group = 5
manage_rules = true
rules_backend = "nft"
""")
    loaded = load(path=path)
    s = loaded.settings
    assert s.interfaces == ("eth0",) and s.protocols == ("tcp", "17") and s.ports == (443,)
    assert s.source_rate == 5.0 and isinstance(s.source_rate, float)
    assert s.v6_broadcast and s.log_format == "json" and s.metrics_address == "[::1]:9781"
    assert (s.capture, s.nflog_group, s.manage_rules, s.rules_backend) == ("nflog", 5, True, "nft")
    assert loaded.path == path and loaded.sources["ports"] == path and loaded.sources["floor_v4"] == "default"
    rc = cfg.relay_config(s)
    assert rc.policy.protocols == frozenset({6, 17}) and rc.policy.ports == frozenset({443})
    assert len(rc.policy.vips) == 2 and rc.dedup_window == 0.5 and rc.v6_broadcast


@pytest.mark.parametrize(
    "text, message",
    [
        ("source_rate = -1", "config.toml: source_rate: must be > 0, got -1"),
        ("source_rte = 1", "config.toml: source_rte: unknown key (did you mean 'source_rate'?)"),
        ("source-rate = 1", "config.toml: source-rate: unknown key (did you mean 'source_rate'?)"),
        ("[relay]\nsource_rate = 1", "config.toml: relay: unknown key"),
        ("ports = 80", "config.toml: ports: expected an array, got an integer 80"),
        ("ports = [\"80\"]", "config.toml: ports: array items must be an integer, got a string '80'"),
        ("ports = [0]", "config.toml: ports: port must be within 1..65535, got 0"),
        ("floor_v4 = 1400.5", "config.toml: floor_v4: expected an integer, got a number 1400.5"),
        ("floor_v4 = true", "config.toml: floor_v4: expected an integer, got a boolean True"),
        ("dedup_window = \"1s\"", "config.toml: dedup_window: expected a number, got a string '1s'"),
        ("v6_broadcast = 1", "config.toml: v6_broadcast: expected a boolean (true or false), got an integer 1"),
        ("dedup_capacity = 0", "config.toml: dedup_capacity: must be >= 1, got 0"),
        ("source_rate = inf", "config.toml: source_rate: must be a finite number, got inf"),
        ("source_rate = nan", "config.toml: source_rate: must be a finite number, got nan"),
        ("capture = \"pcap\"", "config.toml: capture: must be one of afpacket, nflog, got 'pcap'"),
        ("nflog_group = 70000", "config.toml: nflog_group: must be within 0..65535, got 70000"),
        ("vips = [\"192.0.2.300\"]", "config.toml: vips: '192.0.2.300' is not an IP address or prefix"),
        ("metrics_address = \"9781\"", "config.toml: metrics_address: '9781' is not HOST:PORT"),
    ],
)
def test_file_errors_name_file_key_and_reason(tmp_path, text, message):
    path = write(tmp_path, text + "\n")
    got = error_of(load, path=path)
    assert got.startswith(str(tmp_path) + "/")
    assert got[len(str(tmp_path)) + 1:].startswith(message), got


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path, "source_rate = \n")
    msg = error_of(load, path=path)
    assert msg.startswith(f"{path}: invalid TOML: ") and "line 1" in msg


def test_default_path_is_read_only_if_it_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(cfg.sources, "DEFAULT_PATH", str(tmp_path / "absent.toml"))
    loaded = cfg.load(None, {})
    assert loaded.path is None and loaded.settings == cfg.Settings()
    present = write(tmp_path, "global_rate = 9\n")
    monkeypatch.setattr(cfg.sources, "DEFAULT_PATH", present)
    loaded = cfg.load(None, {})
    assert loaded.path == present and loaded.settings.global_rate == 9.0


def test_named_file_must_exist(tmp_path):
    missing = str(tmp_path / "nope.toml")
    assert error_of(cfg.load, parser().parse_args(["--config", missing]), {}) == f"--config: {missing}: no such file"
    assert error_of(cfg.load, None, {"PMTUD_RELAY_CONFIG": missing}) == f"PMTUD_RELAY_CONFIG: {missing}: no such file"
    assert error_of(cfg.load, None, {}, path=str(tmp_path)) == f"{tmp_path}: not a regular file (a directory)"


def test_empty_config_name_reads_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(cfg.sources, "DEFAULT_PATH", write(tmp_path, "global_rate = 9\n"))
    assert cfg.load(parser().parse_args(["--config", ""]), {}).path is None
    assert cfg.load(None, {"PMTUD_RELAY_CONFIG": ""}).settings.global_rate == rl.DEFAULT_GLOBAL_RATE


# -- precedence ------------------------------------------------------------------------------


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    path = write(tmp_path, "source_rate = 1\nglobal_rate = 2\nports = [1]\nv6_broadcast = true\ndedup_window = 3\n")
    env = {"PMTUD_RELAY_CONFIG": path, "PMTUD_RELAY_SOURCE_RATE": "10", "PMTUD_RELAY_PORTS": "2,3",
           "PMTUD_RELAY_V6_BROADCAST": "false", "PMTUD_RELAY_DEDUP_WINDOW": "4"}
    args = parser().parse_args(["--source-rate", "100", "--port", "4"])
    loaded = cfg.load(args, env)
    s, src = loaded.settings, loaded.sources
    assert (s.source_rate, src["source_rate"]) == (100.0, "--source-rate")   # flag beats env and file
    assert (s.ports, src["ports"]) == ((4,), "--port")                        # lists are replaced, not merged
    assert (s.dedup_window, src["dedup_window"]) == (4.0, "PMTUD_RELAY_DEDUP_WINDOW")  # env beats file
    assert (s.v6_broadcast, src["v6_broadcast"]) == (False, "PMTUD_RELAY_V6_BROADCAST")
    assert (s.global_rate, src["global_rate"]) == (2.0, path)                 # file beats default
    assert (s.global_burst, src["global_burst"]) == (rl.DEFAULT_GLOBAL_BURST, "default")
    assert loaded.path == path


def test_config_flag_beats_config_env(tmp_path):
    a = write(tmp_path, "global_rate = 1\n", "a.toml")
    b = write(tmp_path, "global_rate = 2\n", "b.toml")
    loaded = cfg.load(parser().parse_args(["--config", b]), {"PMTUD_RELAY_CONFIG": a})
    assert loaded.path == b and loaded.settings.global_rate == 2.0


# -- reload ----------------------------------------------------------------------------------


def test_reload_rereads_the_file_and_a_broken_file_changes_nothing(tmp_path):
    path = write(tmp_path, "source_rate = 1\nvips = [\"192.0.2.10\"]\n")
    args = parser().parse_args(["--config", path, "--global-rate", "7"])
    first = cfg.load(args, {})
    pathlib.Path(path).write_text("source_rate = 2\nvips = [\"192.0.2.10\"]\nmetrics_address = \":9999\"\n")
    second = cfg.reload(args, {})
    assert second.settings.source_rate == 2.0 and second.settings.global_rate == 7.0
    live, restart = cfg.changes(first.settings, second.settings)
    assert live == ["source_rate"] and restart == ["metrics_address"]
    pathlib.Path(path).write_text("source_rate = -5\n")
    assert error_of(cfg.reload, args, {}) == f"{path}: source_rate: must be > 0, got -5"
    assert first.settings.source_rate == 1.0  # nothing was mutated
    pathlib.Path(path).unlink()
    assert error_of(cfg.reload, args, {}) == f"--config: {path}: no such file"


# -- printing and `config check` -------------------------------------------------------------


def test_check_prints_every_key_with_its_source(tmp_path):
    path = write(tmp_path, "ports = [443]\nlog_level = \"debug\"\n")
    ok, text = cfg.check(path, environ={"PMTUD_RELAY_GLOBAL_RATE": "20"})
    assert ok
    lines = {line.split(" = ")[0]: line for line in text.splitlines() if " = " in line and not line.startswith("#")}
    assert list(lines) == [k.name for k in cfg.SCHEMA]
    assert lines["ports"].endswith(f"# {path}") and "[443]" in lines["ports"]
    assert lines["global_rate"].endswith("# PMTUD_RELAY_GLOBAL_RATE")
    assert lines["floor_v4"].endswith("# default")


def test_check_reports_the_error(tmp_path):
    path = write(tmp_path, "dedup_capacity = -3\n")
    ok, text = cfg.check(path, environ={})
    assert not ok and text == f"{path}: dedup_capacity: must be >= 1, got -3\n"
    ok, text = cfg.check(str(tmp_path / "missing.toml"), environ={})
    assert not ok and "no such file" in text


def test_rendered_config_is_toml_that_loads_back_identically(tmp_path):
    args = parser().parse_args(["-i", "eth0", "--vip", "2001:db8::1", "--protocol", "udp", "--port", "53",
                                "--metrics-address", "", "--source-burst", "12.5", "--manage-rules",
                                "--capture", "nflog"])
    loaded = cfg.load(args, {}, use_default_path=False)
    text = cfg.render(loaded)
    cfg.tomllib.loads(text)  # valid TOML (tomllib, or tomli before 3.11)
    again = load(path=write(tmp_path, text))
    assert again.settings == loaded.settings


# -- docs ------------------------------------------------------------------------------------


def test_configuration_doc_table_is_generated_from_the_schema():
    text = DOCS.read_text()
    assert cfg.DOC_BEGIN in text and cfg.DOC_END in text
    assert cfg.sync_docs(text) == text, (
        "docs/configuration.md is out of date: run "
        "`python -m pmtud_relay.config --write-docs docs/configuration.md`")


def test_every_key_flag_and_env_var_is_documented():
    text = DOCS.read_text()
    for key in cfg.SCHEMA:
        assert f"`{key.name}`" in text, key.name
        assert f"`{key.env}`" in text, key.env
        assert f"`{key.flag}`" in text, key.flag


def test_manage_rules_needs_nflog_capture(tmp_path):
    path = write(tmp_path, "manage_rules = true\n")
    msg = error_of(load, path=path)
    assert msg.startswith(f"{path}: manage_rules: the managed rules feed capture = \"nflog\", "
                          "but capture is 'afpacket' (default): add --capture nflog")
    assert load(["--capture", "nflog"], path=path).settings.manage_rules is True
    assert "--manage-rules: manage_rules" in error_of(load, ["--manage-rules"], env={"PMTUD_RELAY_CAPTURE": "afpacket"})


# -- the peer relay keys -----------------------------------------------------------------------


def test_peer_keys_env_lists_are_blank_separated_and_checked_together(tmp_path):
    key = tmp_path / "peer.key"
    key.write_text("1:" + "ab" * 32 + "\n")
    key.chmod(0o600)
    env = {"PMTUD_RELAY_FANOUT": "peers",
           "PMTUD_RELAY_PEERS": "192.0.2.21=192.0.2.10/32,198.51.100.0/24 [2001:db8::21]:2106",
           "PMTUD_RELAY_PEER_KEY_FILE": str(key)}
    s = load(env=env).settings
    assert s.peers == ("192.0.2.21=192.0.2.10/32,198.51.100.0/24", "[2001:db8::21]:2106")
    ps = cfg.peer_settings(s)
    assert ps is not None and ps.fanout == "peers" and len(ps.peers) == 2
    assert cfg.peer_settings(cfg.Settings()) is None  # off by default


def test_peer_key_errors_name_the_source(tmp_path):
    assert error_of(load, env={"PMTUD_RELAY_PEERS": "host:99999"}).startswith("PMTUD_RELAY_PEERS: ")
    assert "peers_dns: '192.0.2.1' is an address, not a name" in error_of(
        load, path=write(tmp_path, 'peers_dns = ["192.0.2.1"]\n'))
    msg = error_of(load, env={"PMTUD_RELAY_FANOUT": "peers"})
    assert msg.startswith("PMTUD_RELAY_FANOUT: ") and "name the peers" in msg
    assert "argument --peer/--peers" in flag_error("--peer", "host:99999")


def test_vip_interfaces_names_patterns_and_kinds(tmp_path):
    assert load(env={}).settings.vip_interfaces == ("lo", "@dummy")
    s = load(env={"PMTUD_RELAY_VIP_INTERFACES": "lo,@dummy,vip*,kube-ipvs0"}).settings
    assert s.vip_interfaces == ("lo", "@dummy", "vip*", "kube-ipvs0")
    assert "PMTUD_RELAY_VIP_INTERFACES: '@' is not an interface kind" in error_of(
        load, env={"PMTUD_RELAY_VIP_INTERFACES": "lo,@"})
    assert "PMTUD_RELAY_VIP_INTERFACES: 'a/b' is not an interface name or pattern" in error_of(
        load, env={"PMTUD_RELAY_VIP_INTERFACES": "a/b"})
    assert "vip_interfaces: 'way-too-long-interface*' is not an interface name or pattern" in error_of(
        load, env={}, path=write(tmp_path, 'vip_interfaces = ["way-too-long-interface*"]\n'))

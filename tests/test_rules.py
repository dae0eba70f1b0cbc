"""Firewall rules for NFLOG capture: rendering (pure) and the install/remove lifecycle (real kernel).

Kernel tests run each in a network namespace of their own (``pmr-nf-<pid>-<hex>``), created
and deleted here; they drive the real ``nft`` and python-iptables (legacy x_tables, checked
with ``iptables-legacy-save``) through the ``pmtud-relay rules`` command and the daemon.
"""

from __future__ import annotations

import json
import signal
from types import SimpleNamespace

import pytest

from pmtud_relay import cli
from pmtud_relay.rules import RuleSpec, nft
from pmtud_relay.rules import iptables as ipt
from tests.support.netns import VIP4, VIP6, NetNS, need_backend, wait_ready
from tests.support.rules import assert_exactly_one_set, installed_state, nft_tables, strip_decl_counters


# --- pure: rendering ----------------------------------------------------------------------------------
def test_kernel_limits_are_twice_the_userspace_limits() -> None:
    spec = RuleSpec.from_limits(["eth0"])
    assert (spec.source_rate, spec.source_burst, spec.global_rate, spec.global_burst) == (20, 100, 200, 1000)
    assert spec.group == 2105 and spec.source_timeout == 10
    odd = RuleSpec.from_limits(["eth0"], 7, source_rate=0.3, source_burst=1, global_rate=2.5, global_burst=3)
    assert (odd.source_rate, odd.source_burst, odd.global_rate, odd.global_burst) == (1, 2, 5, 6)
    assert odd.source_timeout == 10
    slow = RuleSpec(("eth0",), source_rate=1, source_burst=20)
    assert slow.source_timeout == 40  # long enough for the bucket to refill


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interfaces": ()},
        {"interfaces": ("eth0", "eth0")},
        {"interfaces": ('eth0"; drop',)},
        {"interfaces": ("a" * 16,)},
        {"interfaces": ("eth 0",)},
        {"interfaces": ("eth0",), "group": 65536},
        {"interfaces": ("eth0",), "source_rate": 0},
        {"interfaces": ("eth0",), "global_rate": 10001},
        {"interfaces": ("eth0",), "global_burst": 2.5},
    ],
)
def test_rule_spec_rejects_bad_values(kwargs) -> None:
    with pytest.raises(ValueError):
        RuleSpec(**kwargs)


def test_nft_commands_replace_the_table_in_one_transaction() -> None:
    cmds = nft.commands(RuleSpec(("eth0", "eth1"), group=42))
    table = {"family": "inet", "name": "pmtud_relay"}
    assert cmds[:3] == [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}}]
    assert all(len(c) == 1 and next(iter(c)) == "add" for c in cmds[3:])
    base = next(c["add"]["chain"] for c in cmds if "chain" in c.get("add", {}) and "hook" in c["add"]["chain"])
    assert (base["hook"], base["prio"], base["policy"]) == ("prerouting", -300, "accept")
    text = json.dumps(cmds)
    assert '"log": {"group": 42}' in text and '"set": ["eth0", "eth1"]' in text
    assert '"right": "host"' in text and '"drop"' not in text  # never drops: over-limit PTBs just are not logged
    assert nft.remove_commands() == [{"add": {"table": table}}, {"delete": {"table": table}}]


def test_nft_load_script_replaces_the_table_with_the_rendered_text() -> None:
    # Loaded as text, not JSON: nft < 1.0.6 drops the limit inside "update @set { ... }" from JSON.
    spec = RuleSpec(("eth0", "eth1"), group=42)
    assert nft.load_script(spec) == "add table inet pmtud_relay\ndelete table inet pmtud_relay\n" + nft.render(spec)
    assert "flags dynamic,timeout" in nft.render(spec)  # nft 0.9.8 needs it for a set updated with a limit


def test_nft_render() -> None:
    text = nft.render(RuleSpec(("eth0",), source_rate=10, source_burst=20, global_rate=100, global_burst=200))
    assert '\t\tiifname "eth0" meta pkttype host icmp type destination-unreachable icmp code frag-needed counter ' \
           'jump ptb4 comment "ipv4 frag-needed to this host"' in text.splitlines()
    assert "\t\tupdate @src6 { ip6 saddr limit rate over 10/second burst 20 packets } counter return " \
           'comment "over the per-source limit: not logged"' in text.splitlines()
    assert "\t\tlimit rate over 100/second burst 200 packets counter return" in text
    assert "\t\tcounter log group 2105" in text
    assert 'iifname { "eth0", "eth1" }' in nft.render(RuleSpec(("eth0", "eth1")))


def test_nft_canonical_lines_ignore_version_format_not_content() -> None:
    spec = RuleSpec(("eth0",))
    text = nft.render(spec)
    # As nft 1.1.3 (Debian 13) lists it: numbers for two names, other blanks, counter values.
    listed = text.replace("icmp code frag-needed counter", "icmp code 4 counter packets 7 bytes 392") \
        .replace("\t\t", "        ").replace("\n\n", "\n")
    assert nft.canonical_lines(listed) == nft.canonical_lines(text)
    for changed in (listed.replace("icmp code 4", "icmp code 3"), listed.replace("over 20/second", "over 21/second"),
                    listed.replace("group 2105", "group 2106"), listed.replace(" return", "", 1)):
        assert nft.canonical_lines(changed) != nft.canonical_lines(text)


def test_iptc_abi_probe_refuses_a_python_iptables_that_misreads_libxtables() -> None:
    # Measured on Debian 13 (iptables 1.8.11): python-iptables sees only hashlimit's first option.
    class Misread:
        def __setattr__(self, key, value):
            raise ValueError(f"b'hashlimit': no such parameter b'{key.replace('_', '-')}'")

    class Fine:
        pass

    def fake(match_cls):
        class Rule:
            def create_match(self, name):
                assert name == "hashlimit"
                return match_cls()
        return SimpleNamespace(Rule=Rule)

    with pytest.raises(ipt.IptcIncompatible, match=r"no such parameter b'hashlimit-above'.*use the nft backend"):
        ipt.check_iptc_abi(fake(Misread))
    ipt.check_iptc_abi(fake(Fine))


def test_iptables_render() -> None:
    lines = ipt.render_family(
        RuleSpec(("eth0",), group=9, source_rate=10, source_burst=20, global_rate=100, global_burst=200), 6)
    assert lines == [
        ":PMTUD_RELAY - [0:0]",
        ":PMTUD_RELAY_LOG - [0:0]",
        "-A PREROUTING -j PMTUD_RELAY",
        "-A PMTUD_RELAY -i eth0 -p ipv6-icmp -m icmp6 --icmpv6-type 2/0 -m pkttype --pkt-type unicast "
        "-j PMTUD_RELAY_LOG",
        "-A PMTUD_RELAY_LOG -m hashlimit --hashlimit-above 10/sec --hashlimit-burst 20 --hashlimit-mode srcip "
        "--hashlimit-name pmtud6_10_20 --hashlimit-htable-max 65536 --hashlimit-htable-expire 10000 -j RETURN",
        "-A PMTUD_RELAY_LOG -m limit --limit 100/sec --limit-burst 200 -j NFLOG --nflog-group 9 --nflog-threshold 100",
    ]
    assert len(ipt.hashlimit_name(RuleSpec(("eth0",), source_rate=9999, source_burst=9999), 4)) <= 15


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_rules_show_prints_the_rendering(backend: str, capsys) -> None:
    rc = cli.main(["rules", "show", "--backend", backend, "-i", "eth0", "-i", "eth1", "--nflog-group", "77",
                   "--source-rate", "3", "--global-burst", "7"])
    assert rc == 0
    spec = RuleSpec(("eth0", "eth1"), group=77, source_rate=6, global_burst=14)
    assert capsys.readouterr().out == (nft.render(spec) if backend == "nft" else ipt.render(spec))


def test_rules_show_rejects_bad_interface(capsys) -> None:
    assert cli.main(["rules", "show", "--backend", "nft", "-i", "bad name"]) == cli.EXIT_CONFIG
    assert "--interface" in capsys.readouterr().err


def test_manage_rules_needs_nflog_capture(capsys) -> None:
    assert cli.main(["run", "-i", "lo", "--manage-rules"]) == cli.EXIT_CONFIG
    assert "--capture nflog" in capsys.readouterr().err


# --- kernel: lifecycle -----------------------------------------------------------------------------------
@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_show_install_remove_round_trip(backend: str) -> None:
    need_backend(backend)
    spec = RuleSpec(("v1", "lo"))
    with NetNS() as ns:
        shown = ns.relay("rules", "show", "--backend", backend, "-i", "v1", "-i", "lo").stdout
        assert installed_state(ns, backend) == []
        out = ns.relay("rules", "install", "--backend", backend, "-i", "v1", "-i", "lo").stdout
        assert out.startswith(f"{backend}: installed")
        if backend == "nft":
            # what show printed is exactly what the kernel holds
            assert installed_state(ns, backend) == nft.canonical_lines(shown)
        else:
            assert strip_decl_counters(installed_state(ns, backend)) == strip_decl_counters(
                [line for line in shown.splitlines() if not line.startswith("#")])
        assert_exactly_one_set(ns, backend, spec)
        # idempotent: a second (and third) install leaves exactly one set
        ns.relay("rules", "install", "--backend", backend, "-i", "v1", "-i", "lo")
        ns.relay("rules", "install", "--backend", backend, "-i", "v1", "-i", "lo")
        assert_exactly_one_set(ns, backend, spec)
        # a different interface list replaces the rules, it does not add to them
        ns.relay("rules", "install", "--backend", backend, "-i", "v1")
        assert_exactly_one_set(ns, backend, RuleSpec(("v1",)))
        assert "removed" in ns.relay("rules", "remove", "--backend", backend).stdout
        assert installed_state(ns, backend) == []
        if backend == "nft":
            assert nft_tables(ns) == []
        else:
            for prog in ("iptables-legacy-save", "ip6tables-legacy-save"):
                assert "PMTUD" not in ns.run([prog]).stdout
        # removing again is fine and says so
        assert "nothing to remove" in ns.relay("rules", "remove", "--backend", backend).stdout


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_auto_picks_nft_and_remove_auto_clears_both() -> None:
    need_backend("nft")
    need_backend("iptables")
    with NetNS() as ns:
        assert ns.relay("rules", "install", "-i", "v1").stdout.startswith("nft: installed")
        ns.relay("rules", "install", "--backend", "iptables", "-i", "v1")
        assert installed_state(ns, "nft") and installed_state(ns, "iptables")
        out = ns.relay("rules", "remove").stdout
        assert "nft: removed" in out and "iptables: removed" in out
        assert installed_state(ns, "nft") == [] and installed_state(ns, "iptables") == []


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_kill9_then_restart_leaves_exactly_one_set(backend: str) -> None:
    need_backend(backend)
    args = ("run", "-i", "v1", "--capture", "nflog", "--manage-rules", "--rules-backend", backend,
            "--vip", VIP4, "--vip", VIP6)
    spec = RuleSpec(("v1",))
    with NetNS() as ns:
        first = ns.spawn_relay(*args)
        wait_ready(first)
        assert_exactly_one_set(ns, backend, spec)
        first.send_signal(signal.SIGKILL)
        first.stop(timeout=5)
        assert first.returncode == -signal.SIGKILL
        assert_exactly_one_set(ns, backend, spec)  # stale rules stay after kill -9 ...
        second = ns.spawn_relay(*args)
        wait_ready(second)  # ... the group is free again (the kernel unbound it on close) ...
        assert_exactly_one_set(ns, backend, spec)  # ... and the restart replaced them
        assert second.stop(timeout=10) == 0, second.stderr
        assert "event=rules_removed" in second.stderr
        assert installed_state(ns, backend) == []  # SIGTERM removes everything


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_manage_rules_clears_rules_another_backend_left() -> None:
    need_backend("nft")
    need_backend("iptables")
    with NetNS() as ns:
        ns.relay("rules", "install", "--backend", "iptables", "-i", "v1")
        p = ns.spawn_relay("run", "-i", "v1", "--capture", "nflog", "--manage-rules", "--rules-backend", "nft",
                           "--vip", VIP4)
        wait_ready(p)
        assert installed_state(ns, "iptables") == []  # would have logged every PTB twice
        assert_exactly_one_set(ns, "nft", RuleSpec(("v1",)))
        assert p.stop(timeout=10) == 0, p.stderr
        assert installed_state(ns, "nft") == []


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_rules_install_unknown_interface_is_harmless() -> None:
    """Rules name interfaces (iifname), so they may be installed before the interface exists."""
    need_backend("nft")
    with NetNS() as ns:
        ns.relay("rules", "install", "--backend", "nft", "-i", "later0")
        assert_exactly_one_set(ns, "nft", RuleSpec(("later0",)))
        ns.relay("rules", "remove", "--backend", "nft")

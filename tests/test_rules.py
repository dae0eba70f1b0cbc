"""Firewall rules for NFLOG capture: rendering (pure) and the install/remove lifecycle (real kernel).

Kernel tests run each in a network namespace of their own (``pmr-nf-<pid>-<hex>``), created
and deleted here; they drive the real ``nft`` and python-iptables (legacy x_tables, checked
with ``iptables-legacy-save``) through the ``pmtud-relay rules`` command and the daemon.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pmtud_relay import cli
from pmtud_relay.rules import RuleSpec
from pmtud_relay.rules import iptables as ipt
from pmtud_relay.rules import nft

REPO = str(Path(__file__).resolve().parents[1])
CMD_TIMEOUT = 20.0
READY_TIMEOUT = 15.0
VIP4 = "192.0.2.10"
VIP6 = "2001:db8:ffff::10"


# --- namespace helpers (also used by test_e2e_nflog) ---------------------------------------------
def need_root_and(*binaries: str) -> None:
    """Skip unless root and every binary is installed (names the missing one)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, nft, iptables)")
    for name in ("ip", *binaries):
        if shutil.which(name) is None and not any(os.access(f"{d}/{name}", os.X_OK) for d in ("/usr/sbin", "/sbin")):
            pytest.skip(f"needs {name}")


def need_backend(backend: str) -> None:
    """Skip only for what the machine lacks (root, a binary); a broken backend fails the test.

    python-iptables is the optional extra ``iptables`` and part of the ``test`` extra: if it cannot
    be imported (not installed, libiptc/libxtables missing, ...) the test set-up or the iptables
    backend is broken, and the test must say so."""
    if backend == "nft":
        need_root_and("nft")
    else:
        need_root_and("iptables-legacy-save", "ip6tables-legacy-save")
        try:
            importlib.import_module("iptc")  # python-iptables
        except Exception as exc:  # noqa: BLE001 - ImportError, or OSError from a missing libxtables
            broken = f"{type(exc).__name__}: {exc}"
        else:
            try:
                ipt.IptablesBackend()._lib()
            except ipt.IptcIncompatible as exc:  # the host's libxtables is newer than any python-iptables
                pytest.skip(str(exc))
            return
        pytest.fail(f"python-iptables (in the test extra) cannot be loaded by {sys.executable}: {broken}",
                    pytrace=False)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
    return env


class NetNS:
    """A namespace with a veth pair: ``v0`` (the wire: inject and sniff here) and ``v1`` (the
    relay's interface, 198.51.100.2/24 and 2001:db8:5::2/64); VIPs on ``lo``."""

    def __init__(self) -> None:
        self.name = f"pmr-nf-{os.getpid()}-{secrets.token_hex(3)}"
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "NetNS":
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=CMD_TIMEOUT)
        try:
            for args in (
                ["link", "set", "lo", "up"],
                ["link", "add", "v0", "address", "02:00:00:00:05:01", "type", "veth", "peer", "name", "v1",
                 "address", "02:00:00:00:05:02"],
                ["addr", "add", f"{VIP4}/32", "dev", "lo"],
                ["addr", "add", f"{VIP6}/128", "dev", "lo", "nodad"],
                ["addr", "add", "198.51.100.2/24", "dev", "v1"],
                ["addr", "add", "2001:db8:5::2/64", "dev", "v1", "nodad"],
                ["link", "set", "v0", "up"],
                ["link", "set", "v1", "up"],
            ):
                subprocess.run(["ip", "-n", self.name, *args], check=True, timeout=CMD_TIMEOUT,
                               capture_output=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        subprocess.run(["ip", "netns", "del", self.name], timeout=CMD_TIMEOUT, capture_output=True)

    def run(self, argv: list[str], *, input: str | None = None, check: bool = True,
            timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess:
        cp = subprocess.run(["ip", "netns", "exec", self.name, *argv], input=input, capture_output=True,
                            text=True, timeout=timeout, env=_env(),
                            stdin=None if input is not None else subprocess.DEVNULL)
        if check and cp.returncode != 0:
            raise AssertionError(f"{argv} failed rc={cp.returncode}\nstdout:\n{cp.stdout}\nstderr:\n{cp.stderr}")
        return cp

    def relay(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``python -m pmtud_relay ARGS`` in the namespace, waited for."""
        return self.run([sys.executable, "-m", "pmtud_relay", *args], check=check)

    def python(self, code: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return self.run([sys.executable, "-c", code, *args], timeout=timeout)

    def spawn(self, argv: list[str], node: str = "proc"):
        """Start ``argv`` in the namespace as a lab LabProcess (output captured line by line);
        killed when the namespace goes."""
        from pmtud_relay.lab import LabProcess

        p = LabProcess(node, self.name, argv, env={"PATH": _env()["PATH"]})
        self.procs.append(p.popen)
        return p

    def spawn_relay(self, *args: str):
        """Start ``python -m pmtud_relay ARGS`` in the namespace."""
        return self.spawn([sys.executable, "-m", "pmtud_relay", *args], node="relay")


def wait_ready(proc) -> None:
    proc.wait_for(r"event=ready", stream="stderr", timeout=READY_TIMEOUT)


# --- what is installed, read independently of the backends ------------------------------------------
def nft_tables(ns: NetNS) -> list[str]:
    data = json.loads(ns.run(["nft", "-j", "list", "tables"]).stdout)
    return [t["table"]["name"] for t in data["nftables"] if "table" in t]


def nft_rule_count(ns: NetNS) -> int:
    data = json.loads(ns.run(["nft", "-j", "list", "ruleset"]).stdout)
    return sum(1 for item in data["nftables"] if "rule" in item and item["rule"]["table"] == nft.TABLE)


def legacy_lines(ns: NetNS, family: int) -> list[str]:
    prog = "iptables-legacy-save" if family == 4 else "ip6tables-legacy-save"
    out = ns.run([prog, "-t", "raw"]).stdout
    return [l for l in out.splitlines() if "PMTUD_RELAY" in l]


def installed_state(ns: NetNS, backend: str) -> list[str]:
    """Everything of ours the kernel holds, as lines: empty when nothing is installed."""
    if backend == "nft":
        if nft.TABLE not in nft_tables(ns):
            return []
        return nft.canonical_lines(ns.run(["nft", "list", "table", nft.FAMILY, nft.TABLE]).stdout)
    return legacy_lines(ns, 4) + legacy_lines(ns, 6)


def expected_state(backend: str, spec: RuleSpec) -> list[str]:
    if backend == "nft":
        return nft.canonical_lines(nft.render(spec))
    return [l.split(" [", 1)[0] if l.startswith(":") else l for l in ipt.render_family(spec, 4)] + \
        [l.split(" [", 1)[0] if l.startswith(":") else l for l in ipt.render_family(spec, 6)]


def _strip_decl_counters(lines: list[str]) -> list[str]:
    return [l.split(" [", 1)[0] if l.startswith(":") else l for l in lines]


def assert_exactly_one_set(ns: NetNS, backend: str, spec: RuleSpec) -> None:
    if backend == "nft":
        assert nft_tables(ns).count(nft.TABLE) == 1
        assert nft_rule_count(ns) == 8, ns.run(["nft", "list", "ruleset"]).stdout
        assert installed_state(ns, backend) == expected_state(backend, spec)
    else:
        for family in (4, 6):
            lines = legacy_lines(ns, family)
            assert sum(1 for l in lines if l.startswith("-A PREROUTING")) == 1, lines
            assert _strip_decl_counters(lines) == _strip_decl_counters(ipt.render_family(spec, family)), lines


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
            assert _strip_decl_counters(installed_state(ns, backend)) == _strip_decl_counters(
                [l for l in shown.splitlines() if not l.startswith("#")])
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

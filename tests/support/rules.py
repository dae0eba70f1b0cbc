"""What the NFLOG rules left in a namespace, read independently of the backends (``nft -j``,
``iptables-legacy-save``), and the check that exactly one set of ours is installed."""

from __future__ import annotations

import json

from pmtud_relay.rules import RuleSpec, nft
from pmtud_relay.rules import iptables as ipt
from tests.support.netns import NetNS


def nft_tables(ns: NetNS) -> list[str]:
    data = json.loads(ns.run(["nft", "-j", "list", "tables"]).stdout)
    return [t["table"]["name"] for t in data["nftables"] if "table" in t]


def nft_rule_count(ns: NetNS) -> int:
    data = json.loads(ns.run(["nft", "-j", "list", "ruleset"]).stdout)
    return sum(1 for item in data["nftables"] if "rule" in item and item["rule"]["table"] == nft.TABLE)


def legacy_lines(ns: NetNS, family: int) -> list[str]:
    prog = "iptables-legacy-save" if family == 4 else "ip6tables-legacy-save"
    out = ns.run([prog, "-t", "raw"]).stdout
    return [line for line in out.splitlines() if "PMTUD_RELAY" in line]


def installed_state(ns: NetNS, backend: str) -> list[str]:
    """Everything of ours the kernel holds, as lines: empty when nothing is installed."""
    if backend == "nft":
        if nft.TABLE not in nft_tables(ns):
            return []
        return nft.canonical_lines(ns.run(["nft", "list", "table", nft.FAMILY, nft.TABLE]).stdout)
    return legacy_lines(ns, 4) + legacy_lines(ns, 6)


def strip_decl_counters(lines: list[str]) -> list[str]:
    """iptables-save lines without the ``[packets:bytes]`` of chain declarations."""
    return [line.split(" [", 1)[0] if line.startswith(":") else line for line in lines]


def expected_state(backend: str, spec: RuleSpec) -> list[str]:
    if backend == "nft":
        return nft.canonical_lines(nft.render(spec))
    return strip_decl_counters(ipt.render_family(spec, 4)) + strip_decl_counters(ipt.render_family(spec, 6))


def assert_exactly_one_set(ns: NetNS, backend: str, spec: RuleSpec) -> None:
    if backend == "nft":
        assert nft_tables(ns).count(nft.TABLE) == 1
        assert nft_rule_count(ns) == 8, ns.run(["nft", "list", "ruleset"]).stdout
        assert installed_state(ns, backend) == expected_state(backend, spec)
    else:
        for family in (4, 6):
            lines = legacy_lines(ns, family)
            assert sum(1 for line in lines if line.startswith("-A PREROUTING")) == 1, lines
            assert strip_decl_counters(lines) == strip_decl_counters(ipt.render_family(spec, family)), lines

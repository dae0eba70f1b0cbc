"""nftables backend: one dedicated table, ``inet pmtud_relay``, loaded through ``nft -f -``.

The rules are built as data in nft's JSON form (:func:`commands`) and as the text ``nft list
table inet pmtud_relay`` prints (:func:`render`, what ``pmtud-relay rules show`` prints).
The tests check that the two agree.

Install loads the *text* (:func:`load_script`), not the JSON: nft 0.9.8 parses a set
``update`` statement in JSON without its ``stmt`` list and silently drops the per-source
``limit`` (measured), so every PTB is counted as over the limit and nothing logged; upstream
added that JSON support ("json: add set statement list support") only in September 2022, after
1.0.5. The text syntax works from 0.9.8 on (measured on 0.9.8, 1.0.6 and 1.1.3). Interface names
are checked by :class:`RuleSpec` (no quotes, blanks, '/' or ':'), so the text needs no escaping.

Install is a single nft transaction: add the table (a no-op if it exists), delete it,
create it again with everything in it. A restart after a crash therefore replaces stale
rules, never duplicates them, and there is no moment without rules when replacing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

from pmtud_relay.rules.spec import RulesError, RuleSpec

FAMILY = "inet"
TABLE = "pmtud_relay"
BASE_CHAIN = "prerouting"
PRIORITY = -300  # NF_IP_PRI_RAW: before conntrack and every filter/nat chain
CHAIN4 = "ptb4"
CHAIN6 = "ptb6"
LOG_CHAIN = "to_nflog"
SET4 = "src4"
SET6 = "src6"
TIMEOUT = 10.0  # seconds for each nft invocation

COMMENT_V4 = "ipv4 frag-needed to this host"
COMMENT_V6 = "ipv6 packet-too-big to this host"
COMMENT_SRC = "over the per-source limit: not logged"
COMMENT_GLOBAL = "over the global limit: not logged"
COMMENT_LOG = "to pmtud-relay"


def nft_binary() -> str | None:
    found = shutil.which("nft")
    if found:
        return found
    for cand in ("/usr/sbin/nft", "/sbin/nft"):
        if os.access(cand, os.X_OK):
            return cand
    return None


# --- the rule set as data -------------------------------------------------------------------------
def _table() -> dict:
    return {"family": FAMILY, "name": TABLE}


def _rule(chain: str, expr: list, comment: str | None = None) -> dict:
    rule = {"family": FAMILY, "table": TABLE, "chain": chain, "expr": expr}
    if comment:
        rule["comment"] = comment
    return {"add": {"rule": rule}}


def _match(left: dict, right) -> dict:
    return {"match": {"op": "==", "left": left, "right": right}}


def _iifname(interfaces: tuple[str, ...]) -> dict:
    right = interfaces[0] if len(interfaces) == 1 else {"set": list(interfaces)}
    return _match({"meta": {"key": "iifname"}}, right)


def _limit_over(rate: int, burst: int) -> dict:
    return {"limit": {"rate": rate, "burst": burst, "per": "second", "inv": True}}


def commands(spec: RuleSpec) -> list[dict]:
    """The nft JSON commands that (re)create the table for ``spec`` atomically."""
    pkttype = _match({"meta": {"key": "pkttype"}}, "host")
    cmds: list[dict] = [
        {"add": {"table": _table()}},
        {"delete": {"table": _table()}},
        {"add": {"table": _table()}},
    ]
    for name, kind in ((SET4, "ipv4_addr"), (SET6, "ipv6_addr")):
        # "dynamic" is implied by the update statement (nft 1.0.6 JSON does not take it).
        cmds.append(
            {
                "add": {
                    "set": {
                        "family": FAMILY,
                        "table": TABLE,
                        "name": name,
                        "type": kind,
                        "size": spec.table_size,
                        "flags": ["timeout"],
                        "timeout": spec.source_timeout,
                    }
                }
            }
        )
    cmds.append(
        {
            "add": {
                "chain": {
                    "family": FAMILY,
                    "table": TABLE,
                    "name": BASE_CHAIN,
                    "type": "filter",
                    "hook": "prerouting",
                    "prio": PRIORITY,
                    "policy": "accept",
                }
            }
        }
    )
    for name in (CHAIN4, CHAIN6, LOG_CHAIN):
        cmds.append({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": name}}})
    iif = _iifname(spec.interfaces)
    cmds.append(
        _rule(
            BASE_CHAIN,
            [
                iif,
                pkttype,
                _match({"payload": {"protocol": "icmp", "field": "type"}}, "destination-unreachable"),
                _match({"payload": {"protocol": "icmp", "field": "code"}}, "frag-needed"),
                {"counter": None},
                {"jump": {"target": CHAIN4}},
            ],
            COMMENT_V4,
        )
    )
    cmds.append(
        _rule(
            BASE_CHAIN,
            [
                iif,
                pkttype,
                _match({"payload": {"protocol": "icmpv6", "field": "type"}}, "packet-too-big"),
                _match({"payload": {"protocol": "icmpv6", "field": "code"}}, "no-route"),
                {"counter": None},
                {"jump": {"target": CHAIN6}},
            ],
            COMMENT_V6,
        )
    )
    for chain, set_name, proto in ((CHAIN4, SET4, "ip"), (CHAIN6, SET6, "ip6")):
        cmds.append(
            _rule(
                chain,
                [
                    {
                        "set": {
                            "op": "update",
                            "elem": {"payload": {"protocol": proto, "field": "saddr"}},
                            "set": "@" + set_name,
                            "stmt": [_limit_over(spec.source_rate, spec.source_burst)],
                        }
                    },
                    {"counter": None},
                    {"return": None},
                ],
                COMMENT_SRC,
            )
        )
        cmds.append(_rule(chain, [{"goto": {"target": LOG_CHAIN}}]))
    cmds.append(
        _rule(
            LOG_CHAIN,
            [_limit_over(spec.global_rate, spec.global_burst), {"counter": None}, {"return": None}],
            COMMENT_GLOBAL,
        )
    )
    cmds.append(_rule(LOG_CHAIN, [{"counter": None}, {"log": {"group": spec.group}}], COMMENT_LOG))
    return cmds


def load_script(spec: RuleSpec) -> str:
    """The ``nft -f`` input that (re)creates the table for ``spec`` in one transaction."""
    return f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n" + render(spec)


def remove_commands() -> list[dict]:
    """Delete the table whether or not it exists, in one transaction."""
    return [{"add": {"table": _table()}}, {"delete": {"table": _table()}}]


def render(spec: RuleSpec) -> str:
    """The table as ``nft list table inet pmtud_relay`` prints it (counters at zero omitted)."""
    ifs = spec.interfaces
    iif = f'iifname "{ifs[0]}"' if len(ifs) == 1 else "iifname { " + ", ".join(f'"{i}"' for i in ifs) + " }"
    lines = [f"table {FAMILY} {TABLE} {{"]
    for name, kind in ((SET4, "ipv4_addr"), (SET6, "ipv6_addr")):
        lines += [
            f"\tset {name} {{",
            f"\t\ttype {kind}",
            f"\t\tsize {spec.table_size}",
            "\t\tflags dynamic,timeout",
            f"\t\ttimeout {spec.source_timeout}s",
            "\t}",
            "",
        ]
    src = f"burst {spec.source_burst} packets"
    lines += [
        f"\tchain {BASE_CHAIN} {{",
        "\t\ttype filter hook prerouting priority raw; policy accept;",
        f"\t\t{iif} meta pkttype host icmp type destination-unreachable icmp code frag-needed counter jump {CHAIN4} "
        f'comment "{COMMENT_V4}"',
        f"\t\t{iif} meta pkttype host icmpv6 type packet-too-big icmpv6 code no-route counter jump {CHAIN6} "
        f'comment "{COMMENT_V6}"',
        "\t}",
        "",
    ]
    for chain, set_name, proto in ((CHAIN4, SET4, "ip"), (CHAIN6, SET6, "ip6")):
        lines += [
            f"\tchain {chain} {{",
            f"\t\tupdate @{set_name} {{ {proto} saddr limit rate over {spec.source_rate}/second {src} }} "
            f'counter return comment "{COMMENT_SRC}"',
            f"\t\tgoto {LOG_CHAIN}",
            "\t}",
            "",
        ]
    lines += [
        f"\tchain {LOG_CHAIN} {{",
        f"\t\tlimit rate over {spec.global_rate}/second burst {spec.global_burst} packets counter return "
        f'comment "{COMMENT_GLOBAL}"',
        f'\t\tcounter log group {spec.group} comment "{COMMENT_LOG}"',
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


_COUNTER_TEXT = re.compile(r"counter packets \d+ bytes \d+")


def normalize_listing(text: str) -> str:
    """``nft list table`` output with counter values dropped (for comparing with :func:`render`)."""
    return _COUNTER_TEXT.sub("counter", text)


# Names that one nft version prints and another prints as numbers (nft 1.1.3, Debian 13, lists
# "icmp code 4" for what 1.0.6 lists as "icmp code frag-needed"): the same rule either way.
_SAME_AS_NUMBER = (
    ("icmp type destination-unreachable", "icmp type 3"),
    ("icmp code frag-needed", "icmp code 4"),
    ("icmpv6 type packet-too-big", "icmpv6 type 2"),
    ("icmpv6 code no-route", "icmpv6 code 0"),
    ("priority raw;", "priority -300;"),
)


def canonical_lines(text: str) -> list[str]:
    """A listing (or :func:`render`) as comparable lines, whatever nft version printed it:
    counter values dropped, symbolic names above as numbers, blanks collapsed, empty lines out.
    Every statement, value and its order still count."""
    out = []
    for line in normalize_listing(text).splitlines():
        line = " ".join(line.split())
        for name, number in _SAME_AS_NUMBER:
            line = line.replace(name, number)
        if line:
            out.append(line)
    return out


# --- the backend ----------------------------------------------------------------------------------
class NftBackend:
    name = "nft"

    def __init__(self, binary: str | None = None):
        self.binary = binary or nft_binary()

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
        if not self.binary:
            raise RulesError("the nft program is not installed (Debian package nftables)")
        try:
            return subprocess.run(
                [self.binary, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                stdin=None if stdin is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise RulesError(f"nft did not finish within {TIMEOUT:.0f} s") from None
        except OSError as exc:
            raise RulesError(f"cannot run nft: {exc.strerror or exc}") from None

    def _load(self, cmds: list[dict]) -> None:
        cp = self._run(["-j", "-f", "-"], json.dumps({"nftables": cmds}))
        if cp.returncode != 0:
            raise RulesError(f"nft refused the rules: {_first_error(cp.stderr)}")

    def available(self) -> tuple[bool, str]:
        if not self.binary:
            return False, "nft is not installed"
        try:
            cp = self._run(["list", "tables"])
        except RulesError as exc:
            return False, str(exc)
        if cp.returncode != 0:
            return False, f"nft list tables failed: {_first_error(cp.stderr)}"
        return True, ""

    def render(self, spec: RuleSpec) -> str:
        return render(spec)

    def render_json(self, spec: RuleSpec) -> str:
        return json.dumps({"nftables": commands(spec)}, indent=1)

    def install(self, spec: RuleSpec) -> None:
        cp = self._run(["-f", "-"], load_script(spec))
        if cp.returncode != 0:
            raise RulesError(f"nft refused the rules: {_first_error(cp.stderr)}")

    def remove(self) -> bool:
        present = self.installed() is not None
        self._load(remove_commands())
        return present

    def installed(self) -> str | None:
        """``nft list table inet pmtud_relay`` (with counters), or None if there is none."""
        cp = self._run(["list", "table", FAMILY, TABLE])
        if cp.returncode != 0:
            if "No such file or directory" in cp.stderr or "does not exist" in cp.stderr:
                return None
            raise RulesError(f"nft list table failed: {_first_error(cp.stderr)}")
        return cp.stdout

    def listing_json(self) -> list[dict]:
        cp = self._run(["-j", "list", "table", FAMILY, TABLE])
        if cp.returncode != 0:
            return []
        try:
            return json.loads(cp.stdout).get("nftables", [])
        except ValueError:
            raise RulesError("nft printed JSON that does not parse") from None

    def counters(self) -> dict[str, int]:
        """Packet counters by :data:`pmtud_relay.rules.COUNTER_KEYS` (zeros if not installed)."""
        out = dict.fromkeys(
            ("matched_v4", "matched_v6", "over_source_limit_v4", "over_source_limit_v6", "over_global_limit", "logged"),
            0,
        )
        for item in self.listing_json():
            rule = item.get("rule")
            if not rule:
                continue
            packets = next((e["counter"].get("packets", 0) for e in rule.get("expr", []) if "counter" in e), 0)
            chain, comment = rule.get("chain"), rule.get("comment")
            if comment == COMMENT_V4:
                out["matched_v4"] += packets
            elif comment == COMMENT_V6:
                out["matched_v6"] += packets
            elif comment == COMMENT_SRC:
                out["over_source_limit_v4" if chain == CHAIN4 else "over_source_limit_v6"] += packets
            elif comment == COMMENT_GLOBAL:
                out["over_global_limit"] += packets
            elif comment == COMMENT_LOG:
                out["logged"] += packets
        return out

    def set_elements(self, family: int = 4) -> list[str]:
        """Source addresses currently held by the per-source set (for tests and debugging)."""
        name = SET4 if family == 4 else SET6
        cp = self._run(["-j", "list", "set", FAMILY, TABLE, name])
        if cp.returncode != 0:
            return []
        out = []
        for item in json.loads(cp.stdout).get("nftables", []):
            for elem in (item.get("set") or {}).get("elem", []) or []:
                val = elem.get("elem", {}).get("val") if isinstance(elem, dict) else elem
                out.append(str(val))
        return out


def _first_error(stderr: str) -> str:
    lines = [text.strip() for text in stderr.splitlines() if text.strip()]
    for line in lines:
        if "Error" in line:
            return line.split("Error:", 1)[-1].strip()
    return lines[0] if lines else "no error message"

"""iptables backend: chains in the ``raw`` tables of iptables and ip6tables, via python-iptables.

python-iptables drives libiptc, i.e. the *legacy* x_tables backend: the rules appear in
``iptables-legacy-save``/``ip6tables-legacy-save``, not in the nft-based ``iptables``
that Debian 12 installs as the default alternative. Layout, per family::

    -A PREROUTING -j PMTUD_RELAY                       (exactly one jump, inserted first)
    -A PMTUD_RELAY -i IF -p icmp -m icmp --icmp-type 3/4 -m pkttype --pkt-type unicast -j PMTUD_RELAY_LOG
    -A PMTUD_RELAY_LOG -m hashlimit --hashlimit-above R/sec ... --hashlimit-mode srcip -j RETURN
    -A PMTUD_RELAY_LOG -m limit --limit G/sec --limit-burst GB -j NFLOG --nflog-group N --nflog-threshold Q

(``--pkt-type unicast`` is how iptables-save spells PACKET_HOST, ``host``.) Packets over
a limit are not logged but go on untouched. The global ``limit`` is per family here
(IPv4 and IPv6 have separate tables), unlike nft's single bucket.

Install and remove each run as one libiptc commit per table, i.e. an atomic replacement
of the raw table of that family: stale jumps and chains from a crashed run are removed
and the new ones added in the same commit.

python-iptables quirks found on iptables 1.8.9 (avoided here): setting ``nflog_prefix``
corrupts memory (segfault on the next rule), ``nflog_size`` is stored as the obsolete
``--nflog-range``, hashlimit's default ``htable-expire`` is left 0 (the kernel answers
EINVAL), and ``Rule6.protocol`` does not know the name ``ipv6-icmp`` (58 works). With
iptables >= 1.8.11 (Debian 13) python-iptables misreads libxtables' option tables, and on every
version it leaves libxtables writing hashlimit's scratch data into freed memory; the backend
fixes both on first use (:mod:`pmtud_relay.rules.iptc_compat`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zlib

from pmtud_relay.rules import iptc_compat
from pmtud_relay.rules.spec import IPTABLES_INSTALL_HINT, RulesError, RuleSpec

CHAIN = "PMTUD_RELAY"
LOG_CHAIN = "PMTUD_RELAY_LOG"
TABLE = "raw"
HOOK_CHAIN = "PREROUTING"


def _rules(spec: RuleSpec, family: int) -> list[tuple[str, dict]]:
    """The rules of one family as (chain, description) pairs; the description feeds both
    the text rendering and python-iptables."""
    if family == 4:
        proto, proto_name, icmp = "1", "icmp", ("icmp", [("icmp_type", "3/4")])
    else:
        proto, proto_name, icmp = "58", "ipv6-icmp", ("icmp6", [("icmpv6_type", "2/0")])
    out: list[tuple[str, dict]] = []
    for ifname in spec.interfaces:
        out.append(
            (
                CHAIN,
                {
                    "in_interface": ifname,
                    "protocol": proto,
                    "protocol_name": proto_name,
                    "matches": [icmp, ("pkttype", [("pkt_type", "unicast")])],
                    "target": (LOG_CHAIN, []),
                },
            )
        )
    out.append(
        (
            LOG_CHAIN,
            {
                "matches": [
                    (
                        "hashlimit",
                        [
                            ("hashlimit_above", f"{spec.source_rate}/sec"),
                            ("hashlimit_burst", str(spec.source_burst)),
                            ("hashlimit_mode", "srcip"),
                            ("hashlimit_name", hashlimit_name(spec, family)),
                            ("hashlimit_htable_max", str(spec.table_size)),
                            ("hashlimit_htable_expire", str(spec.source_timeout * 1000)),
                        ],
                    )
                ],
                "target": ("RETURN", []),
            },
        )
    )
    out.append(
        (
            LOG_CHAIN,
            {
                "matches": [("limit", [("limit", f"{spec.global_rate}/sec"), ("limit_burst", str(spec.global_burst))])],
                "target": ("NFLOG", [("nflog_group", str(spec.group)), ("nflog_threshold", str(spec.qthresh))]),
            },
        )
    )
    return out


def hashlimit_name(spec: RuleSpec, family: int) -> str:
    """The per-source table's name. It carries rate and burst because the kernel reuses an
    existing table of the same name *with its old settings* when rules are replaced."""
    name = f"pmtud{family}_{spec.source_rate}_{spec.source_burst}"
    if len(name) > 15:  # the kernel's limit is IFNAMSIZ - 1
        name = f"pmtud{family}_{zlib.crc32(name.encode()):08x}"
    return name


def _text(chain: str, rule: dict) -> str:
    parts = ["-A", chain]
    if "in_interface" in rule:
        parts += ["-i", rule["in_interface"]]
    if "protocol_name" in rule:
        parts += ["-p", rule["protocol_name"]]
    for name, params in rule["matches"]:
        parts += ["-m", name]
        for key, value in params:
            parts += ["--" + key.replace("_", "-"), value]
    target, params = rule["target"]
    parts += ["-j", target]
    for key, value in params:
        parts += ["--" + key.replace("_", "-"), value]
    return " ".join(parts)


def render_family(spec: RuleSpec, family: int) -> list[str]:
    """The lines ``iptables-legacy-save -t raw`` prints for our chains (family 4 or 6)."""
    lines = [f":{CHAIN} - [0:0]", f":{LOG_CHAIN} - [0:0]", f"-A {HOOK_CHAIN} -j {CHAIN}"]
    lines += [_text(chain, rule) for chain, rule in _rules(spec, family)]
    return lines


def render(spec: RuleSpec) -> str:
    out = ["# iptables -t raw (legacy)"] + render_family(spec, 4)
    out += ["# ip6tables -t raw (legacy)"] + render_family(spec, 6)
    return "\n".join(out) + "\n"


def _saver(family: int) -> str | None:
    name = "iptables-legacy-save" if family == 4 else "ip6tables-legacy-save"
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin"):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


def saved_lines(family: int) -> list[str]:
    """Our lines from ``iptables-legacy-save -t raw`` (chain declarations, jumps and rules),
    counters stripped. Independent of python-iptables, for verification."""
    prog = _saver(family)
    if prog is None:
        raise RulesError(f"{'ip6' if family == 6 else 'ip'}tables-legacy-save is not installed")
    cp = subprocess.run([prog, "-t", TABLE], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    if cp.returncode != 0:
        raise RulesError(f"{prog} failed: {cp.stderr.strip()}")
    out = []
    for line in cp.stdout.splitlines():
        if line.startswith((f":{CHAIN} ", f":{LOG_CHAIN} ")):
            out.append(line.split(" [", 1)[0] + " [0:0]")
        elif line.startswith(("-A " + CHAIN + " ", "-A " + LOG_CHAIN + " ")) or line == f"-A {HOOK_CHAIN} -j {CHAIN}":
            out.append(line)
        elif line.startswith("-A ") and (f"-j {CHAIN}" in line.split() or f"-g {CHAIN}" in line):
            out.append(line)
    return out


class IptcIncompatible(RulesError):
    """python-iptables loads but cannot drive this libxtables (an ABI it does not know)."""


def check_iptc_abi(iptc) -> None:
    """Refuse a python-iptables that misreads this libxtables' extension option tables.

    python-iptables (1.2.0 measured; Debian 13's 1.0.1 fails the same way) assumes 48-byte
    ``struct xt_option_entry`` entries;
    the libxtables of iptables 1.8.11 (Debian 13) has 56-byte ones, so python-iptables sees only
    each extension's first option and every rule we build fails with "hashlimit: no such
    parameter hashlimit-above". iptc_compat adapts python-iptables to that layout first; this
    probes, once and without touching the kernel, that the options now read right (a layout
    neither knows is refused here with a sentence instead of failing at the first rule)."""
    try:
        iptc.Rule().create_match("hashlimit").hashlimit_above = "1/sec"
    except Exception as exc:  # noqa: BLE001 - iptc.XTablesError, or AttributeError from an older iptc
        try:
            from importlib.metadata import version as dist_version

            version = dist_version("python-iptables")
        except Exception:  # noqa: BLE001 - not installed as a distribution
            version = "?"
        raise IptcIncompatible(
            f"python-iptables {version} cannot use this system's libxtables ({exc}); "
            "it misreads the extension option tables of newer iptables (measured with 1.8.11, "
            "Debian 13): use the nft backend"
        ) from None


class IptablesBackend:
    name = "iptables"

    def __init__(self):
        self._iptc = None

    def _lib(self):
        if self._iptc is None:
            try:
                import iptc  # python-iptables: the optional extra pmtud-relay[iptables]
            except ImportError as exc:
                raise RulesError(f"python-iptables is not installed ({exc}); {IPTABLES_INSTALL_HINT}") from None
            except Exception as exc:  # OSError when libiptc/libxtables is missing
                raise RulesError(f"python-iptables cannot be loaded: {exc}") from None
            try:
                iptc_compat.adapt(iptc.xtables)  # libxtables >= 1.8.11 (Debian 13): see iptc_compat
            except AttributeError as exc:
                raise RulesError(
                    "this python-iptables cannot be adapted to the option layout of libxtables >= 1.8.11"
                    f" ({exc}); use the nft backend"
                ) from None
            try:
                iptc_compat.keep_udata(iptc.ip4tc)  # before the probe: it parses a hashlimit option
            except AttributeError as exc:
                raise RulesError(
                    f"this python-iptables cannot be fixed to keep extension data allocated ({exc});"
                    " use the nft backend"
                ) from None
            check_iptc_abi(iptc)  # and refuse clearly if the options still read wrong
            self._iptc = iptc
        return self._iptc

    def _table(self, family: int):
        iptc = self._lib()
        try:
            table = iptc.Table(TABLE) if family == 4 else iptc.Table6(TABLE)
        except Exception as exc:  # iptc.IPTCError: the kernel has no legacy raw table
            which = "ip6" if family == 6 else "ip"
            raise RulesError(f"the legacy {which}tables raw table is not available: {exc}") from None
        table.autocommit = False
        table.refresh()
        return table

    def available(self) -> tuple[bool, str]:
        try:
            for family in (4, 6):
                self._table(family)
        except RulesError as exc:
            return False, str(exc)
        return True, ""

    def render(self, spec: RuleSpec) -> str:
        return render(spec)

    # -- changes ------------------------------------------------------------------------------------
    def _clear(self, table) -> bool:
        """Stage removal of our jump(s) and chains in ``table``; True if anything was there."""
        iptc = self._iptc
        found = False
        hook = iptc.Chain(table, HOOK_CHAIN)
        for rule in list(hook.rules):
            if rule.target is not None and rule.target.name in (CHAIN, LOG_CHAIN):
                hook.delete_rule(rule)
                found = True
        for name in (CHAIN, LOG_CHAIN):
            if table.is_chain(name):
                iptc.Chain(table, name).flush()
                found = True
        for name in (CHAIN, LOG_CHAIN):
            if table.is_chain(name):
                table.delete_chain(name)
        return found

    def _build_rule(self, family: int, desc: dict):
        iptc = self._iptc
        rule = iptc.Rule() if family == 4 else iptc.Rule6()
        if "in_interface" in desc:
            rule.in_interface = desc["in_interface"]
        if "protocol" in desc:
            rule.protocol = desc["protocol"]
        keep = []  # the match objects must outlive the rule's serialisation
        for name, params in desc["matches"]:
            match = rule.create_match(name)
            for key, value in params:
                setattr(match, key, value)
            keep.append(match)
        target_name, params = desc["target"]
        target = rule.create_target(target_name)
        for key, value in params:
            setattr(target, key, value)
        return rule, keep, target

    def _commit(self, table, what: str) -> None:
        try:
            table.commit()
        except Exception as exc:
            try:
                table.refresh()  # drop the staged changes
            except Exception:  # noqa: BLE001
                pass
            raise RulesError(f"{what} failed: {exc}") from None

    def install(self, spec: RuleSpec) -> None:
        self._lib()
        for family in (4, 6):
            table = self._table(family)
            try:
                self._clear(table)
                table.create_chain(CHAIN)
                table.create_chain(LOG_CHAIN)
                keep = []
                for chain_name, desc in _rules(spec, family):
                    rule, matches, target = self._build_rule(family, desc)
                    self._iptc.Chain(table, chain_name).append_rule(rule)
                    keep.append((rule, matches, target))
                jump = self._iptc.Rule() if family == 4 else self._iptc.Rule6()
                jump_target = jump.create_target(CHAIN)
                self._iptc.Chain(table, HOOK_CHAIN).insert_rule(jump)
                keep.append((jump, [], jump_target))
            except RulesError:
                raise
            except Exception as exc:
                table.refresh()
                raise RulesError(f"building the {'ip6' if family == 6 else 'ip'}tables rules failed: {exc}") from None
            self._commit(table, f"installing the {'ip6' if family == 6 else 'ip'}tables rules")

    def remove(self) -> bool:
        self._lib()
        found = False
        for family in (4, 6):
            table = self._table(family)
            if self._clear(table):
                found = True
                self._commit(table, f"removing the {'ip6' if family == 6 else 'ip'}tables rules")
            else:
                table.refresh()
        return found

    # -- reading --------------------------------------------------------------------------------------
    def installed(self) -> str | None:
        """Our lines from iptables-legacy-save for both families, or None if there are none."""
        lines = []
        for family in (4, 6):
            got = saved_lines(family)
            if got:
                lines.append(f"# {'ip6' if family == 6 else 'ip'}tables -t raw (legacy)")
                lines += got
        return "\n".join(lines) + "\n" if lines else None

    def chain_counters(self, family: int) -> dict[str, list[int]]:
        """Packet counters of every rule in our chains and the hook jumps, by chain."""
        table = self._table(family)
        out: dict[str, list[int]] = {}
        for name in (HOOK_CHAIN, CHAIN, LOG_CHAIN):
            if not table.is_chain(name):
                continue
            chain = self._iptc.Chain(table, name)
            out[name] = [
                rule.get_counters()[0]
                for rule in chain.rules
                if name != HOOK_CHAIN or (rule.target is not None and rule.target.name == CHAIN)
            ]
        return out

    def counters(self) -> dict[str, int]:
        """Packet counters by :data:`pmtud_relay.rules.COUNTER_KEYS`. The global-limit count is
        derived: matched minus over-source minus logged (NFLOG does not end the chain)."""
        out = dict.fromkeys(
            ("matched_v4", "matched_v6", "over_source_limit_v4", "over_source_limit_v6", "over_global_limit", "logged"),
            0,
        )
        for family in (4, 6):
            c = self.chain_counters(family)
            matched = sum(c.get(CHAIN, []))
            log = c.get(LOG_CHAIN, [0, 0])
            over_src = log[0] if log else 0
            logged = log[1] if len(log) > 1 else 0
            out[f"matched_v{family}"] = matched
            out[f"over_source_limit_v{family}"] = over_src
            out["logged"] += logged
            out["over_global_limit"] += max(0, matched - over_src - logged)
        return out

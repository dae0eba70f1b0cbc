"""Is a relay running here, are its rules installed, which VIPs would it serve?

Read-only and best effort: processes come from ``<proc_root>/*/cmdline`` (and ``environ``
for ``PMTUD_RELAY_*`` settings, when readable); rules from ``nft list table inet
pmtud_relay`` and ``iptables -t raw -S PMTUD_RELAY`` (the NFLOG capture's rules; missing
binaries or permissions are reported, never fatal). Settings in a config file are not
parsed: when one may be in play, checks that depend on it say so instead of guessing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pmtud_relay.doctor.findings import Finding, Severity

NFT_TABLE = ("inet", "pmtud_relay")
IPT_CHAIN = "PMTUD_RELAY"
IPT_TABLES = ("raw", "mangle", "filter")  # the relay uses raw; the others catch hand-made copies
DEFAULT_CONFIG = "/etc/pmtud-relay/config.toml"
ENV_PREFIX = "PMTUD_RELAY_"
_RELAY_COMMANDS = {"run", "dry-run"}
CMD_TIMEOUT = 5.0


@dataclass(frozen=True)
class RelayProcess:
    pid: int
    argv: tuple[str, ...]
    command: str  # run / dry-run
    same_netns: bool | None  # None: could not tell
    environ: tuple[tuple[str, str], ...] = ()  # PMTUD_RELAY_* variables, when readable

    def _option(self, name: str) -> list[str]:
        out = []
        argv = self.argv
        for i, a in enumerate(argv):
            if a == name and i + 1 < len(argv):
                out.append(argv[i + 1])
            elif a.startswith(name + "="):
                out.append(a.split("=", 1)[1])
        return out

    @property
    def env(self) -> dict[str, str]:
        return dict(self.environ)

    @property
    def vips(self) -> list[str]:
        """VIPs given on the command line or in PMTUD_RELAY_VIPS."""
        out = self._option("--vip")
        env = self.env.get(ENV_PREFIX + "VIPS")
        if env:
            out += [v.strip() for v in env.split(",") if v.strip()]
        return out

    @property
    def capture(self) -> str | None:
        """afpacket / nflog when visible on the command line or in the environment, else None."""
        opt = self._option("--capture")
        if opt:
            return opt[-1]
        return self.env.get(ENV_PREFIX + "CAPTURE")

    @property
    def nflog_group(self) -> int | None:
        """The NFLOG group from --nflog-group / PMTUD_RELAY_NFLOG_GROUP; None: the default or a config file."""
        for text in self._option("--nflog-group")[-1:] or [self.env.get(ENV_PREFIX + "NFLOG_GROUP", "")]:
            if text.strip().isdigit():
                return int(text)
        return None

    @property
    def config_file(self) -> str | None:
        """A config file that may set what the command line does not show."""
        opt = self._option("--config")
        if opt:
            return opt[-1]
        if self.env.get(ENV_PREFIX + "CONFIG"):
            return self.env[ENV_PREFIX + "CONFIG"]
        return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def _relay_command(argv: list[str]) -> str | None:
    """'run'/'dry-run' if ``argv`` is a pmtud-relay daemon, else None."""
    for i, arg in enumerate(argv):
        module = i > 0 and argv[i - 1] == "-m" and arg in ("pmtud_relay", "pmtud_relay.cli", "pmtud_relay.__main__")
        if os.path.basename(arg) == "pmtud-relay" or module:
            for later in argv[i + 1:]:
                if later in _RELAY_COMMANDS:
                    return later
                if not later.startswith("-"):
                    return None  # another subcommand (doctor, analyze, lab)
            return None
    return None


def find_relays(proc_root: str | Path = "/proc", own_pid: int | None = None) -> list[RelayProcess]:
    root = Path(proc_root)
    own_pid = os.getpid() if own_pid is None else own_pid
    try:
        own_ns = os.readlink(root / "self" / "ns" / "net")
    except OSError:
        own_ns = None
    found: list[RelayProcess] = []
    parents: dict[int, int | None] = {}
    try:
        entries = list(root.iterdir())
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == own_pid:
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        command = _relay_command(argv)
        if command is None:
            continue
        try:
            same = os.readlink(entry / "ns" / "net") == own_ns if own_ns else None
        except OSError:
            same = None
        environ: list[tuple[str, str]] = []
        try:
            for item in (entry / "environ").read_bytes().split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep and key.startswith(ENV_PREFIX):
                    environ.append((key, value))
        except OSError:
            pass
        found.append(RelayProcess(int(entry.name), tuple(argv), command, same, tuple(environ)))
        parents[int(entry.name)] = _ppid(entry)
    # A wrapper (strace, timeout, sudo, systemd-run ...) whose argv contains the relay's is
    # not a second relay: keep the innermost process.
    wrappers = {parents[p.pid] for p in found if parents.get(p.pid)}
    return sorted((p for p in found if p.pid not in wrappers), key=lambda p: p.pid)


def _ppid(entry: Path) -> int | None:
    try:
        stat = (entry / "stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def check_process(relays: list[RelayProcess]) -> Finding:
    here = [p for p in relays if p.same_netns is not False]
    elsewhere = [p for p in relays if p.same_netns is False]
    data = {"here": [{"pid": p.pid, "command": p.command, "argv": list(p.argv)} for p in here],
            "other_netns": [p.pid for p in elsewhere]}
    note = f" ({len(elsewhere)} more in other network namespaces)" if elsewhere else ""
    if not here:
        return Finding(
            "relay.process", Severity.INFO, "no pmtud-relay daemon in this network namespace" + note,
            "Servers behind an ECMP router need a relay on the segment to get the PTBs the router hashes to "
            "the wrong server; a host that only receives copies does not need one.", "", data)
    dry = [p for p in here if p.command == "dry-run"]
    if dry and len(dry) == len(here):
        return Finding(
            "relay.process", Severity.INFO,
            "pmtud-relay running in dry-run mode only (pid " + ", ".join(str(p.pid) for p in dry)
            + "): nothing is relayed" + note,
            "", "start `pmtud-relay run` when the dry-run decisions look right", data)
    return Finding(
        "relay.process", Severity.OK,
        "pmtud-relay running: " + "; ".join(
            f"pid {p.pid} {p.command}" + (f" (capture {p.capture})" if p.capture else "") for p in here) + note,
        data=data)


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        return -1, str(exc)
    return proc.returncode, (proc.stdout or "") + (proc.stderr or "")


_NFT_GROUP = re.compile(r"\blog\b[^\n]*?\bgroup (\d+)")
# nft list lines that are structure, not rules
_NFT_NOT_RULES = ("table", "chain", "type", "}", "policy", "set", "elements", "flags", "size", "timeout")
_IPT_GROUP = re.compile(r"--nflog-group (\d+)")


def _default_group() -> int | None:
    try:
        from pmtud_relay.nflog.capture import DEFAULT_GROUP
    except Exception:  # pragma: no cover - NFLOG capture not available in this build
        return None
    return DEFAULT_GROUP


def check_rules(which=shutil.which, run=_run, relays: Sequence[RelayProcess] = ()) -> Finding:
    found: list[str] = []
    notes: list[str] = []
    groups: set[int] = set()
    checked = 0  # tools that answered (not missing, not refused)
    nft = which("nft")
    if nft:
        rc, out = run([nft, "list", "table", *NFT_TABLE])
        if not ("Operation not permitted" in out or "Permission denied" in out):
            checked += 1
        if rc == 0:
            rules = sum(1 for line in out.splitlines()
                        if line.strip() and not line.strip().startswith(_NFT_NOT_RULES))
            found.append(f"nft table {' '.join(NFT_TABLE)} ({rules} rules)")
            groups.update(int(g) for g in _NFT_GROUP.findall(out))
        elif "Operation not permitted" in out or "Permission denied" in out:
            notes.append("nft: not permitted (run as root)")
    else:
        notes.append("nft not installed")
    seen_paths: set[tuple[str, bool]] = set()  # (real binary, IPv6): multi-call binaries serve both
    for tool in ("iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy"):
        path = which(tool)
        if not path:
            if "legacy" not in tool:
                notes.append(f"{tool} not installed")
            continue
        key = (os.path.realpath(path), tool.startswith("ip6"))
        if key in seen_paths:  # e.g. iptables-legacy when iptables already is the legacy one
            continue
        seen_paths.add(key)
        for table in IPT_TABLES:
            rc, out = run([path, "-w", "2", "-t", table, "-S", IPT_CHAIN])
            if table == IPT_TABLES[0] and not ("Permission denied" in out or "you must be root" in out):
                checked += 1
            if rc == 0:
                rules = sum(1 for line in out.splitlines() if line.startswith("-A "))
                found.append(f"{tool} -t {table} chain {IPT_CHAIN} ({rules} rules)")
                if table == "raw":  # the log rules live in the companion chain
                    _, log_out = run([path, "-w", "2", "-t", table, "-S", IPT_CHAIN + "_LOG"])
                    groups.update(int(g) for g in _IPT_GROUP.findall(out + log_out))
            elif "Permission denied" in out or "you must be root" in out:
                notes.append(f"{tool}: not permitted (run as root)")
                break
    data = {"found": found, "notes": notes, "nflog_groups": sorted(groups)}
    nflog = [p for p in relays if p.same_netns is not False and p.capture == "nflog"]
    if nflog and found and groups:
        default = _default_group()
        asked = {p.nflog_group if p.nflog_group is not None else default for p in nflog if not
                 (p.nflog_group is None and p.config_file)}
        wanted = {g for g in asked if g is not None}
        missing = sorted(wanted - groups)
        if missing:
            return Finding(
                "relay.rules", Severity.WARNING,
                f"the rules log to NFLOG group {', '.join(map(str, sorted(groups)))} but the relay reads group "
                f"{', '.join(map(str, missing))}",
                "The relay receives only what is logged to its own group; these rules feed another one, so it "
                "sees no PTBs.",
                "reinstall the rules with the daemon's group: pmtud-relay rules install --nflog-group "
                + str(missing[0]), data)
    if nflog and not found:
        return Finding(
            "relay.rules", Severity.WARNING if checked else Severity.INFO,
            "a relay captures with NFLOG (pid " + ", ".join(str(p.pid) for p in nflog) + ") but no pmtud-relay "
            "rules were found" + (f" [{'; '.join(notes)}]" if notes else ""),
            "With --capture nflog the relay only sees the PTBs its firewall rules log to the NFLOG group; "
            "without the rules it receives nothing and every PTB stays where the router sent it.",
            "pmtud-relay rules install (same -i/--nflog-group as the daemon), or run the daemon with --manage-rules",
            data)
    if found:
        return Finding("relay.rules", Severity.OK, "relay rules installed: " + "; ".join(found), "", "", data)
    return Finding(
        "relay.rules", Severity.INFO,
        "no pmtud-relay firewall rules (nft table inet pmtud_relay / chain PMTUD_RELAY)"
        + (f" [{'; '.join(notes)}]" if notes else ""),
        "Rules are needed only for --capture nflog; the default AF_PACKET capture needs none.", "", data)


def check_vips(vips: list | None, relays: list[RelayProcess], error: str | None = None) -> Finding:
    running_without_vip = [p for p in relays if p.same_netns is not False and not p.vips and not p.config_file]
    if error:
        return Finding("relay.vips", Severity.INFO, f"service addresses not discovered: {error}")
    data = {"vips": [str(v) for v in vips or []]}
    if vips:
        return Finding("relay.vips", Severity.INFO,
                       f"{len(vips)} service address(es) on lo/dummy: " + ", ".join(str(v) for v in vips[:8])
                       + (" ..." if len(vips) > 8 else ""),
                       "The relay relays only PTBs about packets sent from these (or from --vip).", "", data)
    if running_without_vip:
        return Finding(
            "relay.vips", Severity.WARNING,
            "a relay runs here without --vip and no service addresses are on lo or dummy interfaces",
            "It discovers VIPs from lo and dummy interfaces; with none found, every PTB is dropped as not_vip.",
            "add the VIPs to lo (ip addr add VIP/32 dev lo) or pass --vip PREFIX", data)
    return Finding("relay.vips", Severity.INFO, "no service addresses (VIPs) on lo or dummy interfaces",
                   "A relay here would need --vip.", "", data)

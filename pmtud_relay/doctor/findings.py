"""Findings: what a doctor check reports, how it is rendered, and the exit code."""

from __future__ import annotations

import enum
import json
import shutil
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field


class Severity(enum.IntEnum):
    """Ordered: a report's worst severity sets the exit code."""

    OK = 0
    INFO = 1
    WARNING = 2
    CRITICAL = 3

    def __str__(self) -> str:
        return self.name.lower()


#: Exit codes (documented in docs/doctor-and-analyze.md).
EXIT_OK = 0  # only ok/info findings
EXIT_WARNING = 1  # at least one warning, no critical
EXIT_CRITICAL = 2  # at least one critical finding


@dataclass(frozen=True)
class Finding:
    """One result. ``check`` is a stable dotted name (``sysctl.rp_filter``).

    ``summary`` is one line; ``detail`` explains what it means for PMTUD and the relay;
    ``fix`` is what to run or change ("" when nothing is needed); ``data`` carries the
    raw values for machine consumers.
    """

    check: str
    severity: Severity
    summary: str
    detail: str = ""
    fix: str = ""
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "check": self.check,
            "severity": str(self.severity),
            "summary": self.summary,
            "detail": self.detail,
            "fix": self.fix,
            "data": self.data,
        }


def worst(findings: Iterable[Finding]) -> Severity:
    return max((f.severity for f in findings), default=Severity.OK)


def exit_code(findings: Iterable[Finding]) -> int:
    sev = worst(findings)
    if sev >= Severity.CRITICAL:
        return EXIT_CRITICAL
    if sev >= Severity.WARNING:
        return EXIT_WARNING
    return EXIT_OK


def to_json(findings: Iterable[Finding]) -> str:
    return json.dumps([f.to_dict() for f in findings], indent=2)


_LABEL = {
    Severity.OK: "ok",
    Severity.INFO: "info",
    Severity.WARNING: "WARNING",
    Severity.CRITICAL: "CRITICAL",
}
_COLOUR = {Severity.OK: "32", Severity.INFO: "36", Severity.WARNING: "33", Severity.CRITICAL: "1;31"}


def _indent(text: str, prefix: str, width: int = 0) -> str:
    """Indent ``text``; wrap its prose lines (not those starting with a space) to ``width``."""
    out = []
    for line in text.splitlines():
        if width and line and not line.startswith(" ") and len(prefix) + len(line) > width:
            out.extend(textwrap.wrap(line, width, initial_indent=prefix, subsequent_indent=prefix,
                                     break_on_hyphens=False, break_long_words=False))
        else:
            out.append(prefix + line if line else line)
    return "\n".join(out)


def render_text(findings: list[Finding], colour: bool | None = None, verbose: bool = True) -> str:
    """Terminal rendering: worst first within the original check order, then a tally."""
    if colour is None:
        colour = sys.stdout.isatty()
    width = min(shutil.get_terminal_size((100, 24)).columns, 110)
    order = sorted(range(len(findings)), key=lambda i: (-findings[i].severity, i))
    out: list[str] = []
    for i in order:
        f = findings[i]
        label = f"{_LABEL[f.severity]:<8}"
        if colour:
            label = f"\033[{_COLOUR[f.severity]}m{label}\033[0m"
        out.append(f"{label} {f.check}: {f.summary}")
        if verbose and f.detail:
            out.append(_indent(f.detail, "         ", width))
        if f.fix:
            out.append(_indent("fix: " + f.fix, "         ", width))
        if verbose and (f.detail or f.fix):
            out.append("")
    tally = {s: 0 for s in Severity}
    for f in findings:
        tally[f.severity] += 1
    out.append(
        f"{len(findings)} findings: {tally[Severity.CRITICAL]} critical, {tally[Severity.WARNING]} warning, "
        f"{tally[Severity.INFO]} info, {tally[Severity.OK]} ok"
    )
    return "\n".join(out).rstrip("\n") + "\n"

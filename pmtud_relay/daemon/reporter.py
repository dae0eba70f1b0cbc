"""Dry-run output: one decision line per PTB (logfmt, or JSON), for the packet path and the owner
verdicts that complete a relayed PTB's line (confirmation.py)."""

from __future__ import annotations

from typing import Any, TextIO

from pmtud_relay.core.relay import Decision
from pmtud_relay.report import decision_record, logfmt, to_json


class Reporter:
    """Dry-run decision lines (logfmt, or JSON) on ``out``."""

    def __init__(self, out: TextIO, json_output: bool):
        self.out = out
        self.json_output = json_output

    def report(self, decision: Decision, ifname: str, **extra: Any) -> None:
        rec = decision_record(decision, ifname)
        if extra:
            if extra.get("origin") == "l2_copy":  # another relay's copy: looked up, never relayed
                rec["verdict"] = "look_up" if decision.relay else "drop"
                if decision.relay:
                    rec["reason"] = "l2_copy"
            rec.update(extra)
        line = to_json(rec) if self.json_output else logfmt(rec)
        self.out.write(line + "\n")
        self.out.flush()

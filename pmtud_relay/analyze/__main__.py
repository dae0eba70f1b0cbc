"""``python -m pmtud_relay.analyze FILE ...``: the same as ``pmtud-relay analyze``."""

from pmtud_relay.analyze.command import cli

raise SystemExit(cli())

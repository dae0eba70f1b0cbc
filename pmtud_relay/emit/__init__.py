"""Emit adapters: put relayed copies on the wire (or, in dry-run, nowhere)."""

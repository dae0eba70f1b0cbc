"""Text made from the schema: the effective configuration (``pmtud-relay config check``), the
reference table in docs/configuration.md and the example configuration file
(``python -m pmtud_relay.config --write-docs FILE`` / ``--write-example FILE``)."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Mapping
from typing import Any

from pmtud_relay.config.parsers import num
from pmtud_relay.config.schema import DEFAULT_PATH, GROUP_TITLES, SCHEMA, ConfigError, default_text
from pmtud_relay.config.sources import Loaded, load


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v if isinstance(v, (int, float, str)) else str(v)) for v in value) + "]"
    s = str(value)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(loaded: Loaded) -> str:
    """The effective configuration as TOML, each line commented with the value's source."""
    lines = [
        "# effective configuration of pmtud-relay (precedence: flag > environment > file > default)",
        f"# file: {loaded.path or 'none'}",
    ]
    body = [(f"{k.name} = {toml_value(getattr(loaded.settings, k.name))}", loaded.sources[k.name]) for k in SCHEMA]
    width = max(len(text) for text, _ in body)
    lines += [f"{text:<{width}}  # {src}" for text, src in body]
    return "\n".join(lines) + "\n"


def check(path: str, environ: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """``pmtud-relay config check FILE``: (ok, text). text is the effective configuration
    (file + ``PMTUD_RELAY_*`` environment + defaults) or the error message."""
    try:
        loaded = load(None, environ, path=path)
    except ConfigError as exc:
        return False, f"{exc}\n"
    return True, render(loaded)


# -- docs ----------------------------------------------------------------------------------

DOC_BEGIN = "<!-- BEGIN GENERATED: config keys (python -m pmtud_relay.config --write-docs docs/configuration.md) -->"
DOC_END = "<!-- END GENERATED: config keys -->"


def markdown_table() -> str:
    """The reference table of every key, as docs/configuration.md carries it."""
    rows = [
        "| key | flag | environment variable | type | default | SIGHUP | meaning |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k in SCHEMA:
        flags = [k.flag] + (["--no-" + k.flag[2:]] if k.kind is bool else []) + list(k.aliases)
        if k.kind is list:
            item_kinds: dict[type | None, str] = {str: "list of strings", int: "list of integers"}
            kind = item_kinds.get(k.item, "list of prefixes")
            if k.env_sep is None:
                kind += " (env: blank-separated)"
        else:
            kind = {int: "integer", float: "number", bool: "boolean", str: "string"}[k.kind]
        if k.metavar and "|" in k.metavar:
            kind = "one of " + ", ".join(f"`{c}`" for c in k.metavar.split("|"))
        default = default_text(k)
        default = f"`{default}`" if k.doc_default is None else default
        reload_text = "applied" if k.reload == "live" else "restart"
        meaning = k.help.replace('|', '/')
        if k.maximum is not None:
            meaning += f" (at most {num(k.maximum)})"
        rows.append(
            f"| `{k.name}` | {', '.join(f'`{f}`' for f in flags)} | `{k.env}` | {kind} | {default} "
            f"| {reload_text} | {meaning} |"
        )
    return "\n".join(rows)


def sync_docs(text: str) -> str:
    """``text`` with the generated block between the markers replaced by :func:`markdown_table`."""
    start = text.index(DOC_BEGIN) + len(DOC_BEGIN)
    end = text.index(DOC_END)
    return text[:start] + "\n" + markdown_table() + "\n" + text[end:]


EXAMPLE_HEADER = f"""\
# {DEFAULT_PATH}: configuration of pmtud-relay.
#
# Every key is listed below, commented out, at its default: uncomment a line to change it.
# Flags of `pmtud-relay run` and PMTUD_RELAY_* environment variables override this file;
# `systemctl reload pmtud-relay` (SIGHUP) applies the keys marked "reload: applied" and keeps
# the running settings if the file is invalid. Check a change first with
#   pmtud-relay config check {DEFAULT_PATH}
# Reference: /usr/share/doc/pmtud-relay/docs/configuration.md (man pmtud-relay)
#
# Generated from the code's schema: python -m pmtud_relay.config --write-example FILE
"""


def example_toml() -> str:
    """The example configuration file: every key, commented out, at its default, with its help
    text, flag and environment variable. Packages install it as :data:`DEFAULT_PATH`."""
    lines = [EXAMPLE_HEADER.rstrip("\n")]
    group = None
    for k in SCHEMA:
        if k.group != group:
            group = k.group
            lines += ["", f"## {GROUP_TITLES.get(group, group)}"]
        about = k.help[0].upper() + k.help[1:] + "."
        if k.doc_default is not None:
            about += f" Default: {k.doc_default}."
        about += f" Flag {k.flag}, environment {k.env}; reload: "
        about += "applied." if k.reload == "live" else "needs a restart."
        lines.append("")
        lines += textwrap.wrap(about, width=98, initial_indent="# ", subsequent_indent="# ",
                               break_on_hyphens=False, break_long_words=False)
        lines.append(f"#{k.name} = {toml_value(k.default)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pmtud_relay.config")
    p.add_argument("--write-docs", metavar="FILE", help="regenerate the key table in FILE")
    p.add_argument("--write-example", metavar="FILE",
                   help="write the example configuration (every key commented at its default) to FILE ('-': stdout)")
    p.add_argument("--check", metavar="FILE", help="validate FILE and print the effective config")
    a = p.parse_args(argv)
    if a.write_docs:
        with open(a.write_docs, encoding="utf-8") as f:
            old = f.read()
        new = sync_docs(old)
        if new != old:
            with open(a.write_docs, "w", encoding="utf-8") as f:
                f.write(new)
        return 0
    if a.write_example:
        if a.write_example == "-":
            sys.stdout.write(example_toml())
        else:
            with open(a.write_example, "w", encoding="utf-8") as f:
                f.write(example_toml())
        return 0
    if a.check:
        ok, text = check(a.check)
        (sys.stdout if ok else sys.stderr).write(text)
        return 0 if ok else 2
    print(markdown_table())
    return 0

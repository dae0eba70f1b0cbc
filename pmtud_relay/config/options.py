"""Command-line options built from the schema, for every command that takes settings.

``--`` + name with ``_`` → ``-``; lists are repeatable flags; booleans are ``--x`` / ``--no-x``.
Every default is :data:`~.sources.UNSET` ("not given"), so :func:`.sources.load` can tell a
flag from a default and merge it over the environment and the file. ``run`` and ``dry-run``
take every key (:func:`add_arguments`); ``analyze`` and ``rules`` take the keys they use
(:func:`add_key`), with the same parsing, bounds and help.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any, Callable

from pmtud_relay.config.parsers import num
from pmtud_relay.config.schema import (
    DEFAULT_PATH,
    ENV_CONFIG,
    GROUP_TITLES,
    KEYS,
    SCHEMA,
    Key,
    default_text,
)
from pmtud_relay.config.sources import FLAGS_USED, UNSET


def _note_flag(namespace: argparse.Namespace, action: argparse.Action, option_string: str | None) -> None:
    """Record the flag a value came from, for the messages that name it: a short option
    (``-i``) by its first long spelling (``--interface``), which the docs can be searched for."""
    if option_string and not option_string.startswith("--"):
        option_string = next((o for o in action.option_strings if o.startswith("--")), option_string)
    dest = action.dest
    used = getattr(namespace, FLAGS_USED, None)
    if used is None:
        used = {}
        setattr(namespace, FLAGS_USED, used)
    if option_string:
        used[dest] = option_string


class _Store(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _note_flag(namespace, self, option_string)


class _Append(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, UNSET)
        items = [] if current is UNSET or current is None else list(current)
        items.append(values)
        setattr(namespace, self.dest, items)
        _note_flag(namespace, self, option_string)


class _Bool(argparse.Action):
    def __init__(self, option_strings, dest, **kw):
        kw["nargs"] = 0
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not (option_string or "").startswith("--no-"))
        _note_flag(namespace, self, option_string)


def _flag_type(key: Key) -> Callable[[str], Any]:
    """argparse ``type=``: parse and check one flag value (one item for lists), so a bad flag
    fails at parse time with argparse's usual ``argument --x: reason`` (exit status 2)."""

    def convert(text: str) -> Any:
        try:
            value = key.parse(text)
            if key.check is not None:
                key.check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    convert.__name__ = key.name
    return convert


def help_text(key: Key, env: bool = True) -> str:
    """The option's help: the schema's text, default and maximum (and environment variable,
    for commands that read the environment)."""
    limit = f"; at most {num(key.maximum)}" if key.maximum is not None else ""
    return f"{key.help} (default {default_text(key)}{limit}" + (f"; env {key.env})" if env else ")")


def add_key(container: Any, key: Key | str, *, flags: Sequence[str] | None = None,
            check_at_parse: bool = True, help: str | None = None) -> None:
    """Add one schema key to a parser, argument group or mutually exclusive group.

    ``flags`` replaces the key's own spellings (``rules --backend`` for ``rules_backend``).
    With ``check_at_parse`` a bad value makes argparse exit with status 2 naming the flag;
    without, the text is kept and :func:`.sources.load` refuses it with a ConfigError naming
    the flag (for commands that report errors themselves, like ``analyze``)."""
    if isinstance(key, str):
        key = KEYS[key]
    text = help_text(key) if help is None else help
    kind_kw: dict[str, Any] = {"type": _flag_type(key)} if check_at_parse else {}
    if key.kind is bool:
        names = list(flags) if flags else [key.flag, "--no-" + key.flag[2:], *key.aliases]
        container.add_argument(*names, dest=key.name, action=_Bool, default=UNSET, help=text)
    elif key.kind is list:
        names = list(flags) if flags else [*key.aliases, key.flag]
        container.add_argument(*names, dest=key.name, action=_Append, default=UNSET,
                               metavar=key.metavar, help=text if "repeatable" in text else text + "; repeatable",
                               **kind_kw)
    else:
        names = list(flags) if flags else [key.flag, *key.aliases]
        container.add_argument(*names, dest=key.name, action=_Store, default=UNSET,
                               metavar=key.metavar, help=text, **kind_kw)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=UNSET, metavar="FILE",
        help=f"TOML configuration file (default {DEFAULT_PATH} if it exists; must exist when "
        f"named; \"\" reads none); also {ENV_CONFIG}",
    )


def add_arguments(parser: argparse.ArgumentParser, keys: Iterable[str] | None = None, *,
                  config: bool = True, check_at_parse: bool = True) -> None:
    """Add ``--config`` (unless ``config`` is false) and one option per schema key (every key,
    or those named in ``keys``), grouped as in the schema. Every default is :data:`UNSET`."""
    if config:
        add_config_option(parser)
    wanted = None if keys is None else set(keys)
    groups: dict[str, Any] = {}
    for key in SCHEMA:
        if wanted is not None and key.name not in wanted:
            continue
        g = groups.get(key.group)
        if g is None:
            g = groups[key.group] = parser.add_argument_group(GROUP_TITLES.get(key.group, key.group))
        add_key(g, key, check_at_parse=check_at_parse)

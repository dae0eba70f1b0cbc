"""Configuration: one schema table, four sources (flag > environment > TOML file > default).

Every setting is described once, in :data:`SCHEMA` (.schema). From that table come

* the command-line options of every command that takes settings (.options): ``--`` + name with
  ``_`` → ``-``; lists are repeatable flags; booleans are ``--x`` / ``--no-x``;
* the environment variables: ``PMTUD_RELAY_`` + NAME in upper case; lists comma-separated;
  booleans ``true``/``false``/``1``/``0``/``yes``/``no``/``on``/``off``;
* the TOML file keys (flat, snake_case) read from :data:`DEFAULT_PATH` when it exists, or from
  the file ``--config`` / ``PMTUD_RELAY_CONFIG`` names (which then must exist; an empty name
  means "no file"), merged with the others by :func:`load` (.sources);
* the :class:`Settings` record, and from it every record a component takes (.records):
  :func:`relay_config`, :func:`peer_settings`, :func:`daemon_settings`;
* the example file and the reference table in ``docs/configuration.md`` (.render;
  ``python -m pmtud_relay.config --write-docs docs/configuration.md``).

This package imports the components it configures, never the reverse: the daemon imports
:class:`DaemonSettings` from here.
"""

from __future__ import annotations

from pmtud_relay.config.options import UNSET, add_arguments, add_key
from pmtud_relay.config.records import (
    DaemonSettings,
    daemon_settings,
    discover_vips,
    peer_settings,
    policy,
    relay_config,
)
from pmtud_relay.config.render import (
    DOC_BEGIN,
    DOC_END,
    EXAMPLE_HEADER,
    check,
    example_toml,
    markdown_table,
    render,
    sync_docs,
)
from pmtud_relay.config.schema import (
    CAPTURE_BACKENDS,
    DEFAULT_METRICS_ADDRESS,
    DEFAULT_PATH,
    ENV_CONFIG,
    ENV_PREFIX,
    KEYS,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_BURST,
    MAX_CONFIG_FILE,
    MAX_KNOWN_EXPIRY,
    MAX_KNOWN_SOURCES,
    MAX_RATE,
    MAX_SHUN_SOURCES,
    MAX_TABLE,
    MIN_VIP_PREFIX,
    RULES_BACKENDS,
    SCHEMA,
    ConfigError,
    Key,
    Settings,
    default_text,
)
from pmtud_relay.config.sources import (
    Loaded,
    changes,
    config_path,
    load,
    read_args,
    read_env,
    read_file,
    reload,
    tomllib,
    validate,
    wide_vips,
)

__all__ = [
    "CAPTURE_BACKENDS", "DEFAULT_METRICS_ADDRESS", "DEFAULT_PATH", "DOC_BEGIN", "DOC_END",
    "ENV_CONFIG", "ENV_PREFIX", "EXAMPLE_HEADER", "KEYS", "LOG_FORMATS", "LOG_LEVELS", "MAX_BURST",
    "MAX_CONFIG_FILE", "MAX_KNOWN_EXPIRY", "MAX_KNOWN_SOURCES", "MAX_RATE", "MAX_SHUN_SOURCES",
    "MAX_TABLE", "MIN_VIP_PREFIX", "RULES_BACKENDS", "SCHEMA", "UNSET", "ConfigError",
    "DaemonSettings", "Key", "Loaded", "Settings", "add_arguments", "add_key", "changes", "check",
    "config_path", "daemon_settings", "default_text", "discover_vips", "example_toml", "load",
    "markdown_table", "peer_settings", "policy", "read_args", "read_env", "read_file", "relay_config",
    "reload", "render", "sync_docs", "tomllib", "validate", "wide_vips",
]

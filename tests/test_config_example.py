"""etc/pmtud-relay/config.toml: the file packages install as /etc/pmtud-relay/config.toml.

It is generated from the schema (``python -m pmtud_relay.config --write-example FILE``); these
tests keep the shipped copy in sync with the code and check that it means what it says: as
shipped it sets nothing, and with every key uncommented it sets every key to its default.
"""

from __future__ import annotations

import pathlib
import re

from pmtud_relay import config as cfg

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "etc" / "pmtud-relay" / "config.toml"
COMMENTED_KEY = re.compile(r"^#([a-z][a-z0-9_]*) = ")


def test_shipped_example_is_generated_from_the_schema():
    assert SHIPPED.read_text(encoding="utf-8") == cfg.example_toml(), (
        "etc/pmtud-relay/config.toml is out of date: run "
        "`python -m pmtud_relay.config --write-example etc/pmtud-relay/config.toml`")


def test_every_key_appears_once_commented_out():
    names = [m.group(1) for line in SHIPPED.read_text().splitlines() if (m := COMMENTED_KEY.match(line))]
    assert names == [k.name for k in cfg.SCHEMA]
    # Nothing is set as shipped: the file parses to no keys at all.
    assert cfg.read_file(str(SHIPPED)) == {}


def test_uncommenting_every_key_gives_the_defaults(tmp_path):
    text = "\n".join(line[1:] if COMMENTED_KEY.match(line) else line
                     for line in SHIPPED.read_text().splitlines()) + "\n"
    path = tmp_path / "config.toml"
    path.write_text(text)
    values = cfg.read_file(str(path))
    assert set(values) == set(cfg.KEYS)
    for key in cfg.SCHEMA:
        want = tuple(key.default) if key.kind is list else key.default
        assert values[key.name] == want, key.name
    loaded = cfg.load(None, {}, path=str(path))
    assert loaded.settings == cfg.Settings()
    assert set(loaded.sources.values()) == {str(path)}


def test_config_check_accepts_the_shipped_file():
    ok, text = cfg.check(str(SHIPPED), environ={})
    assert ok, text
    assert f"# file: {SHIPPED}" in text


def test_every_key_documents_its_flag_and_environment_variable():
    text = SHIPPED.read_text()
    for key in cfg.SCHEMA:
        assert key.flag in text and key.env in text, key.name

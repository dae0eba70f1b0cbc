"""deploy/prometheus/alerts.yaml: well-formed rules whose expressions name metrics the relay
exports (read from a registry built like the daemon's, delivery confirmation included)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import prometheus_client
import pytest

from pmtud_relay import metrics
from pmtud_relay.confirm.metrics import ConfirmCollector
from pmtud_relay.confirm.service import Confirmer
from pmtud_relay.core.relay import Relay

ALERTS = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yaml"
_NAME = re.compile(r"\b(pmtud_relay(?::[a-z0-9_]+:[a-z0-9_]+|_[a-z0-9_]+))\b")


def exported_names() -> set[str]:
    relay = Relay()
    stats = metrics.Stats(["eth0"])
    registry = metrics.build_registry(stats, lambda: relay)
    loop = asyncio.new_event_loop()
    try:
        confirmer = Confirmer(loop, None)
        registry.register(ConfirmCollector(lambda: confirmer, lambda: {}))
        text = prometheus_client.generate_latest(registry).decode()
    finally:
        loop.close()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_rules_parse_and_reference_only_exported_metrics():
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed")
    doc = yaml.safe_load(ALERTS.read_text())
    exported = exported_names()
    assert "pmtud_relay_owner_verdicts_total" in exported and "pmtud_relay_capture_to_pmtu_seconds_bucket" in exported
    recorded = set()
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert rules and all(set(g) <= {"name", "rules", "interval"} for g in doc["groups"])
    for rule in rules:
        assert ("record" in rule) != ("alert" in rule), rule
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["expr"]
        if "record" in rule:
            recorded.add(rule["record"])
            continue
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
        assert rule["labels"]["severity"] and rule["annotations"]["summary"]
    names = [n for r in rules for n in _NAME.findall(r["expr"])]
    assert names
    for name in names:
        assert name in exported or name in recorded, f"{name} is neither exported nor recorded"
    for rule in rules:  # label values in matchers are ones the relay exports
        for value in re.findall(r'verdict[!=]~?"([^"]+)"', rule["expr"]):
            assert set(value.split("|")) <= {"applied", "not_applied", "orphan", "unknown"}, value
        for value in re.findall(r'origin[!=]~?"([^"]+)"', rule["expr"]):
            assert set(value.split("|")) <= {"captured", "l2_copy", "peer"}, value

"""doctor's owner-verdict check: parsing a relay's /metrics and judging the verdicts (pure), and
reading a real relay's metrics endpoint (a daemon started in a namespace)."""

from __future__ import annotations

from pmtud_relay.doctor import owners
from pmtud_relay.doctor.findings import Severity

SCRAPE = """# HELP pmtud_relay_owner_verdicts_total x
# TYPE pmtud_relay_owner_verdicts_total counter
pmtud_relay_owner_verdicts_total{origin="captured",verdict="applied"} 3.0
pmtud_relay_owner_verdicts_total{origin="captured",verdict="orphan"} 9.0
pmtud_relay_owner_verdicts_total{origin="l2_copy",verdict="applied"} 5.0
pmtud_relay_owner_verdicts_total{origin="l2_copy",verdict="orphan"} 11.0
pmtud_relay_owner_verdicts_total{origin="peer",verdict="unknown"} 0.0
pmtud_relay_owner_lookup_enabled 1.0
"""


def test_parse_and_orphan_rate():
    counts, enabled = owners.parse_verdicts(SCRAPE)
    assert enabled is True and counts[("l2_copy", "orphan")] == 11.0 and len(counts) == 5
    f = owners.check_verdicts(counts, enabled, "relay")
    assert f.severity is Severity.INFO
    assert f.data["orphan_rate"] == round(20 / 28, 4) and f.data["captured"] == 12
    assert "20 orphans (71%)" in f.summary


def test_unknowns_not_applied_and_disabled_warn():
    counts, _ = owners.parse_verdicts(SCRAPE)
    assert owners.check_verdicts({**counts, ("captured", "unknown"): 10.0}, True, "r").severity is Severity.WARNING
    assert owners.check_verdicts({**counts, ("l2_copy", "not_applied"): 20.0}, True, "r").severity is Severity.WARNING
    assert owners.check_verdicts(counts, False, "r").severity is Severity.WARNING
    assert owners.check_verdicts({}, None, "r").severity is Severity.INFO


class _Relay:
    pid = 42
    same_netns = True
    env: dict = {}

    def __init__(self, argv):
        self.argv = argv

    def _option(self, name):
        return [self.argv[i + 1] for i, a in enumerate(self.argv[:-1]) if a == name]


def test_check_reads_the_relays_metrics_address():
    seen = []
    findings = owners.check([_Relay(["run", "--metrics-address", "127.0.0.1:9999"])],
                            get=lambda a: seen.append(a) or SCRAPE)
    assert seen == ["127.0.0.1:9999"] and findings[0].data["orphan_rate"] > 0.7
    (f,) = owners.check([_Relay(["run", "--metrics-address", ""])], get=lambda a: SCRAPE)
    assert "metrics disabled" in f.summary

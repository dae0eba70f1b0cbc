"""Relay daemons started and stopped in lab namespaces, their logfmt events, and the check that
a relay closed the ECMP black hole.

Processes are ``pmtud_relay.lab.LabProcess``es (from a ``Lab`` or ``tests.support.netns.NetNS``);
the lab or namespace that spawned them kills them on teardown, so a failed assertion here leaves
nothing running.
"""

from __future__ import annotations

import collections
import json
import re
import time
from collections.abc import Mapping, Sequence

import pytest

from pmtud_relay.lab import Lab, LabError, LabProcess

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
SIZE = 262144              # bytes per transfer flow
FLOW_TIMEOUT = 6.0         # with a relay every flow finishes in well under a second
STALL_TIMEOUT = 3.0        # seconds per flow where a flow must stall: a s1 flow needs ~10 ms,
                           # a black-holed one never ends


# -- relay daemons ---------------------------------------------------------------------------------
def start_relays(lab: Lab, argv_by_node: Mapping[str, Sequence[str]], *, env: dict[str, str] | None = None,
                 timeout: float = READY_TIMEOUT) -> dict[str, LabProcess]:
    """``python -m pmtud_relay ARGV`` in each named lab node; wait until each logs event=ready."""
    procs = {name: lab.spawn_python(name, "pmtud_relay", *argv, env=env) for name, argv in argv_by_node.items()}
    for name, p in procs.items():
        try:
            p.wait_for(r"event=ready", stream="stderr", timeout=timeout)
        except (TimeoutError, LabError) as e:
            pytest.fail(f"relay in {name} not ready: {e}", pytrace=False)
    return procs


def stop_relays(procs: Mapping[str, LabProcess], timeout: float = STOP_TIMEOUT) -> dict[str, dict[str, str]]:
    """Stop relays that must all still be running (SIGTERM to all, then wait): each must exit 0
    within ``timeout`` without a traceback. Returns each one's final counters (event=stopped)."""
    for name, p in procs.items():
        assert p.poll() is None, f"relay in {name} died early rc={p.poll()}\n{p.stderr}"
    for p in procs.values():
        p.terminate()
    t0 = time.monotonic()
    rcs = {name: p.stop(timeout=timeout) for name, p in procs.items()}
    elapsed = time.monotonic() - t0
    assert elapsed < timeout + 1, f"relays took {elapsed:.1f}s to stop: {rcs}"
    assert rcs == {name: 0 for name in procs}, \
        "\n".join(f"--- {n} rc={rcs[n]} ---\n{p.stderr}" for n, p in procs.items())
    final = {}
    for name, p in procs.items():
        assert "Traceback" not in p.stderr, f"relay in {name} logged a traceback:\n{p.stderr}"
        final[name] = last_event(p, "stopped")
        assert final[name], f"relay in {name} logged no event=stopped:\n{p.stderr}"
    return final


def dump(procs: Mapping[str, LabProcess]) -> str:
    return "\n".join(f"--- {n} stderr ---\n{p.stderr}" for n, p in procs.items())


# -- the daemon's logfmt lines -----------------------------------------------------------------------
_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')


def logfmt(line: str) -> dict[str, str]:
    """``key=value`` pairs of one log line (quoted values unquoted, see pmtud_relay.report.logfmt)."""
    out = {}
    for key, value in _PAIR.findall(line):
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                value = value.strip('"')
        out[key] = value
    return out


def log_events(p: LabProcess, event: str) -> list[dict[str, str]]:
    """Every ``event=EVENT`` line ``p`` logged on stderr so far, parsed."""
    return [rec for rec in map(logfmt, p.lines("stderr")) if rec.get("event") == event]


def last_event(p: LabProcess, event: str) -> dict[str, str]:
    found = log_events(p, event)
    return found[-1] if found else {}


# -- transfer flows --------------------------------------------------------------------------------
def by_server(flows):
    out = collections.defaultdict(list)
    for f in flows:
        out[f.server].append(f)
    return dict(out)


def describe(flows) -> str:
    return "\n".join(f"  #{f.index} {f.server} port={f.client_port} bytes={f.bytes} "
                     f"completed={f.completed} {f.seconds:.3f}s err={f.error}" for f in flows)


def assert_blackhole_closed(lab: Lab, family: int, flows, relays: Mapping[str, LabProcess], *,
                            closed_by: str = "the relay", size: int = SIZE) -> dict[str, list]:
    """With ``closed_by`` running: every flow completed (all ``size`` bytes), the flows spread over
    two servers or more, s1 (which gets the router's PTBs) and every other server that carried a
    flow learned the 1400-byte PMTU towards the client. Returns the flows by server."""
    table = describe(flows)
    groups = by_server(flows)
    assert all(f.completed and f.bytes == size for f in flows), \
        f"IPv{family}: flows stalled with {closed_by} running:\n{table}\n{dump(relays)}"
    assert len(groups) >= 2, f"IPv{family}: flows on one server only:\n{table}"
    client = lab.client_addr(family)
    assert lab.learned_pmtu("s1", client) == 1400, f"IPv{family}: s1 learned no PMTU"
    for name in sorted(set(groups) - {"s1"}):
        assert name in lab.server_names, f"flow on unexpected server {name}:\n{table}"
        assert lab.learned_pmtu(name, client) == 1400, \
            f"IPv{family}: {name} completed its flows but learned no PMTU"
    return groups

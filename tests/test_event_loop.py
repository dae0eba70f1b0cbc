"""daemon.run_event_loop: uvloop when installed, including uvloop 0.17 (Debian 12), which has no
``uvloop.run``; the stdlib loop without uvloop."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = (
    "import asyncio, sys\n"
    "{setup}\n"
    "from pmtud_relay.daemon import run_event_loop\n"
    "seen = []\n"
    "async def main():\n"
    "    await asyncio.sleep(0)\n"
    "    seen.append(type(asyncio.get_running_loop()).__module__)\n"
    "run_event_loop(main)\n"
    "print(seen[0])\n"
)


def probe(setup: str) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_uvloop_loop_when_installed():
    pytest.importorskip("uvloop")
    assert probe("").startswith("uvloop")


def test_uvloop_without_run_as_in_uvloop_0_17():
    pytest.importorskip("uvloop")
    # uvloop 0.17 (Debian 12) lacks run(); take it away from the installed one.
    assert probe("import uvloop\nif hasattr(uvloop, 'run'): del uvloop.run").startswith("uvloop")


def test_stdlib_loop_without_uvloop():
    assert probe("sys.modules['uvloop'] = None").startswith("asyncio")

"""pmtud_relay.rules.iptc_exit: a command that loaded python-iptables ends without interpreter
finalization (it crashed there on Debian 11, issue #14), yet with its output, exit code and
atexit functions intact; a command that did not load it exits normally.

The crash itself did not reproduce on demand (0 in hundreds of round trips in a Debian 11
chroot), so no test here can show it; these check that finalization is skipped, which is the
mitigation. Whether finalization ran is seen through an object kept in ``sys.modules`` whose
``__del__`` writes a line: interpreter shutdown releases it, ``os._exit`` does not."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pmtud_relay.rules import RuleSpec
from pmtud_relay.rules import iptables as ipt

REPO = str(Path(__file__).resolve().parent.parent)
FINALIZED = "probe: interpreter finalization ran"
ATEXIT = "probe: atexit ran"

# The program as the console script runs it, plus the two probes.
PROGRAM = f"""
import atexit, os, sys

class _Probe:
    def __del__(self, write=os.write):
        write(2, b"{FINALIZED}\\n")

sys.modules["_pmtud_relay_finalization_probe"] = _Probe()
atexit.register(lambda: print("{ATEXIT}"))
from pmtud_relay.cli import main
sys.argv = ["pmtud-relay", *sys.argv[1:]]
raise SystemExit(main())
"""


def _iptc_importable() -> None:
    try:
        importlib.import_module("iptc")
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError from a missing libxtables
        pytest.skip(f"python-iptables cannot be imported here: {type(exc).__name__}: {exc}")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)  # block-buffered stdout, as under systemd or in a pipe
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-c", PROGRAM, *args], capture_output=True, text=True, timeout=60,
                          env=env, stdin=subprocess.DEVNULL)


def test_without_python_iptables_the_process_finalizes_normally() -> None:
    """The control: the probe does see finalization (nft's show never imports python-iptables)."""
    cp = _run("rules", "show", "--backend", "nft", "-i", "eth0")
    assert cp.returncode == 0, cp.stderr
    assert FINALIZED in cp.stderr
    assert ATEXIT in cp.stdout


def test_rules_command_that_loaded_python_iptables_skips_finalization() -> None:
    _iptc_importable()
    cp = _run("rules", "show", "--backend", "iptables", "-i", "eth0")  # loads iptc (missing_library)
    assert cp.returncode == 0, cp.stderr
    assert FINALIZED not in cp.stderr
    # stdout is a pipe (block-buffered): the whole rendering still arrives, then the atexit line
    assert cp.stdout == ipt.render(RuleSpec(("eth0",))) + ATEXIT + "\n"


def test_exit_code_survives_the_early_exit() -> None:
    _iptc_importable()
    cp = _run("rules", "show", "--backend", "iptables", "-i", "bad name")
    assert cp.returncode == 2  # EXIT_CONFIG
    assert "--interface" in cp.stderr
    assert FINALIZED not in cp.stderr

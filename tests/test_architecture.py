"""The package's shape, checked: pure modules stay pure.

A pure module takes bytes and a clock value and returns decisions (the sans-IO core and the
wire formats of the adapters). It must not reach for sockets, clocks, randomness, logging or an
event loop: callers pass time and nonces in. This reads each module's imports with ast, so a
forbidden import anywhere in the file (also inside a function) fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pmtud_relay"

# Everything in core/, plus the pure wire formats and decision objects of the feature packages.
PURE = sorted(
    [p for p in (PACKAGE / "core").glob("*.py")]
    + [PACKAGE / "peers" / n for n in ("wire.py", "ack.py", "inbox.py", "injection.py")]
    + [PACKAGE / "nflog" / n for n in ("wire.py", "fastpath.py", "batching.py")]
    + [PACKAGE / "confirm" / n for n in ("verdict.py", "wire.py")]
    + [PACKAGE / "netlink" / "messages.py"]
)

FORBIDDEN = {
    "socket", "os", "time", "random", "secrets", "asyncio", "select", "selectors", "threading",
    "subprocess", "logging", "signal", "mmap", "fcntl", "uvloop",
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_module_does_no_io(path: Path) -> None:
    assert path.exists(), path
    bad = imported_roots(path) & FORBIDDEN
    assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}: pure modules take time and bytes from the caller"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import time\n    return time.monotonic()\n")
    assert "time" in imported_roots(probe)

"""The test suite's own shape: shared code lives in tests/support/ and fixtures in conftest.py.

A test module that imports another one (``from test_faults import ns``) runs that module's
import-time code, re-registers its fixtures under a second name (ruff F811) and ties two
unrelated files together. Each module's imports are read with ast, so one inside a function
counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TEST_MODULES = sorted(TESTS.glob("test_*.py"))
SUPPORT_MODULES = sorted((TESTS / "support").rglob("*.py"))
TEST_NAMES = {p.stem for p in TEST_MODULES} | {"conftest"}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, as written (``a.b`` for ``from a.b import c``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.level:  # from . import x: x may be a module
                found |= {alias.name for alias in node.names}
    return found


def test_modules_found() -> None:
    assert len(TEST_MODULES) > 50 and SUPPORT_MODULES  # the globs above see the suite


@pytest.mark.parametrize("path", TEST_MODULES + SUPPORT_MODULES, ids=lambda p: str(p.relative_to(TESTS)))
def test_no_module_imports_a_test_module(path: Path) -> None:
    """Neither a test module nor a support module imports a test module (``test_x`` or
    ``tests.test_x``) or conftest: what two test modules share belongs in tests/support/."""
    bad = sorted(m for m in imported_modules(path) if set(m.split(".")) & TEST_NAMES)
    assert not bad, f"{path.name} imports test modules {bad}: move what they share to tests/support/"
    # One name per module: ``support.frames`` next to ``tests.support.frames`` would be two copies.
    short = sorted(m for m in imported_modules(path) if m == "support" or m.startswith("support."))
    assert not short, f"{path.name} imports {short}: import it as tests.support"


def test_only_conftest_and_test_modules_beside_the_tests() -> None:
    """Helpers are not kept beside the tests (where they are collected next to, and look like,
    test modules): tests/*.py is conftest.py and test_*.py only."""
    stray = sorted(p.name for p in TESTS.glob("*.py") if p.name != "conftest.py" and not p.name.startswith("test_"))
    assert not stray, f"helper modules beside the tests: {stray} (move them to tests/support/)"

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
    + [PACKAGE / "netlink" / "messages.py", PACKAGE / "analyze" / "claims.py"]
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
    assert not bad, (f"{path.relative_to(PACKAGE)} imports {sorted(bad)}: "
                     "pure modules take time and bytes from the caller")


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import time\n    return time.monotonic()\n")
    assert "time" in imported_roots(probe)


# -- no import cycles ---------------------------------------------------------------------------
#
# Every import counts, at module level and inside functions: a function-level import that closes
# a cycle ("here, not at the top: X imports this module") still ties the two modules together and
# hides the layering the package is meant to have (config → components, never back).


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_imports(path: Path, known: set[str], root: Path = PACKAGE) -> set[str]:
    """The package's modules ``path`` imports (``from pkg import mod`` counts as ``pkg.mod``
    when that is a module, else as ``pkg``); TYPE_CHECKING-only imports included."""
    name = module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == PACKAGE.name:
                    add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != PACKAGE.name:
                continue
            for a in node.names:
                sub = f"{module}.{a.name}"
                add(sub if sub in known else module)
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = sorted(root.rglob("*.py"))
    known = {module_name(p, root) for p in paths}
    return {module_name(p, root): package_imports(p, known, root) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        colour[start] = GREY
        while stack:
            node, edges = stack[-1]
            nxt = next(edges, None)
            if nxt is None:
                colour[node] = BLACK
                stack.pop()
            elif colour.get(nxt, BLACK) == GREY:
                path = [n for n, _ in stack]
                return path[path.index(nxt):] + [nxt]
            elif colour.get(nxt) == WHITE:
                colour[nxt] = GREY
                stack.append((nxt, iter(sorted(graph[nxt]))))
    return None


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert "pmtud_relay.config" in graph and graph["pmtud_relay.cli"], "the graph is empty: the walk is broken"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_sees_a_function_level_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE.name
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(f"from {PACKAGE.name}.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n    return a\n")
    graph = import_graph(pkg)
    assert find_cycle(graph) in ([f"{PACKAGE.name}.a", f"{PACKAGE.name}.sub.b", f"{PACKAGE.name}.a"],
                                 [f"{PACKAGE.name}.sub.b", f"{PACKAGE.name}.a", f"{PACKAGE.name}.sub.b"])
    (pkg / "sub" / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(pkg)) is None

"""The docs' relative links and cited benchmark results point at files that exist.

Every relative link in README.md and docs/*.md must name a file or directory of the repository
(and, for a link into a Markdown file, a heading of it when it names one). Every benchmark
result a doc cites (``<name>-YYYYMMDD-HHMMSS.json``) must be in bench/results/, and every file
there must be cited: only results the docs quote are committed (bench/README.md).
"""

from __future__ import annotations

import pathlib
import re
import unicodedata

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
RESULTS = ROOT / "bench" / "results"

# [text](target) outside code spans; images too. Targets with a scheme or only an anchor are
# handled separately.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
RESULT = re.compile(r"\b[a-z_-]+-\d{8}-\d{6}\.json\b")


def _prose(text: str) -> str:
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    kept = []
    for ch in text:
        if ch == " ":
            kept.append("-")
        elif ch == "-" or ch.isalnum() or unicodedata.category(ch).startswith("M"):
            kept.append(ch)
    return "".join(kept)


def _anchors(path: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(doc: pathlib.Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(_prose(doc.read_text()))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: pathlib.Path) -> None:
    broken = []
    for target in _links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def _cited_results() -> dict[str, list[str]]:
    cited: dict[str, list[str]] = {}
    for doc in [*DOCS, ROOT / "bench" / "README.md"]:
        for name in RESULT.findall(doc.read_text()):
            cited.setdefault(name, []).append(str(doc.relative_to(ROOT)))
    return cited


def test_every_cited_result_is_committed() -> None:
    missing = {name: docs for name, docs in _cited_results().items() if not (RESULTS / name).is_file()}
    assert not missing, f"cited but not in bench/results/: {missing}"


def test_every_committed_result_is_cited() -> None:
    cited = _cited_results()
    uncited = sorted(p.name for p in RESULTS.glob("*.json") if p.name not in cited)
    assert not uncited, f"in bench/results/ but cited by no doc (commit only what the docs cite): {uncited}"


def test_the_slug_matches_githubs_for_the_headings_the_docs_link_to() -> None:
    assert _slug("1. Core throughput (in process, one core) — `core-20261202-045016.json`") == (
        "1-core-throughput-in-process-one-core--core-20261202-045016json")
    assert _slug("Changes on the packet path since sections 1–5 were measured") == (
        "changes-on-the-packet-path-since-sections-15-were-measured")
    assert _slug("The global reserve: a share for sources seen before the flood") == (
        "the-global-reserve-a-share-for-sources-seen-before-the-flood")

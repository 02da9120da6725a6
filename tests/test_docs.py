"""The documentation describes this repository: every link and repository path in README.md and docs/*.md exists here.

A reader has the repository, nothing beside it: no link may leave it (no
DESIGN.md of a neighbouring folder, no ../shared), and every heading a link
names (`file.md#heading`) must exist, with GitHub's anchors.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REPO_PATH = re.compile(r"(?<![\w/.~-])((?:segbatch|tests|benchmarks|workflows|examples|docs|\.ci)/[\w./-]*)")
PLACEHOLDER = re.compile(r"\b[A-Z]{3,}\b")  # workflows/NAME.yaml: a name for the reader to fill in
OUTSIDE = ("DESIGN.md", "STYLE.md", "../shared", "/work/")


def _prose(text: str) -> str:
    """`text` without its fenced code blocks (shell comments there are not headings, example URLs not links)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path.read_text())) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # http:, mailto: are not files


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_into_the_repository(doc):
    for link in _links(doc):
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.is_relative_to(ROOT.resolve()), f"{doc.name}: {link} leaves the repository"
        assert path.exists(), f"{doc.name}: {link} names {path.relative_to(ROOT.resolve())}, which is not in the repository"
        if anchor:
            assert path.suffix == ".md", f"{doc.name}: {link}: an anchor into a file that is not Markdown"
            assert anchor in _anchors(path), f"{doc.name}: {link}: no heading #{anchor} in {path.name} (has {sorted(_anchors(path))})"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_docs_mention_no_file_outside_the_repository(doc):
    text = doc.read_text()
    for name in OUTSIDE:
        assert name not in text, f"{doc.name} mentions {name}, which is not in the repository"
    if doc.name == "README.md":
        assert "../" not in text, "README.md is at the repository's root: a ../ path leaves it"
    for path in REPO_PATH.findall(text):
        path = path.rstrip(".")
        if not PLACEHOLDER.search(path):
            assert (ROOT / path).exists(), f"{doc.name} mentions {path}, which is not in the repository"


def test_readme_links_the_architecture_and_the_store_contract():
    links = _links(ROOT / "README.md")
    assert any(link.startswith("docs/architecture.md") for link in links)
    assert any(link.startswith("docs/store.md") for link in links)


def test_the_anchor_rules_are_githubs():
    assert _anchors(ROOT / "docs" / "architecture.md") >= {"stitching-what-was-measured", "rules-that-keep-data-safe", "exit-codes"}
    assert "store-layout-zarr-v3-xarrayopen_zarrstore" in _anchors(ROOT / "README.md")

"""docs/report.md: every link and picture resolves, and every picture `make report` generates is shown.

A report whose picture went missing, or that forgot a dashboard panel, would claim what nobody can see.
Pure file checks, no servers: they run in milliseconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools.report import dashboard_panels, load_dashboard

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "report.md"
PICTURES = "img/report/"  # relative to docs/, where `make report` writes
FIXED_PICTURES = ("upload.png", "live.png", "live.webp", "dashboard.png", "speed.png")

# [text](target) and ![alt](target); the target ends at the first space or closing parenthesis.
_LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def _text() -> str:
    return _FENCE.sub("", REPORT.read_text())  # links inside code blocks are not links


def _links() -> list[tuple[bool, str]]:
    return [(bang == "!", target) for bang, target in _LINK.findall(_text())]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _expected_pictures() -> set[str]:
    panels = {f"panel-{p.slug}.png" for p in dashboard_panels(load_dashboard())}
    return set(FIXED_PICTURES) | panels


def test_every_relative_link_and_picture_exists() -> None:
    missing = []
    for _, target in _links():
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, or an anchor in this page (checked below)
        path = (REPORT.parent / target.split("#", 1)[0]).resolve()
        if not path.exists() or ROOT not in path.parents:
            missing.append(target)
    assert not missing, f"links in docs/report.md to nothing in the repository: {missing}"


def test_in_page_anchors_name_headings() -> None:
    headings = {_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", _text(), re.M)}
    anchors = [t[1:] for _, t in _links() if t.startswith("#")]
    assert anchors, "the report has a table of contents"
    assert not [a for a in anchors if a not in headings]


def test_every_generated_picture_is_shown_and_nothing_else_is_claimed() -> None:
    shown = {t.removeprefix(PICTURES) for _, t in _links() if t.startswith(PICTURES)}
    expected = _expected_pictures()
    assert not expected - shown, f"made by `make report` but not in the report: {expected - shown}"
    assert not shown - expected, f"in the report but not made by `make report`: {shown - expected}"
    embedded = {t.removeprefix(PICTURES) for image, t in _links() if image and t.startswith(PICTURES)}
    assert set(FIXED_PICTURES) <= embedded  # shown inline, not only linked


@pytest.mark.parametrize("name", sorted(_expected_pictures()))
def test_generated_picture_is_committed(name: str) -> None:
    path = REPORT.parent / PICTURES / name
    assert path.is_file() and path.stat().st_size > 0, f"{path} missing: run `make report`"


def test_readme_links_the_report() -> None:
    assert "(docs/report.md)" in (ROOT / "README.md").read_text()

"""The README and the docs pages: their shape, their figures (copied from the files the
benchmarks wrote) and the public names they document."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import mosa

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# written by the benchmarks; every other page is written by hand
GENERATED = ("study.md", "bench_accuracy.md")
# "80.3 ± 0.2", "−8.2 ± 0.3", "+0.7 ± 1.2": a measured mean with its seed spread
SPREAD = re.compile(r"([+\-−]?)(\d+\.\d+) ± (\d+\.\d+)")


def written_pages() -> list[Path]:
    """README.md and the hand-written docs pages."""
    pages = sorted(p for p in DOCS.glob("*.md") if not p.name.startswith(("study.", "bench_")))
    return [README, *pages]


def test_the_readme_fits_on_two_screens_and_opens_with_the_set_up() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 150
    head = "\n".join(lines[:20])
    assert "make demo" in head and "make test" in head
    assert "MoSA" in head and "timm" in head


def _table_rows(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("| ")]


@pytest.mark.parametrize(
    ("generated", "page"), [("bench_accuracy.md", "accuracy.md"), ("study.md", "study-results.md")]
)
def test_result_tables_are_copied_from_the_generated_files(generated: str, page: str) -> None:
    shown = (DOCS / page).read_text().splitlines()
    rows = _table_rows(DOCS / generated)
    if generated == "study.md":  # the page shows the study's summary table only
        rows = rows[
            : rows.index("| setting | variant | digits_noisy | fmnist_loc | fmnist_count |")
        ]
    missing = [row for row in rows if row not in shown]
    assert rows and not missing, f"docs/{page} rows differ from docs/{generated}: {missing[:3]}"


def _figures(text: str) -> set[tuple[str, str, str]]:
    """(sign, mean, spread) of every "mean ± spread" in ``text``; a minus sign is "-"."""
    return {(sign.replace("−", "-"), m, sd) for sign, m, sd in SPREAD.findall(text)}


@pytest.mark.parametrize("page", written_pages(), ids=lambda p: p.name)
def test_every_figure_with_a_seed_spread_is_in_the_generated_files(page: Path) -> None:
    measured = _figures("\n".join((DOCS / name).read_text() for name in GENERATED))
    unsigned = {(m, sd) for _, m, sd in measured}
    # a signed figure (a gap) must match with its sign; prose ("8.2 ± 0.3 points below")
    # gives the size only
    quoted = _figures(page.read_text())
    stale = sorted(q for q in quoted if (q not in measured if q[0] else q[1:] not in unsigned))
    assert not stale, f"{page.name} quotes figures that are not in docs/{GENERATED}: {stale}"


def test_the_readme_quotes_measured_figures() -> None:
    assert _figures(README.read_text())


def test_every_public_name_is_on_the_api_page() -> None:
    api = (DOCS / "api.md").read_text()
    missing = [name for name in mosa.__all__ if f"mosa.{name}" not in api]
    assert not missing, f"docs/api.md does not document {missing}"


LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


@pytest.mark.parametrize("page", written_pages(), ids=lambda p: p.name)
def test_relative_links_point_at_files(page: Path) -> None:
    targets = [t for t, _ in LINK.findall(page.read_text()) if "://" not in t]
    broken = [t for t in targets if not (page.parent / t).exists()]
    assert not broken, f"{page.name} links to missing files: {broken}"

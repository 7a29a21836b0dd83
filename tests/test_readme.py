"""The README's result figures come from the files under docs/ that the benchmarks wrote."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# "80.3 ± 0.2", "−8.2 ± 0.3", "+0.7 ± 1.2": a measured mean with its seed spread
SPREAD = re.compile(r"([+\-−]?)(\d+\.\d+) ± (\d+\.\d+)")


def _table_rows(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("| ")]


@pytest.mark.parametrize("doc", ["bench_accuracy.md", "study.md"])
def test_result_tables_are_copied_from_docs(doc):
    readme = README.read_text().splitlines()
    rows = _table_rows(ROOT / "docs" / doc)
    if doc == "study.md":  # the README shows the study's summary table only
        rows = rows[
            : rows.index("| setting | variant | digits_noisy | fmnist_loc | fmnist_count |")
        ]
    missing = [row for row in rows if row not in readme]
    assert rows and not missing, f"README rows differ from docs/{doc}: {missing[:3]}"


def _figures(text: str) -> set[tuple[str, str, str]]:
    """(sign, mean, spread) of every "mean ± spread" in ``text``; a minus sign is "-"."""
    return {(sign.replace("−", "-"), m, sd) for sign, m, sd in SPREAD.findall(text)}


def test_every_figure_with_a_seed_spread_is_in_docs():
    docs = "\n".join(
        (ROOT / "docs" / name).read_text() for name in ("bench_accuracy.md", "study.md")
    )
    measured = _figures(docs)
    unsigned = {(m, sd) for _, m, sd in measured}
    quoted = _figures(README.read_text())
    assert quoted
    # a signed figure (a gap) must match with its sign; prose ("8.2 ± 0.3 points below")
    # gives the size only
    stale = sorted(q for q in quoted if (q not in measured if q[0] else q[1:] not in unsigned))
    assert not stale, f"README figures not in docs/bench_accuracy.md or docs/study.md: {stale}"

"""The speed benchmark's ratios, each defined once and computed by one function."""

from __future__ import annotations

import pytest

from mosa.bench.presets import COMPILED_SUFFIX, COMPILED_VARIANTS
from mosa.bench.tables import (
    OTHER_RATIOS,
    PAIRED,
    PAIRED_RATIOS,
    RATIOS,
    TARGETS,
    compiled_ratios,
    ratio,
    ratio_table,
    targets_met,
)

ROWS = {
    "adapter": {"train_step_s": 2.0, "peak_mem_bytes": 100, "infer_img_s": 50.0},
    "mosa": {"train_step_s": 3.0, "peak_mem_bytes": 0, "infer_img_s": 40.0},
    "mosa_compiled": {"train_step_s": 1.5, "peak_mem_bytes": None, "infer_img_s": None},
}
TIMES = {"adapter": [1.0, 2.0, 4.0], "mosa": [2.0, 3.0, 2.0], "mosa_compiled": [1.0, 1.0, 0.0]}


def test_a_ratio_is_the_variant_over_its_baseline_and_none_when_undefined() -> None:
    spec = {
        "step": ("mosa", "adapter", "train_step_s"),
        "mem": ("adapter", "mosa", "peak_mem_bytes"),  # divides by zero
        "missing": ("mosa_compiled", "adapter", "peak_mem_bytes"),
        # img/s read baseline over variant: a time ratio
        "infer": ("adapter", "mosa", "infer_img_s"),
    }
    assert ratio_table(spec, ROWS) == {"step": 1.5, "mem": None, "missing": None, "infer": 1.25}
    assert ratio(1.0, None) is None and ratio(3.0, 2.0) == 1.5


def test_a_paired_ratio_is_the_median_of_the_per_round_ratios() -> None:
    spec = {"paired": ("mosa", "adapter", PAIRED), "back": ("adapter", "mosa_compiled", PAIRED)}
    # rounds: 2/1, 3/2, 2/4 -> median 1.5; a zero-time round has no ratio
    assert ratio_table(spec, ROWS, TIMES) == {"paired": 1.5, "back": pytest.approx(1.5)}
    with pytest.raises(ValueError, match="needs the step times"):
        ratio_table(spec, ROWS)


def test_compiled_rows_get_both_ratios_to_their_eager_row() -> None:
    # only mosa has a compiled row here; per round 1/2, 1/3, 0/2
    assert compiled_ratios(ROWS, TIMES) == {"mosa": {"step": 0.5, "paired": pytest.approx(1 / 3)}}
    assert "mosa" in COMPILED_VARIANTS and "mosa" + COMPILED_SUFFIX in ROWS


def test_every_target_belongs_to_a_reported_ratio() -> None:
    assert set(TARGETS) <= set(RATIOS)
    met = targets_met({**dict.fromkeys(RATIOS, 1.0), "mosa_step_vs_adapter": None})
    assert met["mosa_step_vs_adapter"] is None
    assert met["mosa_mem_vs_adapter"] is True  # 1.0 <= 1.02
    assert targets_met(dict.fromkeys(RATIOS, 9.0)) == dict.fromkeys(TARGETS, False)


def test_ratio_definitions_name_known_quantities() -> None:
    quantities = {q for spec in (RATIOS, OTHER_RATIOS, PAIRED_RATIOS) for *_, q in spec.values()}
    assert quantities <= {
        "train_step_s",
        "peak_mem_bytes",
        "infer_img_s",
        "trainable_params",
        "stored_params",
        "optimizer_state_bytes",
        PAIRED,
    }

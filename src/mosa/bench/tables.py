"""The ratios ``mosa bench speed`` reports, each defined once as (variant, baseline, quantity):
``rows[variant][quantity] / rows[baseline][quantity]``, lower is better. Inference ratios are
time ratios, so their quantity, images per second, is read baseline over variant."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from mosa.bench.presets import COMPILED_SUFFIX, COMPILED_VARIANTS

__all__ = [
    "OTHER_RATIOS",
    "PAIRED",
    "PAIRED_RATIOS",
    "RATIOS",
    "RATIO_KEYS",
    "TARGETS",
    "compiled_ratios",
    "ratio",
    "ratio_table",
    "targets_met",
]

Rows = Mapping[str, Mapping[str, Any]]
Times = Mapping[str, list[float]]
# the quantity of a paired ratio: the median over rounds of the two variants' per-round step
# time ratio; each round runs every variant once, so the ratio inside a round cancels load
# that changes between rounds (a check on the ratio of medians)
PAIRED = "paired"
STEP, MEM, INFER = "train_step_s", "peak_mem_bytes", "infer_img_s"

RATIOS: dict[str, tuple[str, str, str]] = {
    "mosa_step_vs_adapter": ("mosa", "adapter", STEP),
    "mosa_mem_vs_adapter": ("mosa", "adapter", MEM),
    "mosa_consistency_step_vs_adapter": ("mosa_consistency", "adapter", STEP),
    "mosa_merged_infer_vs_adapter": ("adapter", "mosa", INFER),
    "mosa_lora_merged_infer_vs_backbone": ("linear", "mosa_lora", INFER),
    "reference_step_vs_adapter": ("mosa_reference", "adapter", STEP),
    "reference_mem_vs_adapter": ("mosa_reference", "adapter", MEM),
}
RATIO_KEYS = tuple(RATIOS)
TARGETS = {
    "mosa_step_vs_adapter": 1.05,
    "mosa_mem_vs_adapter": 1.02,
    "mosa_consistency_step_vs_adapter": 2.05,
    "mosa_merged_infer_vs_adapter": 1.02,
    "mosa_lora_merged_infer_vs_backbone": 1.02,
}
PAIRED_RATIOS: dict[str, tuple[str, str, str]] = {
    "mosa_step_vs_adapter": ("mosa", "adapter", PAIRED),
    "mosa_consistency_step_vs_adapter": ("mosa_consistency", "adapter", PAIRED),
    "reference_step_vs_adapter": ("mosa_reference", "adapter", PAIRED),
    "lora_step_vs_adapter": ("lora", "adapter", PAIRED),
    "mosa_lora_step_vs_lora": ("mosa_lora", "lora", PAIRED),
}
OTHER_RATIOS: dict[str, tuple[str, str, str]] = {
    "linear_step_vs_adapter": ("linear", "adapter", STEP),
    "lora_step_vs_adapter": ("lora", "adapter", STEP),
    "mosa_lora_step_vs_lora": ("mosa_lora", "lora", STEP),
    "mosa_lora_mem_vs_lora": ("mosa_lora", "lora", MEM),
    "mosa_step_vs_reference": ("mosa", "mosa_reference", STEP),
    "mosa_sparse_adamw_step_vs_adapter": ("mosa_sparse_adamw", "adapter", STEP),
    "mosa_sparse_adamw_mem_vs_adapter": ("mosa_sparse_adamw", "adapter", MEM),
    "mosa_mem_vs_reference": ("mosa", "mosa_reference", MEM),
    "adapter_infer_vs_backbone": ("linear", "adapter", INFER),
    "lora_merged_infer_vs_backbone": ("linear", "lora", INFER),
    "reference_trainable_vs_mosa": ("mosa_reference", "mosa", "trainable_params"),
    "reference_stored_vs_mosa": ("mosa_reference", "mosa", "stored_params"),
    "reference_optimizer_state_vs_mosa": ("mosa_reference", "mosa", "optimizer_state_bytes"),
}


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def _paired(times: Times, a: str, b: str) -> float | None:
    pairs = [x / y for x, y in zip(times[a], times[b], strict=True) if y > 0]
    return statistics.median(pairs) if pairs else None


def ratio_table(
    spec: Mapping[str, tuple[str, str, str]], rows: Rows, times: Times | None = None
) -> dict[str, float | None]:
    """Every ratio of ``spec`` (name -> (variant, baseline, quantity)) from the result rows;
    :data:`PAIRED` quantities from the per-round step ``times``."""
    out: dict[str, float | None] = {}
    for name, (a, b, key) in spec.items():
        if key == PAIRED:
            if times is None:
                raise ValueError(f"ratio {name!r} is paired by round: it needs the step times")
            out[name] = _paired(times, a, b)
        else:
            out[name] = ratio(rows[a][key], rows[b][key])
    return out


def compiled_ratios(rows: Rows, times: Times) -> dict[str, dict[str, float | None]]:
    """Compiled over eager step time per method: ratio of medians and median per-round ratio."""
    return {
        n: ratio_table({"step": (c, n, STEP), "paired": (c, n, PAIRED)}, rows, times)
        for n in COMPILED_VARIANTS
        if (c := n + COMPILED_SUFFIX) in rows
    }


def targets_met(ratios: Mapping[str, float | None]) -> dict[str, bool | None]:
    """Per target: whether its ratio is at or under it (None when the ratio is missing)."""
    return {k: (None if ratios[k] is None else bool(ratios[k] <= t)) for k, t in TARGETS.items()}

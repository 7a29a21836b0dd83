"""The share of the machine's matmul rate each row of ``mosa bench speed`` reaches: its step's
matmul FLOPs (analytic for the ViT variants, counted by torch for LoRA) over its step time,
against a matmul rate measured in the same run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mosa.bench.flops import FlopCount, ViTShape, measure_matmul_rate, vit_train_flops
from mosa.bench.presets import COMPILED_SUFFIX, Preset

__all__ = ["counted_flops", "flop_section"]

FLOPS_WHAT = (
    "matmul FLOPs only: forward + activation-gradient backward with a frozen backbone "
    "(no backbone weight gradients; attention matmuls cost 2x forward backward; the "
    "patch embedding and block 0's backbone ops need no backward); adapter and head "
    "weight gradients included; LoRA rows counted by torch.utils.flop_counter"
)


def counted_flops(
    models: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor
) -> dict[str, int]:
    """FLOPs of one eager forward + backward, counted by torch's FlopCounterMode, for the rows
    the analytic ViT count does not cover (LoRA's q/v branches)."""
    out: dict[str, int] = {}
    for n in ("lora", "mosa_lora"):
        if n not in models:
            continue
        model = models[n]
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(model(x).float(), y).backward()
        model.zero_grad(set_to_none=True)
        out[n] = int(counter.get_total_flops())
    return out


def _per_variant(
    rows: dict[str, dict[str, Any]],
    analytic: dict[str, FlopCount],
    counted: dict[str, int],
    rate: float,
) -> dict[str, Any]:
    """Each row's FLOPs per step, img/s and share of ``rate``; also written into the row."""
    per_variant: dict[str, Any] = {}
    for n, row in rows.items():
        method = n.removesuffix(COMPILED_SUFFIX)
        total = analytic[method].total if method in analytic else counted.get(method)
        if total is None:
            continue
        step = row["train_step_s"]
        achieved = total / step if step else None
        per_variant[n] = {
            "train_flops_per_step": total,
            "flops_from": "analytic" if method in analytic else "torch FlopCounterMode",
            "train_img_s": row["train_img_s"],
            "achieved_flops_per_s": achieved,
            "fraction_of_ideal": achieved / rate if achieved else None,
        }
        row["train_flops_per_step"] = total
        row["train_flop_fraction"] = per_variant[n]["fraction_of_ideal"]
    return per_variant


def flop_section(
    base: nn.Module,
    rows: dict[str, dict[str, Any]],
    bottleneck: int,
    batch: int,
    dev: torch.device,
    amp: torch.dtype | None,
    preset: Preset,
    counted: dict[str, int],
) -> dict[str, Any] | None:
    """Matmul FLOPs per step (analytic, or ``counted`` by torch), the matmul rate measured now,
    and the fraction of it that each row's step reaches (None for a backbone that is no ViT)."""
    try:
        shape = ViTShape.from_model(base)
    except (TypeError, AttributeError):
        return None
    dtype = amp or torch.float32
    rate = measure_matmul_rate(dev, dtype, preset.matmul_n, preset.matmul_iters)
    adapter = vit_train_flops(shape, batch, bottleneck)
    analytic = {
        "linear": vit_train_flops(shape, batch, None),
        "adapter": adapter,
        "mosa": adapter,
        "mosa_sparse_adamw": adapter,
        "mosa_reference": adapter,
        "mosa_consistency": vit_train_flops(shape, batch, bottleneck, passes=2),
    }
    return {
        "what": FLOPS_WHAT,
        "shape": {**shape.__dict__, "tokens": shape.tokens},
        "adapter_train_step": adapter.to_dict(),
        "matmul_rate_flops_per_s": rate,
        "matmul": f"{preset.matmul_n}^3 {str(dtype).replace('torch.', '')}, "
        f"{preset.matmul_iters} reps, {torch.get_num_threads()} CPU thread(s)",
        "per_variant": _per_variant(rows, analytic, counted, rate),
    }

"""Where a split projection's time goes: one projection timed alone, dense against MoSA's
single tensor and the reference's N copies, and the pieces of MoSA's training forward."""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mosa.adapters.sparse import MoSALinear
from mosa.bench.reference import ReferenceSplitLinear
from mosa.bench.tables import ratio
from mosa.bench.timing import time_interleaved
from mosa.engine.evaluate import autocast

__all__ = ["split_projection_bench"]


def _repeated(fn: Callable[[], object], calls: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(calls):
            fn()

    return run


def _fwd_bwd(
    mod: nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype | None
) -> Callable[[], None]:
    def run() -> None:
        with autocast(device, dtype):
            out = mod(x)
        out.float().sum().backward()

    return run


def split_projection_bench(
    rows: int,
    in_features: int,
    out_features: int,
    num_experts: int,
    device: torch.device,
    dtype: torch.dtype | None,
    rounds: int = 20,
    calls: int = 20,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """Forward+backward time of one projection ``in -> out`` on ``rows`` rows: dense
    ``nn.Linear``, mosa's :class:`MoSALinear` (zero init, as a split Up) and the reference's N
    copies, plus the pieces of MoSALinear's training forward timed alone (expert draw, mask,
    masked weight). Each sample is ``calls`` back-to-back calls, so GPU launch overhead shows
    only where it is not hidden behind the matmuls, as in a real step."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=gen).to(device).requires_grad_(True)
    dense = nn.Linear(in_features, out_features).to(device)
    split = MoSALinear(in_features, out_features, num_experts=num_experts).to(device)
    owner = split.owner.cpu()
    ref = ReferenceSplitLinear(
        in_features, out_features, num_experts=num_experts, init="zero", owner=owner, seed=0
    ).to(device)
    pieces: dict[str, Callable[[], object]] = {
        "dense_linear": _fwd_bwd(dense, x, device, dtype),
        "mosa_linear": _fwd_bwd(split, x, device, dtype),
        "reference_linear": _fwd_bwd(ref, x, device, dtype),
        "draw_expert": lambda: int(split.draw_picks(1)),
        "owner_eq_k": lambda: split.owner == 1,
        "weight_times_mask": lambda: split.expert_weight(1),
    }
    fns = {n: _repeated(fn, calls) for n, fn in pieces.items()}
    t = time_interleaved(fns, rounds, 2, device, rng or random.Random(0))
    # best of the rounds: the least disturbed estimate of a few-microsecond cost, which on a
    # shared machine a median can miss when most samples catch a scheduler preemption
    per_call_us = {n: min(v) / calls * 1e6 for n, v in t.items()}
    return {
        "shape": {"rows": rows, "in": in_features, "out": out_features},
        "dtype": str(dtype or torch.float32).replace("torch.", ""),
        "statistic": f"best of {rounds} samples of {calls} back-to-back calls",
        "per_call_us": per_call_us,
        "per_call_us_median": {n: statistics.median(v) / calls * 1e6 for n, v in t.items()},
        "mosa_vs_dense": ratio(per_call_us["mosa_linear"], per_call_us["dense_linear"]),
        "reference_vs_dense": ratio(per_call_us["reference_linear"], per_call_us["dense_linear"]),
    }

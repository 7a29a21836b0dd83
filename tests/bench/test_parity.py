"""Parity: the library's single-tensor MoSA trains exactly as the reference's N expert copies.

Each case injects MoSA (or MoSA-LoRA) into a tiny timm ViT in float64, builds the N-copy twin
with :func:`mosa.bench.reference.to_reference` (copy k = expert k, masked gradients, the same
routing generator), and trains both for 20 steps on the same data, dropout masks and expert
picks: ours with :class:`SparseAdamW` in one ``expert_updates`` mode, the twin with
``torch.optim.AdamW`` and the ``zero_grad`` that mode stands for (``None`` gradients for the
expert-local mode, zero gradients, as on the reference's torch 1.11, for the reference mode).
Merged weights and eval logits must agree to 1e-6.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mosa
from mosa.adapters.sparse import MoSALinear
from mosa.bench.reference import ReferenceSplitLinear, merge_reference, to_reference
from mosa.engine.config import OptimConfig
from mosa.engine.optim import ExpertTracker, WarmupCosine, build_optimizer, param_groups

STEPS = 20
LR = 2e-2
WD = 0.05  # large enough that decaying the initial weights of split Down/A projections shows


def _pair(make_model: Callable[..., nn.Module], **method: Any) -> tuple[nn.Module, nn.Module]:
    cfg = mosa.MethodConfig(bottleneck=4, rank=4, num_experts=3, seed=5, **method)
    ours = mosa.inject(make_model("vit"), cfg).double().train()
    return ours, to_reference(copy.deepcopy(ours))


def _train_side_by_side(ours: nn.Module, twin: nn.Module, mode: str) -> None:
    ocfg = OptimConfig(lr=LR, weight_decay=WD, eps=1e-6, expert_updates=mode)
    opt_a = build_optimizer(ours, ocfg)
    opt_b = torch.optim.AdamW(param_groups(twin, WD), lr=LR, eps=1e-6)
    scheds = [WarmupCosine(o, total_steps=STEPS, warmup_steps=3) for o in (opt_a, opt_b)]
    tracker = ExpertTracker(ours)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.arange(16) % 5
    ours_split = [m for m in ours.modules() if isinstance(m, MoSALinear)]
    twin_split = [m for m in twin.modules() if isinstance(m, ReferenceSplitLinear)]
    assert len(ours_split) == len(twin_split) > 0
    for step in range(STEPS):
        rows = slice(8 * (step % 2), 8 * (step % 2) + 8)
        opt_a.zero_grad(set_to_none=True)
        tracker.reset()
        torch.manual_seed(step)  # the same dropout masks on both sides
        F.cross_entropy(ours(x[rows]), y[rows]).backward()
        opt_a.set_active(tracker.masks())
        opt_a.step()
        # torch 1.11's zero_grad() left zeros: every copy picked once keeps getting updates
        opt_b.zero_grad(set_to_none=mode == "local")
        torch.manual_seed(step)
        F.cross_entropy(twin(x[rows]), y[rows]).backward()
        opt_b.step()
        for s in scheds:
            s.step()
        assert [int(m.last_expert) for m in ours_split] == [m.last_expert for m in twin_split]
    tracker.close()


def _assert_parity(ours: nn.Module, twin: nn.Module, start: dict[str, torch.Tensor]) -> None:
    merge_reference(twin)
    moved = 0.0
    for (name, m), r in zip(
        ((n, m) for n, m in ours.named_modules() if isinstance(m, MoSALinear)),
        (m for m in twin.modules() if isinstance(m, ReferenceSplitLinear)),
        strict=True,
    ):
        merged = m.merged_weight().detach()
        torch.testing.assert_close(merged, r.merged.weight, rtol=0, atol=1e-6)
        if m.bias is not None:
            torch.testing.assert_close(m.merged_bias().detach(), r.merged.bias, rtol=0, atol=1e-6)
        moved = max(moved, float((merged - start[name]).abs().max()))
    assert moved > 1e-3  # the run trained the split projections: parity is not trivial
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), twin.eval()(x), rtol=0, atol=1e-6)


def _merged_start(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: m.merged_weight().detach().clone()
        for n, m in model.named_modules()
        if isinstance(m, MoSALinear)
    }


@pytest.mark.parametrize("mode", ["local", "reference"])
@pytest.mark.parametrize("granularity", ["element", "row", "column"])
@pytest.mark.parametrize("share", ["down", "up", "none"])
def test_parity_adapter_expert_bias(
    make_model: Callable[..., nn.Module], share: str, granularity: str, mode: str
) -> None:
    ours, twin = _pair(
        make_model, method="mosa", share=share, granularity=granularity, bias="expert"
    )
    start = _merged_start(ours)
    _train_side_by_side(ours, twin, mode)
    _assert_parity(ours, twin, start)


@pytest.mark.parametrize("mode", ["local", "reference"])
@pytest.mark.parametrize("share", ["down", "none"])
def test_parity_adapter_shared_bias(
    make_model: Callable[..., nn.Module], share: str, mode: str
) -> None:
    ours, twin = _pair(make_model, method="mosa", share=share, bias="shared")
    start = _merged_start(ours)
    _train_side_by_side(ours, twin, mode)
    _assert_parity(ours, twin, start)


@pytest.mark.parametrize("mode", ["local", "reference"])
@pytest.mark.parametrize(
    ("share", "granularity"), [("down", "element"), ("up", "row"), ("none", "column")]
)
def test_parity_lora(
    make_model: Callable[..., nn.Module], share: str, granularity: str, mode: str
) -> None:
    ours, twin = _pair(make_model, method="mosa_lora", share=share, granularity=granularity)
    start = _merged_start(ours)
    _train_side_by_side(ours, twin, mode)
    _assert_parity(ours, twin, start)


def test_parity_modes_differ(make_model: Callable[..., nn.Module]) -> None:
    """The two optimizer modes are different rules: a twin trained the other way disagrees."""
    ours, _ = _pair(make_model, method="mosa", share="up", bias="expert")
    _, twin = _pair(make_model, method="mosa", share="up", bias="expert")
    _train_side_by_side(ours, twin, "local")
    ours2, twin2 = _pair(make_model, method="mosa", share="up", bias="expert")
    _train_side_by_side(ours2, twin2, "reference")
    a = [m.merged_weight().detach() for m in ours.modules() if isinstance(m, MoSALinear)]
    b = [m.merged_weight().detach() for m in ours2.modules() if isinstance(m, MoSALinear)]
    assert max(float((p - q).abs().max()) for p, q in zip(a, b, strict=True)) > 1e-4

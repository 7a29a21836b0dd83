"""The engine's public training step (mosa.engine.step), which ``mosa bench speed`` times."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from engine_helpers import NUM_CLASSES, tiny_model

import mosa
from mosa.engine.losses import symmetric_kl
from mosa.engine.step import (
    STEP_STATS,
    Objective,
    accumulate_gradients,
    begin_step,
    train_step,
)


def _pair(dropout: float = 0.1) -> tuple[torch.nn.Module, torch.nn.Module]:
    cfg = mosa.MethodConfig(method="mosa", bottleneck=8, num_experts=4, seed=3, dropout=dropout)
    model = mosa.inject(tiny_model(), cfg).train()
    return model, copy.deepcopy(model)  # routing generators copied too: the same picks


def _adamw(model: torch.nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)


def _batch(n: int = 6, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g, dtype=dtype), torch.randint(
        NUM_CLASSES, (n,), generator=g
    )


@pytest.mark.parametrize("consistency", [False, True])
def test_train_step_equals_the_step_written_out(consistency: bool) -> None:
    # the step as the speed benchmark used to spell it: picks drawn outside the forward, both
    # consistency passes as one doubled-batch forward, CE (+ symmetric KL), backward, AdamW
    ours, theirs = _pair()
    opt_ours, opt_theirs = _adamw(ours), _adamw(theirs)
    x, y = _batch()
    objective = Objective(consistency=1.0 if consistency else 0.0)
    for step in range(3):
        torch.manual_seed(step)  # dropout masks
        stats = train_step(ours, opt_ours, x, y, objective)
        torch.manual_seed(step)
        opt_theirs.zero_grad(set_to_none=True)
        if consistency:
            logits, second = mosa.forward_twice(theirs, x)
            loss = F.cross_entropy(logits.float(), y) + symmetric_kl(logits, second)
        else:
            mosa.draw_routes(theirs, x.shape[0])
            loss = F.cross_entropy(theirs(x).float(), y)
        loss.backward()
        opt_theirs.step()
        assert stats.shape == (len(STEP_STATS),) and stats[0] == loss.detach()
        assert 0 <= stats[STEP_STATS.index("correct")] <= x.shape[0]
        assert (stats[STEP_STATS.index("kl")] > 0) == consistency
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_micro_batches_add_up_to_the_whole_batch() -> None:
    # no dropout: micro-batches would draw other masks than the whole batch
    whole, parts = (m.double() for m in _pair(dropout=0.0))
    x, y = _batch(8, torch.float64)
    objective = Objective(consistency=1.0)
    grads = []
    for model, k in ((whole, 1), (parts, 3)):  # 3 uneven micro-batches: 3 + 3 + 2 images
        begin_step(_adamw(model))
        stats = accumulate_gradients(model, x, y, objective, accumulate=k)
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
        assert stats[0] > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


class _FirstBlock:
    """Keeps the first block's outputs, as the trainer's deep-consistency hooks do."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.outputs: list[torch.Tensor] = []
        model.blocks[0].register_forward_hook(lambda _m, _a, out: self.outputs.append(out))

    def take(self) -> list[torch.Tensor]:
        out, self.outputs = self.outputs, []
        return out


def test_a_hidden_state_term_runs_two_passes_and_is_reported() -> None:
    model, _ = _pair()
    hidden = _FirstBlock(model)
    hidden.outputs.append(torch.zeros(1))  # left by a forward outside the step: dropped
    objective = Objective(deep_weight=0.5, hidden=hidden)
    assert objective.passes == 2 and Objective().passes == 1
    x, y = _batch()
    opt = _adamw(model)
    first = train_step(model, opt, x, y, objective)
    # zero-initialised Up: the passes differ only once a step has moved the experts apart
    assert first[STEP_STATS.index("deep")] == 0
    stats = train_step(model, opt, x, y, objective)
    assert stats[STEP_STATS.index("kl")] == 0 and stats[STEP_STATS.index("deep")] > 0
    assert hidden.outputs == []

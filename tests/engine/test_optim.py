"""Schedule values, expert-local AdamW updates and the pickle-free optimiser state."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mosa.adapters.sparse import MoSALinear
from mosa.engine.config import OptimConfig
from mosa.engine.optim import (
    ExpertTracker,
    SparseAdamW,
    WarmupCosine,
    build_optimizer,
    lr_at,
    optimizer_state_from_flat,
    optimizer_state_to_flat,
    param_groups,
)


def test_lr_at_warmup_then_cosine() -> None:
    kw = dict(base_lr=1.0, total_steps=10, warmup_steps=2, min_lr=0.1)
    # linear warm-up: (step + 1) / warmup_steps
    assert lr_at(0, **kw) == pytest.approx(0.5)
    assert lr_at(1, **kw) == pytest.approx(1.0)
    # cosine from the peak at step == warmup_steps towards min_lr at step == total_steps
    assert lr_at(2, **kw) == pytest.approx(1.0)
    assert lr_at(6, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: t = 4/8
    assert lr_at(9, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_at(10, **kw) == pytest.approx(0.1)
    # monotone after the warm-up, never below min_lr
    values = [lr_at(s, **kw) for s in range(2, 11)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert min(values) >= 0.1 - 1e-12
    # no warm-up: the first update already uses the peak
    assert lr_at(0, base_lr=2.0, total_steps=4, warmup_steps=0, min_lr=0.0) == pytest.approx(2.0)


def test_warmup_cosine_drives_the_optimizer_per_step() -> None:
    p = nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p], lr=0.4)
    sched = WarmupCosine(opt, total_steps=8, warmup_steps=4, min_lr=0.0)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])  # the lr this update uses
        sched.step()
    expected = [lr_at(s, base_lr=0.4, total_steps=8, warmup_steps=4, min_lr=0.0) for s in range(8)]
    assert seen == pytest.approx(expected)
    assert seen[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    # state round trip continues at the same point
    other = WarmupCosine(torch.optim.AdamW([p], lr=0.4), total_steps=8, warmup_steps=4)
    other.load_state_dict(sched.state_dict())
    assert other.step_count == 8
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosine(opt, total_steps=9, warmup_steps=4).load_state_dict(sched.state_dict())


def test_param_groups_skip_decay_on_biases_norms_and_timm_exclusions() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)
            self.pos_embed = nn.Parameter(torch.zeros(1, 2, 4))
            self.frozen = nn.Linear(4, 4).requires_grad_(False)

        def no_weight_decay(self) -> set[str]:
            return {"pos_embed"}

    m = M()
    groups = {g["group"]: g for g in param_groups(m, 0.05)}
    assert [p is m.lin.weight for p in groups["decay"]["params"]] == [True]
    assert groups["decay"]["weight_decay"] == 0.05
    no_decay = groups["no_decay"]["params"]
    assert groups["no_decay"]["weight_decay"] == 0.0
    for p in (m.lin.bias, m.norm.weight, m.norm.bias, m.pos_embed):
        assert any(q is p for q in no_decay)
    assert not any(q is m.frozen.weight for g in groups.values() for q in g["params"])


def _grads(seed: int, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g) for s in shapes]


def test_sparse_adamw_with_full_mask_matches_torch_adamw() -> None:
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(5, 3))
    b = nn.Parameter(a.detach().clone())
    ref = torch.optim.AdamW([a], lr=0.01, weight_decay=0.1)
    ours = SparseAdamW([b], lr=0.01, weight_decay=0.1, masked=[b])
    for step in range(5):
        (g,) = _grads(step, (5, 3))
        a.grad, b.grad = g.clone(), g.clone()
        ref.step()
        ours.set_active({b: torch.ones(5, 3, dtype=torch.bool)})
        ours.step()
    # same update up to float rounding (the bias correction is computed in another order)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_sparse_adamw_leaves_unpicked_experts_alone() -> None:
    torch.manual_seed(0)
    w0 = torch.randn(4, 6)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, :3] = True
    plain_p = nn.Parameter(w0.clone())
    sparse_p = nn.Parameter(w0.clone())
    plain = torch.optim.AdamW([plain_p], lr=0.1, weight_decay=0.1)
    sparse = SparseAdamW([sparse_p], lr=0.1, weight_decay=0.1, masked=[sparse_p], mode="local")
    # step 1: the masked entries get a gradient; step 2: zero gradient everywhere (not picked)
    for g in (torch.where(mask, torch.ones(4, 6), torch.zeros(4, 6)), torch.zeros(4, 6)):
        plain_p.grad, sparse_p.grad = g.clone(), g.clone()
        plain.step()
        sparse.set_active({sparse_p: mask if g.any() else torch.zeros_like(mask)})
        sparse.step()
    # plain AdamW moves the unpicked entries (decay) and keeps the picked ones moving
    # (momentum) when they were not picked; the expert-local update does neither
    assert not torch.equal(plain_p[~mask], w0[~mask])
    assert torch.equal(sparse_p.detach()[~mask], w0[~mask])
    once = w0[mask] * (1 - 0.1 * 0.1) - 0.1  # one fresh AdamW step: lr * sign(grad)
    torch.testing.assert_close(sparse_p.detach()[mask], once, rtol=1e-5, atol=1e-6)
    assert torch.equal(sparse.state[sparse_p]["step_map"], mask.float())


def test_expert_tracker_masks_follow_the_picks() -> None:
    lin = MoSALinear(
        6, 4, num_experts=3, init="kaiming", generator=torch.Generator().manual_seed(1)
    )
    tracker = ExpertTracker(lin)
    x = torch.randn(2, 6)
    lin.train()
    lin(x)
    first = lin.last_expert
    masks = tracker.masks()
    assert torch.equal(masks[lin.weight], lin.owner == first)
    lin(x)
    both = {first, lin.last_expert}
    expected = torch.zeros_like(lin.owner, dtype=torch.bool)
    for k in both:
        expected |= lin.owner == k
    assert torch.equal(tracker.masks()[lin.weight], expected)
    tracker.reset()
    lin.eval()
    lin(x)  # eval uses the merged weight: no pick
    assert tracker.masks() == {}
    tracker.close()


def test_optimizer_state_flat_round_trip() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    opt = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.01))
    for _ in range(2):
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    names = {id(p): n for n, p in model.named_parameters()}
    tensors, meta = optimizer_state_to_flat(opt, names)
    assert set(tensors) >= {"0.weight/exp_avg", "0.weight/exp_avg_sq", "0.weight/step"}
    meta = json.loads(json.dumps(meta))  # must be plain JSON

    fresh = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    fresh.load_state_dict(model.state_dict())
    opt2 = build_optimizer(fresh, OptimConfig(lr=0.1, weight_decay=0.01))
    names2 = {id(p): n for n, p in fresh.named_parameters()}
    optimizer_state_from_flat(opt2, names2, tensors, meta)
    x = torch.randn(5, 3)
    for m, o in ((model, opt), (fresh, opt2)):
        m(x).pow(2).sum().backward()
        o.step()
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
    # another model's parameters are refused by name
    other = nn.Sequential(nn.Linear(3, 4))
    opt3 = build_optimizer(other, OptimConfig())
    with pytest.raises(ValueError, match="does not fit"):
        optimizer_state_from_flat(
            opt3, {id(p): n for n, p in other.named_parameters()}, tensors, meta
        )


def test_configs_written_with_sparse_updates_still_load() -> None:
    from mosa.engine.config import TrainConfig

    for legacy, mode in ((True, "local"), (False, "reference")):
        cfg = TrainConfig.from_dict({"optim": {"sparse_updates": legacy}})
        assert cfg.optim.expert_updates == mode
    assert OptimConfig().expert_updates == "reference"  # the paper's rule is the default
    with pytest.raises(ValueError, match="expert_updates must be local or reference"):
        OptimConfig(expert_updates="dense")

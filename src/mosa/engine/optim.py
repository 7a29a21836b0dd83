"""Optimiser and learning-rate schedule: AdamW with expert-wise MoSA updates, warm-up + cosine.

MoSA keeps the N experts of a split projection in ONE tensor. :class:`SparseAdamW` updates it
as the reference code's N separate expert copies would be updated by AdamW, in one of two modes
(``OptimConfig.expert_updates``):

* ``"local"``: an expert's entries (its weight entries, its bias row when biases are per expert,
  and its decayed copy of the initial weight) are updated, decayed and step-counted only in the
  steps where it was picked: N copies whose gradients are ``None`` when unused.
* ``"reference"``: the paper's code on torch 1.11, whose ``zero_grad()`` left zero gradients, so
  from its first pick on an expert copy gets an AdamW update every step (momentum keeps moving
  it, weight decay shrinks it), with its own step count for the bias correction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from mosa.adapters.sparse import MoSALinear
from mosa.engine.config import OptimConfig

EXPERT_UPDATES = ("local", "reference")


# ----------------------------------------------------------------------------- parameter groups
def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: with weight decay, and without (biases, norms,
    1-d tensors and whatever the timm model lists in ``no_weight_decay()``)."""
    skip = set()
    if hasattr(model, "no_weight_decay"):
        skip = set(model.no_weight_decay())
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "group": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "group": "no_decay"},
    ]
    return [g for g in groups if g["params"]]


def _scale_expert_lr(
    groups: list[dict[str, Any]], experts: list[MoSALinear], lr: float
) -> list[dict[str, Any]]:
    """Move the split projections' tensors into groups of their own with learning rate ``lr``."""
    split = {id(t) for m in experts for t in (m.weight, m.bias) if t is not None}
    out: list[dict[str, Any]] = []
    for g in groups:
        mine = [p for p in g["params"] if id(p) in split]
        rest = [p for p in g["params"] if id(p) not in split]
        if rest:
            out.append({**g, "params": rest})
        if mine:
            out.append({**g, "params": mine, "lr": lr, "group": f"expert_{g['group']}"})
    return out


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> SparseAdamW:
    """AdamW over the trainable parameters of ``model`` (unwrapped, not the DDP wrapper), with
    the split projections updated expert-wise in ``cfg.expert_updates`` mode."""
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters: was mosa.inject called?")
    experts = [m for m in model.modules() if isinstance(m, MoSALinear) and m.weight.requires_grad]
    if cfg.expert_lr_scale != 1.0:
        groups = _scale_expert_lr(groups, experts, cfg.lr * cfg.expert_lr_scale)
    return SparseAdamW(
        groups,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        eps=cfg.eps,
        experts=experts,
        mode=cfg.expert_updates,
    )


# ----------------------------------------------------------------------------- expert tracking
class ExpertTracker:
    """Which experts every MoSALinear picked since the last reset (read from the picks each
    layer records when it draws, so a compiled forward needs no hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in model.modules() if isinstance(m, MoSALinear)]

    def masks(self) -> dict[nn.Parameter, torch.Tensor]:
        """For each split projection used since the reset: bool masks of what its picked
        experts own (weight entries, and bias rows when biases are per expert)."""
        out: dict[nn.Parameter, torch.Tensor] = {}
        for m in self.modules:
            if m.drawn:
                out.update(m.expert_masks(torch.tensor(sorted(m.drawn))))
        return out

    def reset(self) -> None:
        for m in self.modules:
            m.drawn.clear()

    def close(self) -> None:
        self.reset()


class SparseAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` whose ``masked`` parameters are updated entry-wise under a mask.

    Before each :meth:`step`, :meth:`set_active` gives, per masked parameter, the bool mask of
    entries that took part in the step (the picked experts' entries). In ``mode="local"`` only
    those entries get the AdamW update, the decoupled weight decay, the moment updates and a
    step count (kept per entry in ``step_map`` for the bias correction); in
    ``mode="reference"`` every entry that was ever active does (see the module docstring). A
    masked parameter without a mask is updated densely, by the same formula. ``experts``
    (split projections) adds their weights and per-expert biases to ``masked`` and decays each
    active expert's ``init_scale`` with the weight's decoupled weight decay. Other parameters
    go through torch's AdamW unchanged.
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        masked: Iterable[nn.Parameter] = (),
        experts: Iterable[MoSALinear] = (),
        mode: str = "reference",
        **kwargs: Any,
    ) -> None:
        super().__init__(params, **kwargs)
        if mode not in EXPERT_UPDATES:
            raise ValueError(f"mode must be one of {', '.join(EXPERT_UPDATES)}, got {mode!r}")
        self.mode = mode
        self._masked = {id(p) for p in masked}
        self._experts: dict[int, MoSALinear] = {}
        for m in experts:
            self._masked.add(id(m.weight))
            self._experts[id(m.weight)] = m
            if m.expert_bias and m.bias is not None and m.bias.requires_grad:
                self._masked.add(id(m.bias))
        self._active: dict[int, torch.Tensor] = {}
        for g in self.param_groups:
            if g.get("amsgrad") or g.get("maximize"):
                raise ValueError("SparseAdamW supports neither amsgrad nor maximize")

    @property
    def has_masked(self) -> bool:
        """Whether any parameter is updated under expert masks."""
        return bool(self._masked)

    def set_active(self, masks: Mapping[nn.Parameter, torch.Tensor]) -> None:
        self._active = {id(p): m for p, m in masks.items()}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        held: list[tuple[nn.Parameter, torch.Tensor, dict[str, Any]]] = []
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) in self._masked and p.grad is not None:
                    held.append((p, p.grad, group))
                    p.grad = None  # torch's AdamW skips parameters without a gradient
        try:
            loss = super().step(closure)
        finally:
            for p, g, _ in held:
                p.grad = g
        for p, g, group in held:
            active = self._masked_update(p, g, group, self._active.get(id(p)))
            module = self._experts.get(id(p))
            if module is not None and module.init_scale is not None and group["weight_decay"]:
                self._decay_init(module, active, group["lr"] * group["weight_decay"])
        self._active = {}
        return loss

    @staticmethod
    def _decay_init(module: MoSALinear, active: torch.Tensor, rate: float) -> None:
        """Decay the initial-weight copy of every expert that owns an active entry."""
        owners = module.owner.long()[active]
        hit = torch.bincount(owners, minlength=module.num_experts) > 0
        module.init_scale[hit] *= 1.0 - rate  # a Python float, as torch's AdamW decays

    def _masked_update(
        self,
        p: nn.Parameter,
        grad: torch.Tensor,
        group: dict[str, Any],
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """One AdamW update of the ``mask`` entries (widened to every entry ever updated in
        reference mode); returns the mask of entries it updated."""
        state = self.state[p]
        if not state:
            # "step" (updates with any active entry) keeps torch's state layout valid for
            # AdamW.load_state_dict; the bias correction uses the per-entry "step_map"
            state["step"] = torch.tensor(0.0)
            state["step_map"] = torch.zeros_like(p, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        steps = state["step_map"]
        if mask is None:
            mask = torch.ones_like(p, dtype=torch.bool)
        if self.mode == "reference":
            mask = mask | (steps > 0)
        beta1, beta2 = group["betas"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        state["step"] += 1
        steps.add_(mask.to(steps.dtype))
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.copy_(torch.where(mask, m * beta1 + grad * (1 - beta1), m))
        v.copy_(torch.where(mask, v * beta2 + grad * grad * (1 - beta2), v))
        # entries never updated have steps == 0; clamp keeps their (unused) bias terms finite
        t = steps.clamp(min=1.0).to(p.dtype)
        bc1 = 1 - beta1**t
        bc2 = 1 - beta2**t
        denom = v.sqrt() / bc2.sqrt() + eps
        new = p * (1 - lr * wd) - (lr / bc1) * m / denom
        p.copy_(torch.where(mask, new, p))
        return mask


# ----------------------------------------------------------------------------- schedule
def lr_at(
    step: int, *, base_lr: float, total_steps: int, warmup_steps: int, min_lr: float
) -> float:
    """Learning rate of optimiser update number ``step`` (0-based).

    Linear warm-up ``base_lr * (step + 1) / warmup_steps`` for the first ``warmup_steps``
    updates (so the first update is not wasted at lr 0), then a half cosine from ``base_lr``
    (at ``step == warmup_steps``) that would reach ``min_lr`` at ``step == total_steps``.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


class WarmupCosine:
    """Per-step schedule for every parameter group; its state is two integers and the lrs."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        total_steps: int,
        warmup_steps: int,
        min_lr: float = 0.0,
    ) -> None:
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr = float(min_lr)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    def _apply(self) -> None:
        for g, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = lr_at(
                self.step_count,
                base_lr=base,
                total_steps=self.total_steps,
                warmup_steps=self.warmup_steps,
                min_lr=self.min_lr,
            )

    def step(self) -> None:
        """Advance after an optimiser update, setting the lr of the next one."""
        self.step_count += 1
        self._apply()

    @property
    def lr(self) -> float:
        """Current lr of the first group (the one the next update uses)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "min_lr": self.min_lr,
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in ("total_steps", "warmup_steps"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"schedule {key} differs: checkpoint {state[key]}, run {getattr(self, key)}"
                )
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self.min_lr = float(state["min_lr"])
        self.step_count = int(state["step_count"])
        self._apply()


# ----------------------------------------------------------------------------- pickle-free state
def optimizer_state_to_flat(
    optimizer: torch.optim.Optimizer, names: Mapping[int, str]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser's state into tensors (``<param name>/<key>``) and JSON-able rest.

    ``names`` maps ``id(param)`` to the parameter's name, so the state survives a rebuild of
    the model and optimiser in another process (indices alone would silently shift).
    """
    sd = optimizer.state_dict()
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        name = order[idx]
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{name}/{key}"] = value
            else:
                scalars.setdefault(name, {})[key] = value
    groups = []
    for g in sd["param_groups"]:
        g = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        g["params"] = [order[i] for i in g["params"]]
        groups.append(g)
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_state_from_flat(
    optimizer: torch.optim.Optimizer,
    names: Mapping[int, str],
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
) -> None:
    """Inverse of :func:`optimizer_state_to_flat`; errors name parameters that do not match."""
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    index = {n: i for i, n in enumerate(order)}
    saved_groups = meta["param_groups"]
    saved_names = [n for g in saved_groups for n in g["params"]]
    if saved_names != order:
        missing = sorted(set(order) - set(saved_names))
        extra = sorted(set(saved_names) - set(order))
        raise ValueError(
            "optimizer state does not fit the model's trainable parameters "
            f"(missing: {missing[:5]}, unexpected: {extra[:5]}, or a different order)"
        )
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, sub = key.rpartition("/")
        # a copy: torch would otherwise keep the caller's tensors as live optimiser state
        state.setdefault(index[name], {})[sub] = value.clone()
    for name, values in meta.get("scalars", {}).items():
        state.setdefault(index[name], {}).update(values)
    groups = []
    for g in saved_groups:
        g = dict(g)
        g["params"] = [index[n] for n in g["params"]]
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})

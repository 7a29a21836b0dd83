"""One optimizer step of MoSA training, as functions anyone can call: the trainer's loop and
``mosa bench speed`` time and run the same step.

A step is :func:`begin_step` (gradients cleared, the expert tracker reset), then
:func:`accumulate_gradients` (the batch's forward and backward in ``accumulate``
micro-batches that share one draw of expert picks), then :func:`apply_update` (the optimizer
step, with expert-local masks when a tracker is given). :func:`train_step` runs the three in
order; a caller that clips or checks gradients in between calls them one by one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

import mosa
from mosa.engine.evaluate import autocast
from mosa.engine.losses import classification_loss, hidden_consistency, symmetric_kl
from mosa.engine.optim import ExpertTracker
from mosa.model import SharedRoutes

__all__ = [
    "STEP_STATS",
    "HiddenStates",
    "Objective",
    "accumulate_gradients",
    "apply_update",
    "begin_step",
    "train_step",
]

# what accumulate_gradients returns, in order (loss, CE, KL and deep term weighted by share)
STEP_STATS = ("loss", "ce", "kl", "deep", "correct")

Forward = Callable[[torch.Tensor], torch.Tensor]


class HiddenStates(Protocol):
    """Collects block outputs during a forward (deep consistency); ``take`` empties it."""

    def take(self) -> Sequence[torch.Tensor]: ...


@dataclass(frozen=True)
class Objective:
    """What one training step minimises and the precision its forward runs in.

    ``consistency``: weight of the symmetric KL between two stochastic passes (0: one pass).
    ``hidden`` with ``deep_weight``: MSE between the passes' block outputs, also two passes.
    ``amp``: autocast dtype of the forward (None: the parameters' own)."""

    consistency: float = 0.0
    label_smoothing: float = 0.0
    deep_weight: float = 0.0
    hidden: HiddenStates | None = None
    amp: torch.dtype | None = None

    @property
    def passes(self) -> int:
        """Stochastic passes per image: two when a consistency term compares them."""
        return 2 if self.consistency > 0 or self.hidden is not None else 1


def begin_step(optimizer: torch.optim.Optimizer, tracker: ExpertTracker | None = None) -> None:
    """Clear the gradients (to None: memory freed) and the experts the tracker saw."""
    optimizer.zero_grad(set_to_none=True)
    if tracker is not None:
        tracker.reset()


def apply_update(optimizer: Any, tracker: ExpertTracker | None = None) -> None:
    """The optimizer step; with a tracker, only the experts the step used are updated."""
    if tracker is not None:
        optimizer.set_active(tracker.masks())
    optimizer.step()


def accumulate_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    objective: Objective,
    *,
    forward: Forward | None = None,
    accumulate: int = 1,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> torch.Tensor:
    """Forward and backward of the batch ``x`` in ``accumulate`` micro-batches sharing the
    expert picks drawn once for the whole batch, so the gradients equal one batch's.
    ``forward`` (default: ``model``) maps images to logits; ``no_sync`` (DDP) holds the
    gradient all-reduce back until the last micro-batch. Returns the float32 sums named by
    :data:`STEP_STATS` (the loss terms weighted by each micro-batch's share of the images)."""
    parts = [
        (a, b)
        for a, b in zip(x.tensor_split(accumulate), target.tensor_split(accumulate), strict=True)
        if len(a)
    ]
    totals = x.new_zeros(5, dtype=torch.float32)
    with mosa.shared_routes(model, x.shape[0], passes=objective.passes) as routes:
        for i, (xs, ys) in enumerate(parts):
            last = i == len(parts) - 1 or no_sync is None
            with contextlib.nullcontext() if last else no_sync():
                totals += _micro_step(routes, xs, ys, objective, forward, xs.shape[0] / x.shape[0])
    return totals


def _micro_step(
    routes: SharedRoutes,
    x: torch.Tensor,
    target: torch.Tensor,
    objective: Objective,
    forward: Forward | None,
    share: float,
) -> torch.Tensor:
    """Forward and backward of one micro-batch holding ``share`` of the step's images: its
    loss is weighted by it, so the gradients add up to the whole batch's mean."""
    if objective.hidden is not None:
        objective.hidden.take()  # drop outputs a forward outside the step left behind
    kl = deep = None
    with autocast(x.device, objective.amp):
        logits, *second = routes.forward(x, forward)
    loss = ce = classification_loss(logits, target, objective.label_smoothing)
    if second:
        if objective.consistency > 0:
            kl = symmetric_kl(logits, second[0])
            loss = loss + objective.consistency * kl
        if objective.hidden is not None:
            halves = [h.chunk(2) for h in objective.hidden.take()]
            deep = hidden_consistency([a for a, _ in halves], [b for _, b in halves])
            loss = loss + objective.deep_weight * deep
    (loss * share).backward()
    zero = loss.new_zeros(())
    return torch.stack(
        [
            loss.detach() * share,
            ce.detach() * share,
            (kl.detach() if kl is not None else zero) * share,
            (deep.detach() if deep is not None else zero) * share,
            (logits.detach().argmax(dim=-1) == target).sum().float(),
        ]
    ).float()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    target: torch.Tensor,
    objective: Objective,
    *,
    forward: Forward | None = None,
    tracker: ExpertTracker | None = None,
    accumulate: int = 1,
) -> torch.Tensor:
    """One whole optimizer step over ``x`` (no gradient clipping, no learning-rate schedule):
    :func:`begin_step`, :func:`accumulate_gradients`, :func:`apply_update`. Returns the step's
    :data:`STEP_STATS` as a float32 tensor (read it when needed: reading it synchronises)."""
    begin_step(optimizer, tracker)
    totals = accumulate_gradients(
        model, x, target, objective, forward=forward, accumulate=accumulate
    )
    apply_update(optimizer, tracker)
    return totals

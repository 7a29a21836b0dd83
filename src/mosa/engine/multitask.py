"""Multi-task training: which task each step trains, and the batches of each task.

The heads (one per task, or one joint head) are the model's, see :mod:`mosa.heads`. Which task
a training step uses comes from :func:`task_order`, a pure function of the seed and the epoch,
so a resumed run replays the same schedule.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from mosa.heads import task_logits

SAMPLING_RULES = ("proportional", "uniform")


class TaskModel(nn.Module):
    """``forward(x, task, union)`` -> :func:`task_logits`: the module DDP wraps in a
    multi-task run (DDP calls ``forward`` only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, task: str, union: bool = False) -> torch.Tensor:
        return task_logits(self.model, x, task, union)


# ----------------------------------------------------------------------------- schedule
def task_order(steps: Sequence[int], rule: str, seed: int, epoch: int) -> list[int]:
    """Task index of each step of ``epoch``; ``sum(steps)`` steps in all.

    ``proportional``: task i gets exactly ``steps[i]`` steps (one pass over its loader, so the
    share of each task is proportional to its size). ``uniform``: every task gets the same
    number of steps (the remainder going to randomly chosen tasks); small tasks then cycle
    through their loader several times. Either way the order is a seeded shuffle that depends
    only on ``seed`` and ``epoch``.
    """
    if rule not in SAMPLING_RULES:
        raise ValueError(f"task sampling must be one of {', '.join(SAMPLING_RULES)}, got {rule!r}")
    if not steps or any(s < 1 for s in steps):
        raise ValueError(f"every task needs at least one step per epoch, got {list(steps)}")
    rng = np.random.default_rng([int(seed) % 2**32, int(epoch), 0x7A5C])
    n = len(steps)
    if rule == "proportional":
        counts = [int(s) for s in steps]
    else:
        base, extra = divmod(int(sum(steps)), n)
        counts = [base] * n
        for i in rng.choice(n, size=extra, replace=False):
            counts[int(i)] += 1
    order = np.repeat(np.arange(n), counts)
    rng.shuffle(order)
    return [int(t) for t in order]


class TaskStream:
    """Batches of one task's train loader on demand, restarting the loader when it runs out.

    Pass ``p`` of epoch ``e`` shuffles with sampler epoch ``e + p * 1_000_003`` (pass 0: ``e``,
    the single-task order) and seeds the loader workers from ``(seed, e, p)``, so every batch
    is a function of the epoch alone and a resumed run sees the same batches.
    """

    def __init__(
        self, loader: DataLoader, sampler: DistributedSampler, gen: torch.Generator, seed: int
    ) -> None:
        self.loader, self.sampler, self.gen, self.seed = loader, sampler, gen, int(seed)
        self.epoch = 0
        self.passes = 0
        self._it: Iterator[Any] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def start(self, epoch: int) -> None:
        """Begin ``epoch``: the next batch is the first of the epoch's shuffle."""
        self.epoch, self.passes, self._it = int(epoch), 0, None

    def _begin(self) -> None:
        self.sampler.set_epoch(self.epoch + self.passes * 1_000_003)
        self.gen.manual_seed(self.seed * 1_000_003 + self.epoch + self.passes * 7_919)
        self._it = iter(self.loader)

    def next(self) -> Any:
        if self._it is None:
            self._begin()
        try:
            return next(self._it)  # type: ignore[arg-type]
        except StopIteration:
            self.passes += 1
            self._begin()
            return next(self._it)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Drop the current iterator (shuts down loader workers of an unfinished pass)."""
        self._it = None

"""Top-1 evaluation in eval mode (MoSA projections use their merged weight, dropout is off)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mosa.engine.distributed import DistInfo, all_reduce_sum


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``dtype`` is set; a no-op otherwise."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    info: DistInfo,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float | int]:
    """Accuracy and mean cross-entropy over the whole split (all ranks' shards summed).

    ``model`` should be the unwrapped module: evaluation needs no gradient synchronisation.
    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    correct = loss_sum = seen = 0.0
    try:
        for x, y in loader:
            x = x.to(info.device, non_blocking=True)
            y = torch.as_tensor(y).to(info.device, non_blocking=True)
            with autocast(info.device, amp_dtype):
                logits = model(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(dim=-1) == y).sum().item()
            seen += y.numel()
    finally:
        model.train(was_training)
    correct, loss_sum, seen = all_reduce_sum([correct, loss_sum, seen], info)
    n = int(seen)
    return {
        "acc": correct / n if n else float("nan"),
        "loss": loss_sum / n if n else float("nan"),
        "n": n,
    }

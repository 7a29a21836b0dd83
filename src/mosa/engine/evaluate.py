"""Top-1 evaluation in eval mode (MoSA projections use their merged weight, dropout is off);
:func:`mosa.evaluation.load_for_eval` rebuilds a trained model to evaluate."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mosa.engine.distributed import DistInfo, all_reduce_sum

__all__ = ["autocast", "evaluate"]


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
    *,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    span: tuple[int, int] | None = None,
) -> dict[str, float | int]:
    """Accuracy and mean cross-entropy over the whole split (all ranks' shards summed).

    ``model`` should be the unwrapped module: evaluation needs no gradient synchronisation.
    The model's train/eval mode is restored afterwards. ``forward`` replaces ``model(x)``
    (e.g. one task's head of a multi-task model). With ``span=(offset, count)`` the logits
    are a joint head's over several tasks: ``acc`` and ``loss`` use the task's slice
    ``offset:offset+count`` and ``acc_union`` counts an argmax over all classes equal to
    ``offset + label`` (the task-agnostic accuracy of the reference code).
    """
    run = forward if forward is not None else model
    was_training = model.training
    model.eval()
    correct = loss_sum = seen = union = 0.0
    try:
        for x, y in loader:
            x = x.to(info.device, non_blocking=True)
            y = torch.as_tensor(y).to(info.device, non_blocking=True)
            with autocast(info.device, amp_dtype):
                logits = run(x)
            logits = logits.float()
            if span is not None:
                union += (logits.argmax(dim=-1) == y + span[0]).sum().item()
                logits = logits[:, span[0] : span[0] + span[1]]
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(dim=-1) == y).sum().item()
            seen += y.numel()
    finally:
        model.train(was_training)
    correct, loss_sum, seen, union = all_reduce_sum([correct, loss_sum, seen, union], info)
    n = int(seen)
    out: dict[str, float | int] = {
        "acc": correct / n if n else float("nan"),
        "loss": loss_sum / n if n else float("nan"),
        "n": n,
    }
    if span is not None:
        out["acc_union"] = union / n if n else float("nan")
    return out

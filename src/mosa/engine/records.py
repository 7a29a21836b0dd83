"""What a run reports: per-epoch metric records (``metrics.jsonl``), the log line of an epoch,
and where the run ran (:mod:`mosa.engine.summary` makes the summary from them). Pure
functions of numbers the trainer measured."""

from __future__ import annotations

import os
import platform
import socket
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import timm
import torch

from mosa._version import __version__
from mosa.engine.distributed import DistInfo

# what one task's steps add up to within an epoch (summed over ranks before a record is made)
SUM_KEYS = ("loss", "ce", "kl", "deep", "correct", "seen", "steps")


def new_sums(tasks: int) -> list[dict[str, float]]:
    return [dict.fromkeys(SUM_KEYS, 0.0) for _ in range(tasks)]


def add_step(sums: dict[str, float], step: dict[str, float], images: float) -> None:
    """Add one step's batch means (weighted by its ``images``) to a task's sums."""
    for k in ("loss", "ce", "kl", "deep"):
        sums[k] += step[k] * images
    sums["correct"] += step["correct"]
    sums["seen"] += images
    sums["steps"] += 1


def flatten_sums(sums: Sequence[dict[str, float]]) -> list[float]:
    return [s[k] for s in sums for k in SUM_KEYS]


def unflatten_sums(flat: Sequence[float], tasks: int) -> list[dict[str, float]]:
    n = len(SUM_KEYS)
    return [dict(zip(SUM_KEYS, flat[i * n : (i + 1) * n], strict=True)) for i in range(tasks)]


def task_record(sums: dict[str, float], val: dict[str, Any] | None, world_size: int) -> dict:
    """One task's part of an epoch record."""
    seen = sums["seen"]
    return {
        # steps are counted once per rank: every rank runs the same steps
        "steps": int(sums["steps"] / world_size),
        "train_images": int(seen),
        "train_loss": sums["loss"] / seen if seen else None,
        "train_acc": sums["correct"] / seen if seen else None,
        "val_acc": val["acc"] if val else None,
        "val_loss": val["loss"] if val else None,
    }


def task_values(tasks: dict[str, dict[str, Any]], key: str) -> list[float]:
    """``key`` of every task record that has one (a task without a val split has None)."""
    return [r[key] for r in tasks.values() if r[key] is not None]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def epoch_record(
    epoch: int,
    global_step: int,
    per_task: list[dict[str, float]],
    tasks: dict[str, dict[str, Any]],
    *,
    lr: float,
    train_s: float,
    consistency: bool,
    deep: bool,
) -> dict[str, Any]:
    """The ``metrics.jsonl`` record of an epoch (``epoch_seconds`` is added once it ends)."""
    totals = {k: sum(p[k] for p in per_task) for k in SUM_KEYS}
    seen = max(totals["seen"], 1.0)
    return {
        "epoch": epoch,
        "global_step": global_step,
        "train_loss": totals["loss"] / seen,
        "train_ce": totals["ce"] / seen,
        "train_consistency": totals["kl"] / seen if consistency else None,
        "train_deep_consistency": totals["deep"] / seen if deep else None,
        "train_acc": totals["correct"] / seen,
        # multi-task: the mean over the tasks with a held-out val split
        "val_acc": _mean(task_values(tasks, "val_acc")),
        "val_loss": _mean(task_values(tasks, "val_loss")),
        "lr": lr,
        "train_images": int(totals["seen"]),
        "train_seconds": train_s,
        "images_per_s": totals["seen"] / train_s if train_s > 0 else None,
        "tasks": tasks,
    }


def _acc(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def epoch_line(record: dict[str, Any], epochs: int, multitask: bool) -> str:
    """The log line of an epoch."""
    val = _acc(record["val_acc"])
    if multitask:
        per_task = ", ".join(f"{n} {_acc(r['val_acc'])}" for n, r in record["tasks"].items())
        val += f" (mean; {per_task})"
    return (
        f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.4f}, "
        f"train acc {record['train_acc']:.4f}, val acc {val}, lr {record['lr']:.3g}, "
        f"{record['epoch_seconds']:.1f}s, {record['images_per_s'] or 0.0:.0f} img/s"
    )


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak memory in bytes and what it measures (CUDA allocations, or the process's peak RSS)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    import resource  # Unix only: imported where it is used

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_max_rss"


def versions() -> dict[str, str]:
    return {
        "mosa": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's (the machine type where the platform names none)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def host(device: torch.device, info: DistInfo, amp: torch.dtype | None) -> dict[str, Any]:
    """Where a run ran: host, device, world size, autocast dtype, process id."""
    return {
        "hostname": socket.gethostname(),
        "device": str(device),
        "device_name": device_name(device),
        "world_size": info.world_size,
        "backend": info.backend,
        "amp": str(amp).replace("torch.", "") if amp else "off",
        "pid": os.getpid(),
    }

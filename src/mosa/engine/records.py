"""What a run reports: per-epoch metric records (``metrics.jsonl``), the log line of an epoch,
and the run summary (``summary.json``). Pure functions of numbers the trainer measured."""

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


def test_by_epoch(history: list[dict[str, Any]], on: bool) -> dict[str, Any]:
    """With ``eval.test_every_epoch``: the test accuracy after each epoch and the seconds
    those evaluations took, as a record for comparison only (nothing selects on it)."""
    if not on:
        return {}
    return {
        "test_by_epoch": [r.get("test_acc") for r in history],
        "test_by_epoch_seconds": sum(r.get("test_seconds") or 0.0 for r in history),
        "test_by_epoch_note": "record only: the reported model is the final one, chosen by val",
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


def val_note(tasks: dict[str, dict[str, Any]], multitask: bool) -> str | None:
    """Why val accuracy is missing or not held out, for the summary (None: nothing to say)."""
    notes = [f"{n}: {e['val_note']}" for n, e in tasks.items() if e["val_note"]]
    if not notes:
        return None
    return next(iter(tasks.values()))["val_note"] if not multitask else "; ".join(notes)


def best_val(history: list[dict[str, Any]]) -> tuple[float | None, int | None]:
    """The best val accuracy and its (earliest) epoch: information only."""
    vals = [(r["val_acc"], r["epoch"]) for r in history if r.get("val_acc") is not None]
    return max(vals, key=lambda v: (v[0], -v[1])) if vals else (None, None)


def accuracies(tasks: dict[str, dict[str, Any]], multitask: bool) -> dict[str, float | None]:
    """The summary's headline accuracies: a single task's, or the means over the tasks."""

    def mean(key: str) -> float | None:
        return _mean(task_values(tasks, key))

    first = next(iter(tasks.values()))
    return {
        "val_acc": mean("val_acc") if multitask else first["val_acc"],
        "test_acc": mean("test_acc") if multitask else first["test_acc"],
        "mean_val_acc": mean("val_acc"),
        "mean_test_acc": mean("test_acc"),
    }


def throughput(history: list[dict[str, Any]]) -> dict[str, float | None]:
    images = sum(r.get("train_images", 0) for r in history)
    train_s = sum(r.get("train_seconds", 0.0) for r in history)
    return {"train_time_s": train_s, "images_per_s": images / train_s if train_s > 0 else None}

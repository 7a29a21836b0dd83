"""What runs inside a worker: train one run folder (skip it when finished, resume it when
started), and check that a machine can reach the grid's folders.

The run folder is the truth: ``summary.json`` means finished, a ``last/`` checkpoint means
started. Nothing else (no lock file, no scheduler state) decides what a run needs.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mosa.config import ConfigError
from mosa.engine.config import TrainConfig, config_changes

__all__ = ["config_differences", "execute", "reach_problems", "run_one", "run_status"]

TrainFn = Callable[..., dict[str, Any]]
# Fields that may differ between a run's saved config and the grid's without changing results.
_IGNORED_FIELDS = ("out", "device", "num_workers")


def run_status(run_dir: str | Path) -> str:
    """``done`` (summary.json exists), ``resume`` (a ``last/`` checkpoint exists) or ``new``."""
    d = Path(run_dir)
    if (d / "summary.json").is_file():
        return "done"
    if (d / "last").is_dir() and any((d / "last").iterdir()):
        return "resume"
    return "new"


def config_differences(run_dir: str | Path, config: TrainConfig) -> list[str]:
    """Dotted fields whose values differ between ``run_dir/config.json`` and ``config``
    (empty when there is no readable config.json).

    The engine saves the *resolved* config (image size, normalisation, consistency weight
    filled in), so a field left as None (= automatic) in ``config`` matches any saved value.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return []
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        return []  # unreadable: the engine's own resume checks decide
    return list(config_changes(saved, config.to_dict(), ignore=_IGNORED_FIELDS, automatic=True))


def _train_fn() -> TrainFn:
    # imported when needed: planning a grid must not pull in the training stack
    return importlib.import_module("mosa.engine").train


def run_one(config: TrainConfig, *, train_fn: TrainFn | None = None) -> tuple[str, dict[str, Any]]:
    """Train ``config`` unless ``config.out`` already holds a finished run; resume a started one.

    Returns (status before this call, summary). A run folder whose config.json disagrees with
    ``config`` is refused rather than silently mixed.
    """
    out = Path(config.out)
    diff = config_differences(out, config)
    if diff:
        raise ConfigError(
            f"{out} holds a run with another config (differs in: {', '.join(diff[:8])}); "
            "delete that folder or write to another one"
        )
    status = run_status(out)
    if status == "done":
        return status, json.loads((out / "summary.json").read_text())
    fn = train_fn or _train_fn()
    summary = fn(config, resume=status == "resume")
    return status, summary


def one_line(e: BaseException) -> str:
    """``Type: message`` on one line (the way a failed run is reported)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def execute(
    config: dict[str, Any], *, threads: int, cwd: str, node: str | None = None
) -> dict[str, Any]:
    """Train one run from its config dict in a worker: ``threads`` torch threads, paths
    relative to ``cwd`` (the driver's folder, the same path on every machine).

    A run that fails by itself (bad config, data error, NaN stop) returns
    ``{"ok": False, "error": one line}``: such failures are reported, never retried. Only a
    dying process (killed, out of host memory, a lost node) makes the executor try again.
    """
    import torch

    torch.set_num_threads(max(1, threads))
    where = node or socket.gethostname()
    start = time.perf_counter()
    try:
        os.chdir(cwd)
        before, summary = run_one(TrainConfig.from_dict(config))
    except Exception as e:
        return {"ok": False, "error": one_line(e), "node": where}
    seconds = time.perf_counter() - start
    return {"ok": True, "before": before, "summary": summary, "node": where, "seconds": seconds}


def reach_problems(cwd: str, out_root: str, data_roots: Sequence[str]) -> list[str]:
    """What stops this machine from running the grid: ``cwd`` or a data root it cannot read,
    an output folder it cannot write. Empty when all is well."""
    try:
        os.chdir(cwd)
    except OSError as e:
        return [f"cannot enter {cwd} ({e.strerror}); every machine needs it at the same path"]
    problems = []
    for root in data_roots:
        if not os.path.isdir(root) or not os.access(root, os.R_OK | os.X_OK):
            problems.append(f"cannot read the data root {os.path.abspath(root)}")
    try:
        Path(out_root).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_root, prefix=".mosa-write-check-"):
            pass
    except OSError as e:
        problems.append(f"cannot write to {os.path.abspath(out_root)} ({e.strerror or e})")
    return problems

"""Grid of separate training runs (tasks x methods x shots x learning rates x seeds).

Each run gets a deterministic folder ``<out>/<task>/<method>[/shots<k>]/lr<lr>/seed<seed>``, so
a sweep that was killed can simply be started again: runs with a ``summary.json`` are skipped,
runs with a resumable ``last/`` checkpoint are resumed, the others start from scratch.

While a run trains, its folder holds a ``.sweep.lock`` naming the process. Another sweep over
the same folder skips locked runs, so the same command started on several GPUs / machines
shares the grid out. A lock left by a killed process on this host is taken over.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mosa.config import ConfigError
from mosa.engine.config import TrainConfig, flatten_config
from mosa.io import atomic_write_json
from mosa.recipes import RECIPES_DIR, load_config, resolve_recipe

__all__ = [
    "LOCK_NAME",
    "SweepResult",
    "SweepRun",
    "acquire_lock",
    "lock_state",
    "config_differences",
    "plan_sweep",
    "run_dir_name",
    "run_one",
    "run_status",
    "run_sweep",
]

TrainFn = Callable[..., dict[str, Any]]
# Fields that may differ between a run's saved config and the sweep's without changing results.
_IGNORED_FIELDS = ("out", "device", "num_workers")


@dataclass
class SweepRun:
    """One cell of the grid."""

    task: str
    method: str
    lr: float
    seed: int
    shots: int | None
    run_dir: Path
    config: TrainConfig

    @property
    def key(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "method": self.method,
            "lr": self.lr,
            "seed": self.seed,
            "shots": self.shots,
        }


@dataclass
class SweepResult:
    """What a sweep did: run folders by outcome, and the error of each failed run."""

    done: list[Path] = field(default_factory=list)  # already finished before this sweep
    trained: list[Path] = field(default_factory=list)
    resumed: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)
    busy: list[Path] = field(default_factory=list)  # being trained by another process


def _fmt_lr(lr: float) -> str:
    return f"{lr:g}"


def log_line(text: str) -> None:
    """Print a progress line at once, also when stdout is a file (block-buffered)."""
    print(text, flush=True)


def progress_note(done: int, total: int, running: int, elapsed_s: float, trained: int) -> str:
    """``"12/99 done, 2 running, 85 left, ETA 41 min"``; the ETA extrapolates the wall time
    per run trained in this process (``elapsed_s / trained``, parallel runs included) over
    the runs left."""
    left = total - done
    note = f"{done}/{total} done, {running} running, {left} left"
    if trained and left:
        eta = elapsed_s / trained * left
        note += f", ETA {eta / 60:.0f} min" if eta >= 90 else f", ETA {eta:.0f} s"
    return note


def run_dir_name(task: str, method: str, lr: float, seed: int, shots: int | None = None) -> str:
    """Relative folder of one run: ``<task>/<method>[/shots<k>]/lr<lr>/seed<seed>``."""
    parts = [task, method]
    if shots is not None:
        parts.append(f"shots{shots}")
    parts += [f"lr{_fmt_lr(lr)}", f"seed{seed}"]
    return "/".join(parts)


def _task_recipe(first: str, task: str) -> str | None:
    """A recipe next to ``first`` named after the task (``vtab/_base`` + dtd -> ``vtab/dtd``),
    so per-task settings such as FGVC learning rates are picked up."""
    try:
        path = resolve_recipe(first)
    except FileNotFoundError:
        return None
    sibling = path.parent / f"{task}.yaml"
    if sibling.is_file() and sibling != path:
        return str(sibling)
    return None


def _method_mixin(method: str) -> str | None:
    mixin = RECIPES_DIR / "methods" / f"{method}.yaml"
    return str(mixin) if mixin.is_file() else None


def plan_sweep(
    configs: Sequence[str],
    overrides: Sequence[str] = (),
    *,
    out: str | Path,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    lrs: Sequence[float] | None = None,
    shots: Sequence[int] | None = None,
) -> list[SweepRun]:
    """Every run of the grid, with its validated config and folder.

    An axis left out keeps the config's value. A task sets ``data.task`` unless a recipe of
    that name sits next to the first config (then that recipe replaces it). A method applies
    the packaged ``methods/<method>`` mixin (it sets ``method.method``). A seed sets both the
    run seed and the MoSA partition seed (``method.seed``), so seeds vary every random choice.
    """
    configs = list(configs) or ["default"]
    base = load_config(configs, overrides)
    if tasks and len(base.data) > 1:
        raise ConfigError("--tasks needs a single-data-set config; this one is multi-task")
    task_axis: list[str | None] = list(tasks) if tasks else [None]
    method_axis: list[str | None] = list(methods) if methods else [None]
    shot_axis: list[int | None] = list(shots) if shots else [None]
    lr_axis: list[float | None] = list(lrs) if lrs else [None]
    seed_axis: list[int | None] = list(seeds) if seeds else [None]
    for name, axis in (("tasks", task_axis), ("methods", method_axis)):
        if len(set(axis)) != len(axis):
            raise ConfigError(f"--{name} names a value twice: {axis}")
    runs: list[SweepRun] = []
    root = Path(out)
    for task in task_axis:
        task_configs = list(configs)
        task_over: list[str] = []
        if task is not None:
            sibling = _task_recipe(configs[0], task)
            if sibling is not None:
                task_configs[0] = sibling
            else:
                task_over.append(f"data.task={task}")
        for method in method_axis:
            method_configs = list(task_configs)
            axis_over = list(task_over)
            if method is not None:
                mixin = _method_mixin(method)
                if mixin is not None:
                    method_configs.append(mixin)
                axis_over.append(f"method.method={method}")
            for k in shot_axis:
                for lr in lr_axis:
                    for seed in seed_axis:
                        over = list(axis_over)
                        if k is not None:
                            over.append(f"data.shots={k}")
                        if lr is not None:
                            over.append(f"optim.lr={lr!r}")
                        if seed is not None:
                            over += [f"seed={seed}", f"method.seed={seed}"]
                        # user overrides first, the sweep's axes last: the folder name must
                        # describe what actually runs
                        cfg = load_config(method_configs, [*overrides, *over])
                        label = "+".join(d.label for d in cfg.data)
                        rel = run_dir_name(
                            label, cfg.method.method, cfg.optim.lr, cfg.seed, cfg.data[0].shots
                        )
                        cfg.out = str(root / rel)
                        runs.append(
                            SweepRun(
                                label,
                                cfg.method.method,
                                cfg.optim.lr,
                                cfg.seed,
                                cfg.data[0].shots,
                                root / rel,
                                cfg,
                            )
                        )
    dirs = [r.run_dir for r in runs]
    if len(set(dirs)) != len(dirs):
        raise ConfigError("two runs of the sweep map to the same folder; check the axes")
    return runs


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
        saved = flatten_config(json.loads(path.read_text()))
    except ValueError:
        return []  # unreadable: the engine's own resume checks decide
    mine = flatten_config(json.loads(json.dumps(config.to_dict())))  # tuples -> lists, as saved
    diff = []
    for k in sorted(set(saved) | set(mine)):
        if k.split(".")[0] in _IGNORED_FIELDS:
            continue
        if k in mine and mine[k] is None:
            continue
        if k not in saved and k in mine:
            continue  # a field newer than the saved config: nothing to compare with
        if saved.get(k) != mine.get(k):
            diff.append(k)
    return diff


LOCK_NAME = ".sweep.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _lock_is_stale(lock: Path) -> bool:
    try:
        holder = json.loads(lock.read_text())
        return holder.get("host") == socket.gethostname() and not _alive(int(holder["pid"]))
    except FileNotFoundError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        # unreadable: being written right now, or garbage left long ago
        return time.time() - _mtime(lock) > 60


def lock_state(run_dir: str | Path) -> str | None:
    """None (no lock), ``running`` (held by a live process or one on another host) or
    ``stale`` (left by a killed process on this host; the next sweep takes it over)."""
    lock = Path(run_dir) / LOCK_NAME
    if not lock.exists():
        return None
    return "stale" if _lock_is_stale(lock) else "running"


def acquire_lock(run_dir: str | Path) -> Path | None:
    """Create ``run_dir/.sweep.lock`` for this process; None when another live process holds
    it. A lock of a dead process on this host (a killed sweep) is replaced."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    lock = d / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _lock_is_stale(lock):
                return None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return lock
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _train_fn() -> TrainFn:
    # imported when needed: planning a sweep must not pull in the training stack
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


def run_sweep(
    runs: Sequence[SweepRun],
    *,
    train_fn: TrainFn | None = None,
    keep_going: bool = False,
    log: Callable[[str], None] = log_line,
    manifest: str | Path | None = None,
) -> SweepResult:
    """Run every planned run in order (see :func:`run_one`).

    ``keep_going``: a failed run is recorded and the sweep continues (otherwise the error
    propagates). ``manifest``: a JSON file listing the runs and their outcome, rewritten after
    each run.
    """
    result = SweepResult()
    outcome: dict[str, str] = {str(r.run_dir): run_status(r.run_dir) for r in runs}

    def write_manifest() -> None:
        if manifest is None:
            return
        atomic_write_json(
            Path(manifest),
            {
                "runs": [
                    {**r.key, "run_dir": str(r.run_dir), "status": outcome[str(r.run_dir)]}
                    for r in runs
                ]
            },
        )

    write_manifest()
    n = len(runs)
    started = time.time()
    for i, r in enumerate(runs, 1):
        tag = f"[{i}/{n}] {r.run_dir}"
        status = run_status(r.run_dir)
        if status == "done":
            log(f"{tag}: done, skipped")
            result.done.append(r.run_dir)
            continue
        lock = acquire_lock(r.run_dir)
        if lock is None:
            log(f"{tag}: being trained by another process ({LOCK_NAME}), skipped")
            result.busy.append(r.run_dir)
            outcome[str(r.run_dir)] = "busy"
            write_manifest()
            continue
        status = run_status(r.run_dir)  # it may have finished while we looked
        if status == "done":
            lock.unlink(missing_ok=True)
            log(f"{tag}: done, skipped")
            result.done.append(r.run_dir)
            continue
        log(f"{tag}: {'resuming' if status == 'resume' else 'training'}")
        t0 = time.time()
        try:
            run_one(r.config, train_fn=train_fn)
        except BaseException as e:
            lock.unlink(missing_ok=True)
            if not isinstance(e, Exception):
                raise  # KeyboardInterrupt / SystemExit: stop the sweep
            if not keep_going:
                outcome[str(r.run_dir)] = "failed"
                write_manifest()
                raise
            msg = f"{type(e).__name__}: {e}"
            log(f"{tag}: FAILED ({msg})")
            result.failed[r.run_dir] = msg
            outcome[str(r.run_dir)] = "failed"
        else:
            lock.unlink(missing_ok=True)
            (result.resumed if status == "resume" else result.trained).append(r.run_dir)
            outcome[str(r.run_dir)] = "done"
            trained = len(result.trained) + len(result.resumed)
            note = progress_note(i, n, 1, time.time() - started, trained)
            log(f"{tag}: finished in {time.time() - t0:.0f}s ({note})")
        write_manifest()
    return result

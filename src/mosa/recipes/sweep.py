"""Plan a grid of separate training runs (tasks x methods x shots x learning rates x seeds).

Each run gets a deterministic folder ``<out>/<task>/<method>[/shots<k>]/lr<lr>/seed<seed>``, so
a sweep that was killed can simply be started again: :func:`mosa.executors.run_grid` skips
runs with a ``summary.json``, resumes runs with a ``last/`` checkpoint and starts the others.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mosa.config import ConfigError
from mosa.engine.config import TrainConfig
from mosa.recipes import RECIPES_DIR, load_config, resolve_recipe

__all__ = ["SweepRun", "plan_sweep", "run_dir_name"]


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


def run_dir_name(task: str, method: str, lr: float, seed: int, shots: int | None = None) -> str:
    """Relative folder of one run: ``<task>/<method>[/shots<k>]/lr<lr>/seed<seed>``."""
    parts = [task, method]
    if shots is not None:
        parts.append(f"shots{shots}")
    parts += [f"lr{lr:g}", f"seed{seed}"]
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


def _axis_overrides(shots: int | None, lr: float | None, seed: int | None) -> list[str]:
    """The overrides of one grid point (an axis left out adds none)."""
    over = []
    if shots is not None:
        over.append(f"data.shots={shots}")
    if lr is not None:
        over.append(f"optim.lr={lr!r}")
    if seed is not None:
        over += [f"seed={seed}", f"method.seed={seed}"]
    return over


def _planned_run(configs: list[str], overrides: list[str], root: Path) -> SweepRun:
    """One run of the grid. The user's overrides come first and the sweep's axes last: the
    folder name must describe what actually runs."""
    cfg = load_config(configs, overrides)
    label = "+".join(d.label for d in cfg.data)
    shots = cfg.data[0].shots
    rel = run_dir_name(label, cfg.method.method, cfg.optim.lr, cfg.seed, shots)
    cfg.out = str(root / rel)
    return SweepRun(label, cfg.method.method, cfg.optim.lr, cfg.seed, shots, root / rel, cfg)


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
            for k, lr, seed in itertools.product(shot_axis, lr_axis, seed_axis):
                over = [*axis_over, *_axis_overrides(k, lr, seed)]
                runs.append(_planned_run(method_configs, [*overrides, *over], root))
    dirs = [r.run_dir for r in runs]
    if len(set(dirs)) != len(dirs):
        raise ConfigError("two runs of the sweep map to the same folder; check the axes")
    return runs

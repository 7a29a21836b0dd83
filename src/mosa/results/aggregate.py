"""Collect ``summary.json`` files of many runs into a task x method table of test top-1.

Protocol: a cell is the mean ± sample standard deviation (ddof=1) over seeds of the final
model's test top-1. When a task/method pair was run with several hyper-parameter settings
(e.g. a learning-rate sweep), the setting with the best mean *validation* accuracy is chosen;
the test split never takes part in the choice. Aggregate rows follow the two conventions that
papers mix up: the mean over tasks, and the mean of the VTAB group means
(natural / specialized / structured).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mosa.config import method_names
from mosa.data.prepare import TASK_GROUPS
from mosa.data.vtab import VTAB_TASKS

__all__ = [
    "Cell",
    "ResultsError",
    "Run",
    "Table",
    "build_table",
    "collect_runs",
    "task_family",
    "task_group",
]

GROUP_ORDER = ("natural", "specialized", "structured")
# Config fields that do not make two runs different settings (seeds are what we average over).
_NOT_A_SETTING = ("seed", "out", "device", "num_workers", "checkpoint_every")


class ResultsError(ValueError):
    """Run folders cannot be aggregated (nothing found, ambiguous selection...)."""


@dataclass
class Run:
    """One finished run: where it is, what it was, and its accuracies (in percent)."""

    path: Path
    task: str
    method: str
    seed: int | None
    setting: str  # identifies the hyper-parameters apart from the seed
    lr: float | None
    test_acc: float | None
    val_acc: float | None
    shots: int | None = None
    train_size: int | None = None  # images trained on (summary.json), when known
    subset: bool = False  # fewer training images than the task's largest run: its own row

    @property
    def row(self) -> str:
        if self.shots is not None:
            return f"{self.task} ({self.shots}-shot)"
        return f"{self.task} (n={self.train_size})" if self.subset else self.task

    @property
    def train_label(self) -> str:
        """What the run trained on, for the report's ``train`` column."""
        size = "?" if self.train_size is None else str(self.train_size)
        return f"{self.shots}-shot ({size})" if self.shots is not None else size


@dataclass
class Cell:
    """Runs of one (row, method) after the setting was chosen."""

    values: list[float]
    setting: str
    lr: float | None
    val_mean: float | None
    candidates: int  # how many settings were compared

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


@dataclass
class Table:
    """The report: cells by row and method, and aggregate rows (label -> method -> value)."""

    rows: list[str]
    methods: list[str]
    cells: dict[tuple[str, str], Cell]
    groups: dict[str, str | None]  # row -> VTAB group (None: not a grouped task)
    families: dict[str, str | None] = field(default_factory=dict)  # row -> VTAB / offline
    train: dict[str, str] = field(default_factory=dict)  # row -> training images (or shots)
    aggregates: dict[str, dict[str, float | None]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # summaries without a test accuracy

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "methods": self.methods,
            "groups": self.groups,
            "families": self.families,
            "train": self.train,
            "cells": {
                f"{r}|{m}": {
                    "mean": c.mean,
                    "std": c.std,
                    "n": c.n,
                    "values": c.values,
                    "lr": c.lr,
                    "val_mean": c.val_mean,
                    "settings_compared": c.candidates,
                }
                for (r, m), c in self.cells.items()
            },
            "aggregates": self.aggregates,
            "skipped": self.skipped,
        }


# ----------------------------------------------------------------------------- task groups
def _families() -> list[tuple[str, list[str], dict[str, str]]]:
    """(family label, task order, task -> group): VTAB-1k, then the project's offline tasks."""
    return [
        ("VTAB", list(VTAB_TASKS), {t: g for t, (g, _) in VTAB_TASKS.items()}),
        # the project's offline tasks carry a VTAB-like group too
        ("offline", list(TASK_GROUPS), dict(TASK_GROUPS)),
    ]


def task_family(task: str) -> tuple[str, str] | None:
    """(family, group) of a grouped task (VTAB-1k or a project task), or None."""
    for label, _, groups in _families():
        if task in groups:
            return label, groups[task]
    return None


def task_group(task: str) -> str | None:
    """VTAB group of a task (natural / specialized / structured), or None."""
    fam = task_family(task)
    return fam[1] if fam else None


def _task_order(task: str) -> tuple[int, int, int, str]:
    fams = _families()
    for fi, (_, order, groups) in enumerate(fams):
        if task in groups:
            g = groups[task]
            gi = GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER)
            return fi, gi, order.index(task), task
    return len(fams), 0, 0, task


# ----------------------------------------------------------------------------- reading runs
def _number(v: Any) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path} cannot be read as JSON ({e})") from e


def _setting_of(config: dict[str, Any] | None, lr: float | None) -> str:
    """A short hash of everything in the config but the seed (and the output folder)."""
    if config is None:
        return f"lr={lr}"
    body = {k: v for k, v in config.items() if k not in _NOT_A_SETTING}
    method = dict(body.get("method") or {})
    method.pop("seed", None)  # the partition seed follows the run seed in sweeps
    body["method"] = method
    text = json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _lookup(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


def _runs_from_summary(path: Path, root: Path) -> list[Run]:
    summary = _read_json(path)
    if not isinstance(summary, dict):
        raise ResultsError(f"{path} does not hold a JSON object")
    cfg_path = path.parent / "config.json"
    config = _read_json(cfg_path) if cfg_path.is_file() else None
    if config is None and isinstance(summary.get("config"), dict):
        config = summary["config"]
    rel = path.parent.relative_to(root).parts if path.parent != root else ()

    method = _lookup(summary, "method")
    if isinstance(method, dict):
        method = method.get("method")
    if method is None and config:
        method = (config.get("method") or {}).get("method")
    if method is None and len(rel) >= 2:
        method = rel[1]
    seed = _lookup(summary, "seed")
    if seed is None and config:
        seed = config.get("seed")
    lr = _lookup(summary, "lr")
    if lr is None and config:
        lr = (config.get("optim") or {}).get("lr")
    data = (config or {}).get("data") or []
    if isinstance(data, dict):
        data = [data]
    labels = [d.get("name") or d.get("task") for d in data]
    shots = data[0].get("shots") if len(data) == 1 else None
    setting = _setting_of(config, lr)

    test = summary.get("test_acc")
    val = summary.get("val_acc")
    per_task = summary.get("tasks")
    if isinstance(per_task, dict) and len(per_task) > 1 and not isinstance(test, dict):
        # multi-task run: the engine reports each task under "tasks"
        test = {t: (v or {}).get("test_acc") for t, v in per_task.items()}
        val = {t: (v or {}).get("val_acc") for t, v in per_task.items()}
    sizes = per_task if isinstance(per_task, dict) else {}
    if isinstance(test, dict):  # multi-task: one accuracy per task
        vals = val if isinstance(val, dict) else {}
        return [
            Run(path.parent, str(t), str(method), seed, setting, lr, _number(a),
                _number(vals.get(t)), None)
            for t, a in test.items()
        ]  # fmt: skip
    task = _lookup(summary, "task")
    if task is None and labels:
        task = "+".join(str(x) for x in labels)
    if task is None and rel:
        task = rel[0]
    if task is None or method is None:
        raise ResultsError(
            f"{path}: cannot tell the task/method (no config.json next to it and no "
            "'task'/'method' entries)"
        )
    size = (sizes.get(labels[0]) or {}).get("train_size") if len(labels) == 1 else None
    return [
        Run(path.parent, str(task), str(method), seed, setting, lr, _number(test),
            _number(val), shots, size)
    ]  # fmt: skip


def collect_runs(root: str | Path) -> list[Run]:
    """Every run below ``root`` that has a ``summary.json`` (unfinished runs have none)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder not found: {root}")
    runs: list[Run] = []
    for path in sorted(root.rglob("summary.json")):
        runs.extend(_runs_from_summary(path, root))
    return runs


# ----------------------------------------------------------------------------- the table
def _choose(runs: list[Run], row: str, method: str) -> Cell:
    by_setting: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_setting[r.setting].append(r)
    if len(by_setting) == 1:
        chosen = next(iter(by_setting.values()))
    else:
        scored = []
        for s, rs in by_setting.items():
            vals = [r.val_acc for r in rs]
            if any(v is None for v in vals):
                raise ResultsError(
                    f"{row} / {method}: {len(by_setting)} hyper-parameter settings were run "
                    "but some runs have no val_acc to choose between them (the test split is "
                    f"never used for that); e.g. {rs[0].path}"
                )
            mean_lr = rs[0].lr if rs[0].lr is not None else math.inf
            scored.append((statistics.fmean(vals), -mean_lr, s))  # tie: the smaller lr
        scored.sort(reverse=True)
        chosen = by_setting[scored[0][2]]
    vals = [r.val_acc for r in chosen]
    return Cell(
        values=[r.test_acc for r in chosen if r.test_acc is not None],
        setting=chosen[0].setting,
        lr=chosen[0].lr,
        val_mean=statistics.fmean(vals) if all(v is not None for v in vals) else None,
        candidates=len(by_setting),
    )


def _scale(runs: Iterable[Run]) -> float:
    """Accuracies stored as fractions (all <= 1) are shown in percent."""
    vals = [v for r in runs for v in (r.test_acc, r.val_acc) if v is not None]
    return 100.0 if vals and max(vals) <= 1.0 else 1.0


def build_table(runs: list[Run]) -> Table:
    """Aggregate runs into a :class:`Table` (see the module docstring for the protocol)."""
    with_test = [r for r in runs if r.test_acc is not None]
    skipped = [str(r.path) for r in runs if r.test_acc is None]
    if not with_test:
        raise ResultsError("no run with a test accuracy found (looked for summary.json files)")
    k = _scale(with_test)
    largest: dict[str, int] = {}
    for r in with_test:
        if r.shots is None and r.train_size is not None:
            largest[r.task] = max(largest.get(r.task, 0), r.train_size)
    for r in with_test:  # a run on fewer images is never averaged with the full ones
        r.subset = r.shots is None and r.train_size is not None and r.train_size < largest[r.task]
    for r in with_test:
        r.test_acc = r.test_acc * k if r.test_acc is not None else None
        r.val_acc = r.val_acc * k if r.val_acc is not None else None
    grouped: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in with_test:
        grouped[(r.row, r.method)].append(r)
    task_of_row = {r.row: r.task for r in with_test}
    rows = sorted(task_of_row, key=lambda row: (*_task_order(task_of_row[row]), row))
    present = {m for _, m in grouped}
    known = method_names()
    methods = [m for m in known if m in present] + sorted(present - set(known))
    cells = {key: _choose(rs, *key) for key, rs in grouped.items()}
    # few-shot rows are not VTAB-1k results: they never enter the group means
    fams = {row: task_family(task_of_row[row]) if row == task_of_row[row] else None for row in rows}
    groups = {row: f[1] if f else None for row, f in fams.items()}
    table = Table(rows, methods, cells, groups, skipped=skipped)
    for r in with_test:
        labels = table.train.setdefault(r.row, r.train_label)
        if labels != r.train_label:  # e.g. shots drawn from differently sized splits
            table.train[r.row] = "mixed"
    table.families = {row: f[0] if f else None for row, f in fams.items()}
    table.aggregates = _aggregates(table)
    return table


def _n_tasks(rows: list[str]) -> str:
    return f"{len(rows)} task" if len(rows) == 1 else f"{len(rows)} tasks"


def _aggregates(t: Table) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}

    def mean_over(rows: list[str], m: str) -> float | None:
        # a method missing any task of the set gets no mean: it would not be comparable
        if not rows or any((r, m) not in t.cells for r in rows):
            return None
        return statistics.fmean(t.cells[(r, m)].mean for r in rows)

    # each family (VTAB-1k, offline tasks) gets its own block: mixing them would change
    # what "the VTAB mean" means
    for fam in dict.fromkeys(f for f in t.families.values() if f is not None):
        fam_rows = [r for r in t.rows if t.families.get(r) == fam]
        if len(fam_rows) < 2:
            continue  # the mean of one task is that task's row
        present = [g for g in GROUP_ORDER if any(t.groups[r] == g for r in fam_rows)]
        by_group = {g: [r for r in fam_rows if t.groups[r] == g] for g in present}
        for g, rows in by_group.items():
            out[f"{fam} {g} mean ({_n_tasks(rows)})"] = {m: mean_over(rows, m) for m in t.methods}
        out[f"{fam} mean ({_n_tasks(fam_rows)})"] = {m: mean_over(fam_rows, m) for m in t.methods}
        if len(present) > 1:
            gm: dict[str, float | None] = {}
            for m in t.methods:
                means = [mean_over(rows, m) for rows in by_group.values()]
                gm[m] = None if None in means else statistics.fmean(means)  # type: ignore[arg-type]
            out[f"{fam} mean of {len(present)} group means"] = gm
    other = [r for r in t.rows if t.families.get(r) is None]
    if len(other) > 1:
        label = (
            f"mean ({len(other)} other tasks)"
            if len(other) < len(t.rows)
            else f"mean ({len(other)} tasks)"
        )
        out[label] = {m: mean_over(other, m) for m in t.methods}
    return out

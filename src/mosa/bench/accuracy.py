"""``mosa bench accuracy``: MoSA against its baselines on real data, with an honest protocol.

Protocol (the same on the project's offline suite and on anyone's VTAB-1k-layout folders):

1. Every method (a :class:`Variant`: ``linear``, ``full``, ``adapter``, ``adapter_cons`` (the
   adapter with MoSA's consistency term: the control for it), ``lora``, ``lora_cons``, ``mosa``
   (the library's default MoSA), ``mosa_paper`` (the reference code's), ``mosa_best`` (the
   paper's plus the knobs that won the study's val screen), ``mosa_lora``, ``mosa_lora_paper``,
   ``mosa_lora_best``; adapter bottleneck = LoRA rank) trains on ``train800`` with seed 0 for
   each learning rate of its grid; the learning rate with the best ``val200`` accuracy is
   chosen (ties: the smaller).
2. The chosen setting is trained again with the remaining seeds (the seed-0 run is reused).
3. Each record reports the final model's test accuracy: the test split never chooses anything.

Runs are independent folders (``OUT/runs/<task>/<method>/lr<lr>/seed<seed>``), so a killed
benchmark resumes where it stopped; several runs train at once in separate processes. The
table, its markdown and plot: :mod:`mosa.bench.accuracy_report`; the command line:
:mod:`mosa.cli.bench.accuracy`. How the grids and rows were chosen: docs/bench-notes.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mosa.data.prepare import TASK_GROUPS, prepare_tasks
from mosa.data.vtab import VTAB_TASKS
from mosa.engine.summary import RunSummary
from mosa.executors import ExecutorOptions, log_line, run_grid
from mosa.io import atomic_write_json
from mosa.recipes import load_config
from mosa.recipes.sweep import SweepRun, run_dir_name


@dataclass(frozen=True)
class Variant:
    """A method as a benchmark runs it: a packaged method mixin plus overrides."""

    name: str
    mixin: str
    overrides: tuple[str, ...] = ()
    knob: str | None = None  # what a study variant changes from the paper's MoSA


_CONS = ("optim.consistency=1.0",)
BEST_KNOBS = ("method.num_experts=2", "method.routing=sample", "method.bias=shared")
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("linear", "methods/linear"),
        Variant("full", "methods/full"),
        Variant("adapter", "methods/adapter"),
        Variant("adapter_cons", "methods/adapter", _CONS),
        Variant("lora", "methods/lora"),
        Variant("lora_cons", "methods/lora", _CONS),
        Variant("mosa", "methods/mosa"),
        Variant("mosa_paper", "methods/mosa_paper"),
        Variant("mosa_lora", "methods/mosa_lora"),
        Variant("mosa_lora_paper", "methods/mosa_lora_paper"),
        # the paper's MoSA with the knobs that won the study's val screen, at the adapter's
        # trainable parameters
        Variant("mosa_best", "methods/mosa_paper", BEST_KNOBS),
        Variant("mosa_lora_best", "methods/mosa_lora_paper", BEST_KNOBS[:2]),
    )
}
METHODS = tuple(VARIANTS)
# the main table's rows; the others stay available by name (why: docs/bench-notes.md)
TABLE_METHODS = (
    "linear", "adapter", "adapter_cons", "lora",
    "mosa_paper", "mosa_best", "mosa_lora_paper", "mosa_lora_best",
)  # fmt: skip
# the task-mean gap of every row to these dense baselines is reported paired by seed
GAP_BASES = ("adapter", "lora")
QUICK_METHODS = ("linear", "adapter", "adapter_cons", "mosa_paper", "mosa_best")
TABLE_EPOCHS = 12
# learning-rate grids per method, searched on val with seed 0 (AdamW, warm-up + cosine), also
# by --quick; `--lrs` searches any other grid (how these were chosen: docs/bench-notes.md)
LR_GRID: dict[str, tuple[float, ...]] = {
    "linear": (1e-1, 3e-1),
    "full": (3e-4, 1e-3),
    **{m: (2e-2, 4e-2) for m in METHODS if m.startswith(("adapter", "mosa")) and "lora" not in m},
    **{m: (1e-2, 2e-2) for m in METHODS if "lora" in m},
    "mosa_best": (4e-2, 8e-2),
}
SUITE_TASKS = (
    "digits",
    "digits_noisy",
    "fmnist_noisy",
    "fmnist_rot",
    "fmnist_loc",
    "fmnist_count",
    "fmnist_scale",
)
QUICK_TASKS = ("digits", "fmnist_noisy", "fmnist_rot")
BASE_RECIPE = "offline/_base"


@dataclass
class Protocol:
    """Everything that defines a benchmark run; written to ``OUT/protocol.json``."""

    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int
    warmup_epochs: int
    batch_size: int
    bottleneck: int
    lr_grid: dict[str, tuple[float, ...]]
    data_root: str
    backbone: str = "mosa_vit_fmnist"

    def overrides(self) -> list[str]:
        return [
            f"backbone={self.backbone}",
            f"data.root={self.data_root}",
            "data.train_split=train800",
            "data.val_split=val200",
            "data.test_split=test",
            f"optim.epochs={self.epochs}",
            f"optim.warmup_epochs={self.warmup_epochs}",
            f"optim.batch_size={self.batch_size}",
            f"method.bottleneck={self.bottleneck}",
            f"method.rank={self.bottleneck}",
        ]


def plan_run(
    variant: Variant, overrides: Sequence[str], task: str, lr: float, seed: int, root: Path
) -> SweepRun:
    """One run: ``variant`` on ``task`` (offline base recipe, then ``overrides``) at ``lr``
    and ``seed`` (also the partition seed), in ``root/<task>/<variant>/lr<lr>/seed<seed>``."""
    over = [
        f"data.task={task}",
        *overrides,
        *variant.overrides,
        f"optim.lr={lr!r}",
        f"seed={seed}",
        f"method.seed={seed}",
    ]
    cfg = load_config([BASE_RECIPE, variant.mixin], over)
    rel = run_dir_name(task, variant.name, lr, seed)
    cfg.out = str(root / rel)
    return SweepRun(task, variant.name, lr, seed, cfg.data[0].shots, root / rel, cfg)


def train_runs(
    runs: Sequence[SweepRun], options: ExecutorOptions, log: Callable[[str], None]
) -> dict[Path, RunSummary]:
    """Every run's summary (finished runs are read back, the others trained on the executor
    ``options`` names); :class:`mosa.executors.GridError` names the runs that failed, after
    the others finished."""
    result = run_grid(runs, options, log=log)
    result.raise_for_failures()
    return {d: RunSummary.from_dict(s) for d, s in result.summaries.items()}


def _record(r: SweepRun, summary: RunSummary, grid: dict[str, float | None]) -> dict[str, Any]:
    params = summary.params
    return {
        "task": r.task,
        "method": r.method,
        "seed": r.seed,
        "lr": r.lr,
        "test_acc": summary.test_acc,
        "val_acc": summary.val_acc,
        "trainable_params": params.get("trainable"),
        "total_params": params.get("total"),
        "wall_s": summary.wall_time_s,
        "images_per_s": summary.images_per_s,
        "epochs": summary.epochs,
        "hyperparameters": {"lr": r.lr, "chosen_by": "val_acc at seed 0", "val_by_lr": grid},
        "run_dir": str(r.run_dir),
    }


def run_protocol(
    protocol: Protocol,
    out: str | Path,
    *,
    options: ExecutorOptions | None = None,
    log: Callable[[str], None] = log_line,
    on_selection: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the selection phase and the seed phase; return one record per task x method x seed.
    ``on_selection`` gets the first seed's records (at the chosen lrs) before the seed phase,
    so a long run can write its partial table."""
    out = Path(out)
    runs_root = out / "runs"
    atomic_write_json(out / "protocol.json", protocol_dict(protocol))
    first_seed, *other_seeds = protocol.seeds

    def plan(method: str, task: str, lr: float, seed: int) -> SweepRun:
        return plan_run(VARIANTS[method], protocol.overrides(), task, lr, seed, runs_root)

    # phase 1: every lr of every method's grid, first seed, chosen on val
    selection = [
        plan(m, t, lr, first_seed)
        for m in protocol.methods
        for t in protocol.tasks
        for lr in protocol.lr_grid[m]
    ]
    log(f"selection: {len(selection)} run(s) (tasks x methods x learning rates, seed {first_seed})")
    options = options or ExecutorOptions()
    done = train_runs(selection, options, log)
    chosen: dict[tuple[str, str], SweepRun] = {}
    grids: dict[tuple[str, str], dict[str, float | None]] = {}
    for r in selection:
        key = (r.task, r.method)
        val = done[r.run_dir].val_acc
        grids.setdefault(key, {})[f"{r.lr:g}"] = val
        best = chosen.get(key)
        best_val = done[best.run_dir].val_acc if best else None
        if best is None or (val is not None and (best_val is None or val > best_val)):
            chosen[key] = r  # strict '>' keeps the smaller lr on ties (grids are ascending)
    first = [_record(r, done[r.run_dir], grids[(r.task, r.method)]) for r in chosen.values()]
    if on_selection is not None:
        on_selection(sorted(first, key=_record_order))
    # phase 2: the chosen lr with the other seeds
    seed_runs: list[SweepRun] = []
    for (task, method), r in chosen.items():
        seed_runs += [plan(method, task, r.lr, s) for s in other_seeds]
    log(f"seeds: {len(seed_runs)} run(s) at the chosen learning rates")
    done.update(train_runs(seed_runs, options, log))
    records = first + [_record(r, done[r.run_dir], grids[(r.task, r.method)]) for r in seed_runs]
    return sorted(records, key=_record_order)


def _record_order(rec: dict[str, Any]) -> tuple[str, int, int]:
    return rec["task"], METHODS.index(rec["method"]), rec["seed"]


def protocol_dict(p: Protocol) -> dict[str, Any]:
    """The protocol as ``protocol.json`` and ``results.json`` record it."""
    return {
        "tasks": list(p.tasks),
        "methods": list(p.methods),
        "seeds": list(p.seeds),
        "epochs": p.epochs,
        "warmup_epochs": p.warmup_epochs,
        "batch_size": p.batch_size,
        "bottleneck_and_rank": p.bottleneck,
        "lr_grid": {m: list(v) for m, v in p.lr_grid.items()},
        "data_root": p.data_root,
        "backbone": p.backbone,
        "selection": "lr with the best val200 accuracy at the first seed; test never used",
        "train_split": "train800",
    }


def task_groups(data_root: Path, tasks: Sequence[str]) -> dict[str, str]:
    """Task -> its VTAB group (natural, specialized, structured) where one is known: the
    offline suite's, VTAB's, or a folder's ``meta.json``."""
    groups: dict[str, str] = {}
    for t in tasks:
        if t in TASK_GROUPS:
            groups[t] = TASK_GROUPS[t]
        elif t in VTAB_TASKS:
            groups[t] = VTAB_TASKS[t][0]
        else:
            meta = data_root / t / "meta.json"
            if meta.is_file():
                g = json.loads(meta.read_text()).get("group")
                if g:
                    groups[t] = g
    return groups


def task_root(data_root: str | None, out: Path, tasks: Sequence[str], prog: str) -> Path:
    """``data_root`` checked to hold every task folder, or (None) the offline tasks prepared
    under ``out/data`` (finished tasks are kept)."""
    if data_root:
        root = Path(data_root)
        missing = [t for t in tasks if not (root / t).is_dir()]
        if missing:
            raise SystemExit(f"{prog}: task folder(s) not found under {root}: {', '.join(missing)}")
        return root
    prepare_tasks(out / "data", list(tasks), seed=0)
    return out / "data"


def default_jobs() -> int:
    """Runs at once on this machine: one per CPU core (at most 8)."""
    return max(1, min(os.cpu_count() or 1, 8))

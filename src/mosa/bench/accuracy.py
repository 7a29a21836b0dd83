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
benchmark resumes where it stopped; several runs train at once in separate processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mosa.cli.common import add_executor_arguments, executor_options
from mosa.executors import ExecutorOptions, log_line, run_grid
from mosa.io import atomic_write_bytes, atomic_write_json
from mosa.recipes import load_config
from mosa.recipes.sweep import SweepRun, run_dir_name
from mosa.results.report import format_cell


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
        # the knobs whose val accuracy beat the paper's MoSA in `mosa bench study`'s screen
        # (docs/study.json, base setting): our best MoSA, at the adapter's trainable parameters
        Variant("mosa_best", "methods/mosa_paper", BEST_KNOBS),
        Variant("mosa_lora_best", "methods/mosa_lora_paper", BEST_KNOBS[:2]),
    )
}
METHODS = tuple(VARIANTS)
# the main table's rows (the plain mosa / mosa_lora rows equal the paper's but for AdamW's eps;
# lora_cons and full stay available by name: in the study's screen LoRA + consistency matched
# LoRA to 0.1 point, and full fine-tuning costs more than the rest of a row together)
TABLE_METHODS = (
    "linear", "adapter", "adapter_cons", "lora",
    "mosa_paper", "mosa_best", "mosa_lora_paper", "mosa_lora_best",
)  # fmt: skip
# the task-mean gap of every row to these dense baselines is reported paired by seed
GAP_BASES = ("adapter", "lora")
QUICK_METHODS = ("linear", "adapter", "adapter_cons", "mosa_paper", "mosa_best")
TABLE_EPOCHS = 12
# Learning-rate grids per method, searched on val with seed 0 (AdamW, warm-up + cosine): the
# two points around what val chose most often for that row in `mosa bench study` (docs/
# study.json; 3 tasks, 5-point grids grown at a chosen end). Two points keep the full table
# (7 tasks, 3 seeds) near 2 hours on a 2-core CPU; `--lrs` searches any other grid.
LR_GRID: dict[str, tuple[float, ...]] = {
    "linear": (1e-1, 3e-1),
    "full": (3e-4, 1e-3),
    **{m: (2e-2, 4e-2) for m in METHODS if m.startswith(("adapter", "mosa")) and "lora" not in m},
    **{m: (1e-2, 2e-2) for m in METHODS if "lora" in m},
    "mosa_best": (4e-2, 8e-2),
}
QUICK_LR_GRID = LR_GRID  # --quick searches the same two points
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
) -> dict[Path, dict[str, Any]]:
    """Every run's summary (finished runs are read back, the others trained on the executor
    ``options`` names); :class:`mosa.executors.GridError` names the runs that failed, after
    the others finished."""
    result = run_grid(runs, options, log=log)
    result.raise_for_failures()
    return result.summaries


def _record(r: SweepRun, summary: dict[str, Any], grid: dict[str, float | None]) -> dict[str, Any]:
    params = summary.get("params") or {}
    return {
        "task": r.task,
        "method": r.method,
        "seed": r.seed,
        "lr": r.lr,
        "test_acc": summary.get("test_acc"),
        "val_acc": summary.get("val_acc"),
        "trainable_params": params.get("trainable"),
        "total_params": params.get("total"),
        "wall_s": summary.get("wall_time_s"),
        "images_per_s": summary.get("images_per_s"),
        "epochs": summary.get("epochs"),
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
    atomic_write_json(out / "protocol.json", _protocol_dict(protocol))
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
        val = done[r.run_dir].get("val_acc")
        grids.setdefault(key, {})[f"{r.lr:g}"] = val
        best = chosen.get(key)
        best_val = done[best.run_dir].get("val_acc") if best else None
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


def _protocol_dict(p: Protocol) -> dict[str, Any]:
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


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(
    records: list[dict[str, Any]], groups: dict[str, str] | None = None
) -> dict[str, Any]:
    """Per task x method: mean/std of test accuracy (percent) over seeds, params, wall time."""
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for rec in records:
        cells.setdefault(rec["task"], {}).setdefault(rec["method"], {"recs": []})["recs"].append(
            rec
        )
    table: dict[str, Any] = {"tasks": {}, "methods": [], "means": {}}
    methods = [m for m in METHODS if any(m in c for c in cells.values())]
    table["methods"] = methods
    for task, by_m in cells.items():
        row = {}
        for m, c in by_m.items():
            tests = [100 * r["test_acc"] for r in c["recs"] if r["test_acc"] is not None]
            vals = [100 * r["val_acc"] for r in c["recs"] if r["val_acc"] is not None]
            mean, std = _mean_std(tests) if tests else (None, None)
            row[m] = {
                "test_mean": mean,
                "test_std": std,
                "val_mean": statistics.fmean(vals) if vals else None,
                "n": len(tests),
                "lr": c["recs"][0]["lr"],
                "trainable_params": c["recs"][0]["trainable_params"],
                "wall_s_mean": statistics.fmean(r["wall_s"] or 0.0 for r in c["recs"]),
            }
        table["tasks"][task] = {"group": (groups or {}).get(task), "methods": row}
    for m in methods:
        per_task = [
            t["methods"][m]["test_mean"] for t in table["tasks"].values() if m in t["methods"]
        ]
        if len(per_task) == len(table["tasks"]) and all(v is not None for v in per_task):
            entry: dict[str, Any] = {"task_mean": statistics.fmean(per_task)}
            entry.update(_seed_spread(records, m, len(table["tasks"])))
            if groups:
                by_group: dict[str, list[float]] = {}
                for t in table["tasks"].values():
                    if t["group"]:
                        by_group.setdefault(t["group"], []).append(t["methods"][m]["test_mean"])
                gm = {g: statistics.fmean(v) for g, v in by_group.items()}
                entry["group_means"] = gm
                if len(gm) > 1:
                    entry["mean_of_group_means"] = statistics.fmean(gm.values())
            table["means"][m] = entry
    for base in GAP_BASES:
        _add_gaps(table["means"], base)
    return table


def _seed_task_means(records: list[dict[str, Any]], method: str, n_tasks: int) -> dict[int, float]:
    """seed -> the method's test top-1 (%) averaged over tasks, for seeds that ran every task."""
    by_seed: dict[int, list[float]] = {}
    for r in records:
        if r["method"] == method and r["test_acc"] is not None:
            by_seed.setdefault(int(r["seed"]), []).append(100 * r["test_acc"])
    return {s: statistics.fmean(v) for s, v in sorted(by_seed.items()) if len(v) == n_tasks}


def _seed_spread(records: list[dict[str, Any]], method: str, n_tasks: int) -> dict[str, Any]:
    """The task mean of each seed and their sample std (the task mean's seed spread), the
    latter only when every seed the method ran has a test result on every task (otherwise
    the table's task mean and its spread would come from different seeds)."""
    per_seed = _seed_task_means(records, method, n_tasks)
    out: dict[str, Any] = {"task_mean_by_seed": {str(k): v for k, v in per_seed.items()}}
    ran = {int(r["seed"]) for r in records if r["method"] == method}
    if len(per_seed) > 1 and set(per_seed) == ran:
        out["task_mean_std"] = statistics.stdev(per_seed.values())
    return out


def _add_gaps(means: dict[str, Any], base: str) -> None:
    """Each method's task-mean gap to ``base``, paired by seed: mean and sample std."""
    if base not in means:
        return
    ref = means[base]["task_mean_by_seed"]
    for name, entry in means.items():
        if name == base:
            continue
        gaps = [v - ref[s] for s, v in entry["task_mean_by_seed"].items() if s in ref]
        if len(gaps) > 1:
            entry[f"gap_vs_{base}"], entry[f"gap_vs_{base}_std"] = _mean_std(gaps)


def _task_mean_cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "—"
    if "task_mean_std" in entry:
        return f"**{entry['task_mean']:.1f} ± {entry['task_mean_std']:.1f}**"
    return f"**{entry['task_mean']:.1f}**"


def _gap_cell(entry: dict[str, Any], base: str) -> str:
    key = f"gap_vs_{base}"
    if key not in entry:
        return "—"
    return f"{entry[key]:+.1f} ± {entry[key + '_std']:.1f}"


def render_markdown(table: dict[str, Any], protocol: dict[str, Any]) -> str:
    """The results table: test top-1 % (mean ± std over seeds) per task and method."""
    methods = table["methods"]
    lines = [
        "| task | group | " + " | ".join(methods) + " |",
        "|---|---|" + "|".join(":---:" for _ in methods) + "|",
    ]
    for task, t in table["tasks"].items():
        cells = []
        for m in methods:
            c = t["methods"].get(m)
            missing = not c or c["test_mean"] is None
            cells.append("—" if missing else format_cell(c["test_mean"], c["test_std"], c["n"]))
        lines.append(f"| {task} | {t['group'] or ''} | " + " | ".join(cells) + " |")
    means = table["means"]
    if means:
        lines.append(
            "| **mean over tasks** | | "
            + " | ".join(_task_mean_cell(means.get(m)) for m in methods)
            + " |"
        )
        for base in GAP_BASES:
            if any(f"gap_vs_{base}" in means.get(m, {}) for m in methods):
                cells = " | ".join(_gap_cell(means.get(m, {}), base) for m in methods)
                lines.append(f"| − {base} (paired by seed) | | {cells} |")
        if any("mean_of_group_means" in means.get(m, {}) for m in methods):
            lines.append(
                "| mean of group means | | "
                + " | ".join(
                    f"{means[m]['mean_of_group_means']:.1f}"
                    if "mean_of_group_means" in means.get(m, {})
                    else "—"
                    for m in methods
                )
                + " |"
            )
    first = next(iter(table["tasks"].values()), None)
    if first:
        lines.append(
            "| trainable params | | "
            + " | ".join(
                f"{first['methods'][m]['trainable_params']:,}" if m in first["methods"] else "—"
                for m in methods
            )
            + " |"
        )
        walls = []
        for m in methods:
            ws = [
                t["methods"][m]["wall_s_mean"] for t in table["tasks"].values() if m in t["methods"]
            ]
            walls.append(f"{statistics.fmean(ws):.0f}" if ws else "—")
        lines.append("| wall s / run (mean) | | " + " | ".join(walls) + " |")
    lines += [
        "",
        "Chosen learning rate per cell (best val200 accuracy at the first seed):",
        "",
        "| task | " + " | ".join(methods) + " |",
        "|---|" + "|".join(":---:" for _ in methods) + "|",
    ]
    for task, t in table["tasks"].items():
        lines.append(
            f"| {task} | "
            + " | ".join(
                f"{t['methods'][m]['lr']:g}" if m in t["methods"] else "—" for m in methods
            )
            + " |"
        )
    counts = {c["n"] for t in table["tasks"].values() for c in t["methods"].values()}
    n_seeds = max(counts, default=0)
    spread = "mean ± sample std over" if n_seeds > 1 else "one run each,"
    partial = (
        f" (so far: the protocol runs {len(protocol['seeds'])} seeds)"
        if n_seeds < len(protocol["seeds"])
        else ""
    )
    head = (
        f"Test top-1 (%) of the final model, {spread} {n_seeds} seed(s){partial}; "
        f"{protocol['epochs']} epochs on train800, learning rate chosen on val200, "
        f"adapter bottleneck = LoRA rank = {protocol['bottleneck_and_rank']}, backbone "
        f"`{protocol['backbone']}`."
    )
    if any("task_mean_std" in e for e in table["means"].values()):
        head += " The task mean's ± is the sample std over seeds of each seed's task mean."
    if any(f"gap_vs_{b}" in e for e in table["means"].values() for b in GAP_BASES):
        head += (
            " '− adapter' ('− lora') is each seed's task mean minus the adapter's (LoRA's) at "
            "the same seed (mean ± sample std): MoSA's dense counterpart is the adapter, "
            "MoSA-LoRA's is LoRA."
        )
    return head + "\n\n" + "\n".join(lines) + "\n"


def plot(table: dict[str, Any], path: Path) -> Path:
    """Grouped bars: test accuracy per task and method, with seed std as error bars."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(table["tasks"])
    methods = table["methods"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(tasks) + 2), 4.2))
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        xs, ys, es = [], [], []
        for j, task in enumerate(tasks):
            c = table["tasks"][task]["methods"].get(m)
            if c and c["test_mean"] is not None:
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                ys.append(c["test_mean"])
                es.append(c["test_std"])
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=m)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=20, ha="right")
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(ncol=min(len(methods), 6), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _task_groups(data_root: Path, tasks: Sequence[str]) -> dict[str, str]:
    from mosa.data.prepare import TASK_GROUPS
    from mosa.data.vtab import VTAB_TASKS

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


def write_results(
    records: list[dict[str, Any]], protocol: dict[str, Any], out: Path, groups: dict[str, str]
) -> dict[str, Path]:
    """``results.json`` (records + table + protocol), ``results.md`` and ``results.png``."""
    table = summarise(records, groups)
    atomic_write_json(
        out / "results.json", {"protocol": protocol, "records": records, "table": table}
    )
    md = render_markdown(table, protocol)
    atomic_write_bytes(out / "results.md", md.encode())
    png = plot(table, out / "results.png")
    return {"json": out / "results.json", "markdown": out / "results.md", "plot": png}


def task_root(data_root: str | None, out: Path, tasks: Sequence[str], prog: str) -> Path:
    """``data_root`` checked to hold every task folder, or (None) the offline tasks prepared
    under ``out/data`` (finished tasks are kept)."""
    if data_root:
        root = Path(data_root)
        missing = [t for t in tasks if not (root / t).is_dir()]
        if missing:
            raise SystemExit(f"{prog}: task folder(s) not found under {root}: {', '.join(missing)}")
        return root
    from mosa.data.prepare import prepare_tasks

    prepare_tasks(out / "data", list(tasks), seed=0)
    return out / "data"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mosa bench accuracy",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  mosa bench accuracy --quick                      # 3 tasks, 1 seed, < 10 min on 2 cores\n"
            "  mosa bench accuracy --out runs/bench_accuracy    # the full offline suite, 3 seeds\n"
            "  mosa bench accuracy --data-root DIR --tasks a,b,c --out OUT   # your own VTAB-layout tasks\n"
        ),
    )
    p.add_argument("--out", default="runs/bench_accuracy", help="output folder (resumable)")
    p.add_argument(
        "--data-root",
        default=None,
        help="folder of VTAB-1k-layout tasks (default: prepare the offline suite under OUT/data)",
    )
    p.add_argument("--tasks", default=None, help="comma-separated task folders")
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated, from {','.join(METHODS)} (default: {','.join(TABLE_METHODS)}; "
        f"--quick: {','.join(QUICK_METHODS)})",
    )
    p.add_argument(
        "--seeds", default=None, help="comma-separated seeds (default 0,1,2; --quick: 0)"
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"training epochs (default {TABLE_EPOCHS}; --quick: 5)",
    )
    p.add_argument(
        "--lrs",
        default=None,
        help="comma-separated learning rates searched for every method (default: each "
        "method's own grid, see mosa.bench.accuracy.LR_GRID)",
    )
    p.add_argument("--bottleneck", type=int, default=8, help="adapter bottleneck = LoRA rank")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backbone", default="mosa_vit_fmnist")
    p.add_argument(
        "--quick",
        action="store_true",
        help="3 tasks, 5 methods, 1 seed, 5 epochs, 2-point lr grids",
    )
    add_executor_arguments(p, jobs=default_jobs())
    return p


def default_jobs() -> int:
    """Runs at once on this machine: one per CPU core (at most 8)."""
    return max(1, min(os.cpu_count() or 1, 8))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    quick = args.quick
    tasks = tuple(t for t in (args.tasks or "").split(",") if t) or (
        QUICK_TASKS if quick else SUITE_TASKS
    )
    methods = tuple(m for m in (args.methods or "").split(",") if m) or (
        QUICK_METHODS if quick else TABLE_METHODS
    )
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(
            f"mosa bench accuracy: unknown method(s) {bad}; choose from {', '.join(METHODS)}"
        )
    seeds = (
        tuple(int(s) for s in args.seeds.split(","))
        if args.seeds
        else ((0,) if quick else (0, 1, 2))
    )
    epochs = args.epochs or (5 if quick else TABLE_EPOCHS)
    try:
        lrs = tuple(sorted(float(v) for v in args.lrs.split(",") if v)) if args.lrs else None
    except ValueError:
        raise SystemExit(f"mosa bench accuracy: --lrs wants numbers, got {args.lrs!r}") from None
    if lrs is not None and (not lrs or min(lrs) <= 0):
        raise SystemExit(f"mosa bench accuracy: --lrs wants positive numbers, got {args.lrs!r}")
    data_root = task_root(args.data_root, out, tasks, "mosa bench accuracy")
    protocol = Protocol(
        tasks=tasks,
        methods=methods,
        seeds=seeds,
        epochs=epochs,
        warmup_epochs=max(1, epochs // 5),
        batch_size=args.batch_size,
        bottleneck=args.bottleneck,
        lr_grid={m: lrs or (QUICK_LR_GRID if quick else LR_GRID)[m] for m in methods},
        data_root=str(data_root),
        backbone=args.backbone,
    )
    options = executor_options(args)
    start = time.perf_counter()
    groups = _task_groups(data_root, tasks)

    def partial(records: list[dict[str, Any]]) -> None:
        if len(protocol.seeds) > 1:  # the table so far: first seed only, seed phase to come
            write_results(records, _protocol_dict(protocol), out, groups)
            log_line(f"wrote the first seed's table to {out / 'results.md'}; seeds next")

    records = run_protocol(protocol, out, options=options, on_selection=partial)
    written = write_results(records, _protocol_dict(protocol), out, groups)
    print(written["markdown"].read_text())
    print(
        f"wrote {written['json']}, {written['markdown']}, {written['plot']} ({time.perf_counter() - start:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``mosa bench study``: where does sparse training pay? MoSA against Adapter, knob by knob.

The protocol is ``mosa bench accuracy``'s: every cell (setting x variant x task) trains on
``train800`` (or a k-shot draw from it) at seed 0 for each learning rate of its grid, the
learning rate with the best ``val200`` accuracy is chosen (ties: the smaller; where it is a
grid end, the grid grows past it, x2 or /2, up to twice), and the final model's test
accuracy is reported; the test split never chooses anything.

Screening moves one factor at a time from a base setting (8 epochs, 800 images, bottleneck 8)
and a base MoSA (the paper's: ``methods/mosa_paper``), with one seed. Then the MoSA knobs whose
val accuracy (mean over tasks) beat the paper's are combined into ``mosa_best``, and the
finalists (adapter, adapter + consistency, the paper's MoSA, ``mosa_best``) run two more seeds
in the base setting and in the setting where the paper's MoSA came closest to the adapter on
val.
Every run is a folder (``OUT/runs/<setting>/<task>/<variant>/lr<lr>/seed<seed>``), so a killed
study resumes; ``study.json`` / ``study.md`` / ``study.png`` are rewritten after every block.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mosa.bench.accuracy import Variant, default_jobs, task_root, train_runs
from mosa.bench.accuracy import plan_run as plan_variant
from mosa.cli.common import add_executor_arguments, executor_options
from mosa.executors import ExecutorOptions, log_line
from mosa.io import atomic_write_bytes, atomic_write_json
from mosa.recipes.sweep import SweepRun

STUDY_TASKS = ("digits_noisy", "fmnist_loc", "fmnist_count")  # the largest MoSA gaps
QUICK_TASKS = ("digits_noisy",)


@dataclass(frozen=True)
class Setting:
    """Conditions every variant of a block trains under."""

    name: str
    overrides: tuple[str, ...]
    lrs: tuple[float, ...]
    note: str


ADAPTER = Variant("adapter", "methods/adapter", ("optim.eps=1e-6",))
ADAPTER_CONS = Variant(
    "adapter_cons", "methods/adapter", ("optim.eps=1e-6", "optim.consistency=1.0")
)
MOSA_PAPER = Variant("mosa_paper", "methods/mosa_paper")
LORA = Variant("lora", "methods/lora", ("optim.eps=1e-6", "method.rank=8"))
LORA_CONS = Variant(
    "lora_cons", "methods/lora", ("optim.eps=1e-6", "method.rank=8", "optim.consistency=1.0")
)
MOSA_LORA_PAPER = Variant("mosa_lora_paper", "methods/mosa_lora_paper", ("method.rank=8",))

# one factor at a time, each from the paper's MoSA
KNOBS: tuple[Variant, ...] = (
    Variant("mosa_n2", "methods/mosa_paper", ("method.num_experts=2",), "num_experts=2"),
    Variant("mosa_sample", "methods/mosa_paper", ("method.routing=sample",), "routing=sample"),
    Variant("mosa_share_up", "methods/mosa_paper", ("method.share=up",), "share=up"),
    Variant("mosa_share_none", "methods/mosa_paper", ("method.share=none",), "share=none"),
    Variant("mosa_no_cons", "methods/mosa_paper", ("optim.consistency=0",), "consistency=0"),
    Variant(
        "mosa_local", "methods/mosa_paper", ("optim.expert_updates=local",), "expert_updates=local"
    ),
    Variant("mosa_shared_bias", "methods/mosa_paper", ("method.bias=shared",), "bias=shared"),
    Variant("mosa_lr_x4", "methods/mosa_paper", ("optim.expert_lr_scale=4",), "expert_lr_scale=4"),
)

SHORT_LRS = (1e-2, 2e-2, 4e-2)
LONG_LRS = (5e-3, 1e-2, 2e-2)
SETTINGS = {
    "base": Setting(
        "base",
        ("optim.epochs=8", "optim.warmup_epochs=1"),
        SHORT_LRS,
        "8 epochs, 800 images, bottleneck 8",
    ),
    "long": Setting("long", ("optim.epochs=24", "optim.warmup_epochs=3"), LONG_LRS, "24 epochs"),
    # the same number of optimizer steps as 8 epochs of 800 images (~104)
    "shots10": Setting(
        "shots10",
        ("optim.epochs=52", "optim.warmup_epochs=6", "data.shots=10"),
        SHORT_LRS,
        "10 images per class, 52 epochs",
    ),
    "b64": Setting(
        "b64",
        ("optim.epochs=8", "optim.warmup_epochs=1", "method.bottleneck=64"),
        SHORT_LRS,
        "bottleneck 64",
    ),
}
# (setting, variants) in the order they run: the control and the knobs first
BLOCKS: tuple[tuple[str, tuple[Variant, ...]], ...] = (
    ("base", (ADAPTER, ADAPTER_CONS, MOSA_PAPER, *KNOBS)),
    ("long", (ADAPTER, ADAPTER_CONS, MOSA_PAPER)),
    ("shots10", (ADAPTER, ADAPTER_CONS, MOSA_PAPER)),
    ("b64", (ADAPTER, ADAPTER_CONS, MOSA_PAPER)),
    ("base", (LORA, LORA_CONS, MOSA_LORA_PAPER)),
)
FINAL_SEEDS = (1, 2)
# the finals run after this many blocks (base, long, shots10): their answer matters most; the
# bottleneck and LoRA blocks follow
FINALS_AFTER = 3
# a cell whose val optimum sits at a grid end gets the next lr beyond it, up to this many times
MAX_EXTENSIONS = 2
COMMON = (
    "data.train_split=train800",
    "data.val_split=val200",
    "data.test_split=test",
    "optim.batch_size=64",
    "method.bottleneck=8",
)


@dataclass
class Cell:
    """Runs of one setting x variant x task: the lr grid at seed 0, then extra seeds."""

    setting: str
    variant: Variant
    task: str
    grid: list[SweepRun] = field(default_factory=list)
    seeds: list[SweepRun] = field(default_factory=list)


def plan_run(
    setting: Setting, variant: Variant, task: str, lr: float, seed: int, data_root: str, out: Path
) -> SweepRun:
    """One run's validated config and folder (``OUT/runs/<setting>/<task>/<variant>/...``)."""
    over = [f"data.root={data_root}", *COMMON, *setting.overrides]
    return plan_variant(variant, over, task, lr, seed, out / "runs" / setting.name)


def _val(summary: dict[str, Any]) -> float:
    v = summary.get("val_acc")
    return float(v) if v is not None else float("-inf")


class Study:
    """Plans, runs (resumably) and records the study's cells."""

    def __init__(
        self,
        out: Path,
        data_root: str,
        tasks: Sequence[str],
        options: ExecutorOptions,
        log: Callable[[str], None],
    ):
        self.out, self.data_root, self.tasks, self.options, self.log = (
            out,
            data_root,
            tuple(tasks),
            options,
            log,
        )
        self.cells: dict[tuple[str, str, str], Cell] = {}
        self.done: dict[Path, dict[str, Any]] = {}

    def _cell(self, setting: str, variant: Variant, task: str) -> Cell:
        key = (setting, variant.name, task)
        if key not in self.cells:
            s = SETTINGS[setting]
            grid = [plan_run(s, variant, task, lr, 0, self.data_root, self.out) for lr in s.lrs]
            self.cells[key] = Cell(setting, variant, task, grid)
        return self.cells[key]

    def chosen(self, cell: Cell) -> SweepRun | None:
        runs = [r for r in cell.grid if r.run_dir in self.done]
        if len(runs) < len(cell.grid):
            return None
        return max(runs, key=lambda r: (_val(self.done[r.run_dir]), -r.lr))

    def run_block(self, setting: str, variants: Sequence[Variant]) -> None:
        cells = [self._cell(setting, v, t) for v in variants for t in self.tasks]
        self.log(f"block {setting}: {', '.join(v.name for v in variants)}")
        self.done.update(train_runs([r for c in cells for r in c.grid], self.options, self.log))
        for _ in range(MAX_EXTENSIONS):
            extra = [r for c in cells if (r := self._extension(c)) is not None]
            if not extra:
                break
            self.log(f"  {len(extra)} cell(s) chose a grid end on val: extending the grid")
            self.done.update(train_runs(extra, self.options, self.log))

    def _extension(self, cell: Cell) -> SweepRun | None:
        """The next learning rate beyond the grid end that val chose (x2 or /2), added to
        the cell's grid, or None when val chose an interior point."""
        best = self.chosen(cell)
        lrs = sorted(r.lr for r in cell.grid)
        if best is None or best.lr not in (lrs[0], lrs[-1]) or len(lrs) < 2:
            return None
        lr = lrs[-1] * 2 if best.lr == lrs[-1] else lrs[0] / 2
        run = plan_run(
            SETTINGS[cell.setting], cell.variant, cell.task, lr, 0, self.data_root, self.out
        )
        cell.grid.append(run)
        return run

    def run_seeds(self, setting: str, variants: Sequence[Variant], seeds: Sequence[int]) -> None:
        todo = []
        for v in variants:
            for t in self.tasks:
                cell = self._cell(setting, v, t)
                best = self.chosen(cell)
                if best is None:
                    continue
                cell.seeds = [
                    plan_run(SETTINGS[setting], v, t, best.lr, s, self.data_root, self.out)
                    for s in seeds
                ]
                todo += cell.seeds
        self.log(f"seeds {list(seeds)} for {', '.join(v.name for v in variants)} ({setting})")
        self.done.update(train_runs(todo, self.options, self.log))

    def best_combination(self) -> Variant | None:
        """The paper's MoSA with every screened knob whose mean val beat the paper's (val only)."""
        paper = self.mean_val("base", MOSA_PAPER.name)
        if paper is None:
            return None
        winners = [k for k in KNOBS if (self.mean_val("base", k.name) or -1.0) > paper]
        if not winners:
            return None
        overrides = tuple(o for k in winners for o in k.overrides)
        knob = ", ".join(k.knob or k.name for k in winners)
        return Variant("mosa_best", "methods/mosa_paper", overrides, knob)

    def best_setting(self) -> str:
        """The setting where the paper's MoSA comes closest to the adapter on val."""
        gaps = {}
        for setting in SETTINGS:
            a, m = self.mean_val(setting, ADAPTER.name), self.mean_val(setting, MOSA_PAPER.name)
            if a is not None and m is not None:
                gaps[setting] = m - a
        return max(gaps, key=gaps.__getitem__) if gaps else "base"

    def mean_val(self, setting: str, variant: str) -> float | None:
        vals = []
        for t in self.tasks:
            cell = self.cells.get((setting, variant, t))
            best = self.chosen(cell) if cell else None
            if best is None:
                return None
            vals.append(_val(self.done[best.run_dir]))
        return statistics.fmean(vals)

    # ------------------------------------------------------------------ records
    def records(self) -> list[dict[str, Any]]:
        """One record per finished run of a chosen setting (the chosen lr, every seed)."""
        out = []
        for cell in self.cells.values():
            best = self.chosen(cell)
            if best is None:
                continue
            grid = {f"{r.lr:g}": self.done[r.run_dir].get("val_acc") for r in cell.grid}
            for r in [best, *[s for s in cell.seeds if s.run_dir in self.done]]:
                summ = self.done[r.run_dir]
                out.append(
                    {
                        "setting": cell.setting,
                        "variant": cell.variant.name,
                        "knob": cell.variant.knob,
                        "overrides": list(cell.variant.overrides),
                        "task": cell.task,
                        "seed": r.seed,
                        "lr": r.lr,
                        "val_acc": summ.get("val_acc"),
                        "test_acc": summ.get("test_acc"),
                        "train_acc": summ.get("final_train_acc"),
                        "trainable_params": (summ.get("params") or {}).get("trainable"),
                        "wall_s": summ.get("wall_time_s"),
                        "val_by_lr": grid,
                        "run_dir": str(r.run_dir),
                    }
                )
        return out


# ---------------------------------------------------------------------------- tables and plot
def gaps(records: list[dict[str, Any]], reference: str = "adapter") -> list[dict[str, Any]]:
    """Per setting x variant: mean test and val over tasks (seed-averaged per task), and the
    gap to ``reference`` (adapter, or lora for LoRA variants) with the seed spread."""
    by: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for r in records:
        by.setdefault((r["setting"], r["variant"]), {}).setdefault(r["task"], []).append(r)
    rows = []
    for (setting, variant), tasks in by.items():
        ref_name = "lora" if "lora" in variant else reference
        ref = by.get((setting, ref_name))
        row = {"setting": setting, "variant": variant, "tasks": len(tasks)}
        row["test"] = statistics.fmean(_task_means(tasks, "test_acc"))
        row["val"] = statistics.fmean(_task_means(tasks, "val_acc"))
        row["seeds"] = min(len(v) for v in tasks.values())
        row["knob"] = next(iter(tasks.values()))[0]["knob"]
        if ref and set(ref) == set(tasks):
            diffs = _seed_diffs(tasks, ref)
            row["gap_test"] = statistics.fmean(diffs) if diffs else None
            row["gap_std"] = statistics.stdev(diffs) if len(diffs) > 1 else None
            row["gap_val"] = row["val"] - statistics.fmean(_task_means(ref, "val_acc"))
            row["reference"] = ref_name
        rows.append(row)
    return rows


def _task_means(tasks: dict[str, list[dict[str, Any]]], key: str) -> list[float]:
    return [100 * statistics.fmean(r[key] for r in recs) for recs in tasks.values()]


def _seed_diffs(
    a: dict[str, list[dict[str, Any]]], b: dict[str, list[dict[str, Any]]]
) -> list[float]:
    """Task-mean test gap (points) for each seed both sides have."""
    seeds = set.intersection(*[{r["seed"] for r in v} for v in (*a.values(), *b.values())])
    out = []
    for s in sorted(seeds):
        d = [100 * (_at(a[t], s)["test_acc"] - _at(b[t], s)["test_acc"]) for t in a]
        out.append(statistics.fmean(d))
    return out


def _at(recs: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    return next(r for r in recs if r["seed"] == seed)


def render(rows: list[dict[str, Any]], records: list[dict[str, Any]], tasks: Sequence[str]) -> str:
    lines = [
        "| setting | variant | knob | seeds | val % | test % | test gap to adapter/LoRA (± seed std) |",
        "|---|---|---|:---:|---:|---:|---:|",
    ]
    for r in rows:
        gap = r.get("gap_test")
        g = (
            "—"
            if gap is None
            else f"{gap:+.1f}" + (f" ± {r['gap_std']:.1f}" if r.get("gap_std") is not None else "")
        )
        lines.append(
            f"| {r['setting']} | {r['variant']} | {r['knob'] or ''} | {r['seeds']} | "
            f"{r['val']:.1f} | {r['test']:.1f} | {g} |"
        )
    lines += ["", "Per task (test %, seed 0 at the lr chosen on val; lr in brackets):", ""]
    lines += [
        "| setting | variant | " + " | ".join(tasks) + " |",
        "|---|---|" + "|".join("---:" for _ in tasks) + "|",
    ]
    by: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for rec in records:
        if rec["seed"] == 0:
            by.setdefault((rec["setting"], rec["variant"]), {})[rec["task"]] = rec
    for (setting, variant), t in by.items():
        cells = [f"{100 * t[k]['test_acc']:.1f} ({t[k]['lr']:g})" if k in t else "—" for k in tasks]
        lines.append(f"| {setting} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _render_curves(curves: dict[str, Any]) -> str:
    if not curves:
        return ""
    lines = ["", "Plain adapter: train accuracy (%) after each epoch (chosen lr, seed 0):", ""]
    for setting, tasks in curves.items():
        for task, accs in tasks.items():
            lines.append(f"- {setting} / {task}: " + ", ".join(f"{a:g}" for a in accs))
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """The test gap to the adapter (or LoRA) per setting x variant, with seed std bars."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        r for r in rows if r.get("gap_test") is not None and r["variant"] not in ("adapter", "lora")
    ]
    labels = [f"{r['setting']}: {r['variant']}" for r in rows]
    ys = [r["gap_test"] for r in rows]
    errs = [r.get("gap_std") or 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.6))
    colours = ["tab:green" if y > 0 else "tab:red" for y in ys]
    ax.barh(range(len(rows)), ys, xerr=errs, color=colours, capsize=2)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("test top-1 gap to the plain adapter (LoRA rows: to LoRA), points, task mean")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def train_curves(records: list[dict[str, Any]], variant: str = "adapter") -> dict[str, Any]:
    """Per setting and task: ``variant``'s train accuracy (%) after each epoch of its chosen
    seed-0 run (from its ``metrics.jsonl``), to see where the schedule saturates it."""
    curves: dict[str, Any] = {}
    for r in records:
        path = Path(r["run_dir"]) / "metrics.jsonl"
        if r["variant"] != variant or r["seed"] != 0 or not path.is_file():
            continue
        lines = path.read_text().splitlines()
        accs = [round(100 * json.loads(ln)["train_acc"], 1) for ln in lines if ln.strip()]
        curves.setdefault(r["setting"], {})[r["task"]] = accs
    return curves


def write(study: Study, out: Path, elapsed: float) -> dict[str, Path]:
    records = study.records()
    rows = gaps(records)
    protocol = {
        "tasks": list(study.tasks),
        "settings": {
            k: {"overrides": list(s.overrides), "lrs": list(s.lrs), "note": s.note}
            for k, s in SETTINGS.items()
        },
        "common": list(COMMON),
        "selection": "lr with the best val200 accuracy at seed 0 (ties: smaller lr; a grid end "
        "chosen on val extends the grid by x2 or /2, up to twice); test never chooses",
        "mosa_best": "the paper's MoSA plus every knob whose base-setting val mean beat the paper's",
        "backbone": "mosa_vit_fmnist",
        "wall_s": round(elapsed),
    }
    curves = train_curves(records)
    atomic_write_json(
        out / "study.json",
        {"protocol": protocol, "rows": rows, "records": records, "adapter_train_acc": curves},
    )
    md = render(rows, records, study.tasks) + _render_curves(curves)
    atomic_write_bytes(out / "study.md", md.encode())
    png = (
        plot(rows, out / "study.png") if any(r.get("gap_test") is not None for r in rows) else None
    )
    return {
        "json": out / "study.json",
        "markdown": out / "study.md",
        "plot": png or out / "study.png",
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mosa bench study",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  mosa bench study --out runs/study          # the full study (hours on 2 cores; resumable)\n"
            "  mosa bench study --quick --out runs/sq     # one task, base block only: plumbing\n"
        ),
    )
    p.add_argument("--out", default="runs/study", help="output folder (resumable)")
    p.add_argument(
        "--data-root", default=None, help="VTAB-layout tasks (default: prepare under OUT/data)"
    )
    p.add_argument(
        "--tasks", default=None, help=f"comma-separated tasks (default: {','.join(STUDY_TASKS)})"
    )
    p.add_argument("--quick", action="store_true", help="one task, the base block, no extra seeds")
    p.add_argument("--no-seeds", action="store_true", help="screen only: skip the 3-seed finalists")
    add_executor_arguments(p, jobs=default_jobs())
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    tasks = tuple(t for t in (args.tasks or "").split(",") if t) or (
        QUICK_TASKS if args.quick else STUDY_TASKS
    )
    data_root = task_root(args.data_root, out, tasks, "mosa bench study")
    study = Study(out, str(data_root), tasks, executor_options(args), log_line)
    start = time.perf_counter()
    blocks = BLOCKS[:1] if args.quick else BLOCKS
    for i, (setting, variants) in enumerate(blocks):
        study.run_block(setting, variants)
        write(study, out, time.perf_counter() - start)
        if i == FINALS_AFTER - 1 and not (args.quick or args.no_seeds):
            _finals(study, out, start)
    return _report(study, out, start)


def _finals(study: Study, out: Path, start: float) -> None:
    """The best MoSA's grid, then 3 seeds of every finalist, in the base setting and in the
    setting where the paper's MoSA came closest to the adapter on val."""
    best = study.best_combination()
    finalists = [ADAPTER, ADAPTER_CONS, MOSA_PAPER, *([best] if best else [])]
    for setting in dict.fromkeys(["base", study.best_setting()]):
        if best is not None:
            study.run_block(setting, [best])
        study.run_seeds(setting, finalists, FINAL_SEEDS)
        write(study, out, time.perf_counter() - start)


def _report(study: Study, out: Path, start: float) -> int:
    written = write(study, out, time.perf_counter() - start)
    print(written["markdown"].read_text())
    print(
        f"wrote {written['json']}, {written['markdown']}, {written['plot']} ({time.perf_counter() - start:.0f}s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

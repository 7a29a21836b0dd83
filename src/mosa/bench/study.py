"""``mosa bench study``: where does sparse training pay? MoSA against Adapter, knob by knob.

The protocol is ``mosa bench accuracy``'s: every cell (setting x variant x task) trains on
``train800`` (or a k-shot draw from it) at seed 0 for each learning rate of its grid, the
learning rate with the best ``val200`` accuracy is chosen (ties: an interior learning rate,
then the smaller; where it is a grid end, the grid grows past it, x2 or /2, up to four times),
and the final model's test accuracy is reported; the test split never chooses anything.

Screening moves one factor at a time from a base setting (8 epochs, 800 images, bottleneck 8)
and a base MoSA (the paper's: ``methods/mosa_paper``), with one seed. Then the MoSA knobs whose
val accuracy (mean over tasks) beat the paper's are combined into ``mosa_best``, and the
finalists (adapter, adapter + consistency, the paper's MoSA, ``mosa_best``) run two more seeds
in the base setting and in the setting where the paper's MoSA came closest to the adapter on
val.
After the screen, the paper's own regimes: sharing levels x N with 10 images per class, our
best MoSA over 24 epochs, and the published VTAB schedule (``paper``: 100 epochs, 10 warm-up,
batch 128, weight decay 0.01) with full fine-tuning as the regime indicator.

The adapter, its consistency control and both MoSAs also record their test accuracy after
each epoch (``eval.test_every_epoch``), which nothing here reads to choose: it gives the
reference protocol (the best test accuracy over epochs and learning rates, as the paper's code
reports) beside ours. Runs from before that
record existed are re-run for it under ``OUT/rerun/``.

Every run is a folder (``OUT/runs/<setting>/<task>/<variant>/lr<lr>/seed<seed>``), so a killed
study resumes; ``study.json`` / ``study.md`` / ``study.png`` / ``study_trend.png`` are
rewritten after every block. What the study trains: :mod:`mosa.bench.study_plan`; its
report: :mod:`mosa.bench.study_report`; the command line: :mod:`mosa.cli.bench.study`.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mosa.bench.accuracy import Variant, train_runs
from mosa.bench.study_plan import (
    ADAPTER,
    ADAPTER_CONS,
    BLOCKS,
    COMMON,
    FINAL_SEEDS,
    FINALS_AFTER,
    FULL,
    KNOBS,
    MAX_EXTENSIONS,
    MOSA_PAPER,
    PROTOCOL_SETTINGS,
    PROTOCOL_VARIANTS,
    QUICK_BLOCK,
    SCREEN_SETTINGS,
    SETTINGS,
    SHARING,
    Cell,
    at_grid_end,
    plan_run,
)
from mosa.bench.study_report import (
    gaps,
    matched_gaps,
    plot,
    plot_trend,
    render,
    render_costs,
    render_curves,
    render_grid_ends,
    render_hours,
    render_protocols,
    render_verdicts,
    train_curves,
)
from mosa.engine.summary import RunSummary
from mosa.executors import ExecutorOptions
from mosa.io import atomic_write_bytes, atomic_write_json
from mosa.recipes.sweep import SweepRun

__all__ = ["Study", "run_study", "write"]


def _recorded(summary: RunSummary | None) -> RunSummary | None:
    """``summary`` when its run timed a per-epoch test record, else None."""
    tests = summary.test_by_epoch if summary is not None else None
    return summary if tests is not None and tests.seconds else None


def _val(summary: RunSummary) -> float:
    v = summary.val_acc
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
        report_only: bool = False,
    ):
        self.out, self.data_root, self.tasks, self.options, self.log = (
            out,
            data_root,
            tuple(tasks),
            options,
            log,
        )
        self.report_only = report_only  # read finished runs, train nothing
        self.cells: dict[tuple[str, str, str], Cell] = {}
        self.done: dict[Path, RunSummary] = {}

    def train(self, runs: Sequence[SweepRun]) -> None:
        """Train ``runs`` (finished ones are read back); with ``report_only``, only read."""
        if not self.report_only:
            self.done.update(train_runs(runs, self.options, self.log))
            return
        for r in runs:
            path = r.run_dir / "summary.json"
            if path.is_file():
                self.done[r.run_dir] = RunSummary.from_dict(json.loads(path.read_text()))

    def cell(self, setting: str, variant: Variant, task: str) -> Cell:
        """The cell of ``variant`` on ``task`` in ``setting``, its seed-0 grid planned once."""
        key = (setting, variant.name, task)
        if key not in self.cells:
            s = SETTINGS[setting]
            grid = [
                plan_run(s, variant, task, lr, 0, self.data_root, self.out)
                for lr in s.lrs_of(variant.name)
            ]
            self.cells[key] = Cell(setting, variant, task, grid)
        return self.cells[key]

    def chosen(self, cell: Cell) -> SweepRun | None:
        """Val's choice in the cell's grid, or None until every grid run is done. A grid end
        tied with an interior lr loses the tie: the plateau reaches inside the grid, so there
        is nothing past the end to look for (a saturated task would otherwise walk off it)."""
        runs = [r for r in cell.grid if r.run_dir in self.done]
        if len(runs) < len(cell.grid):
            return None
        ends = (min(r.lr for r in runs), max(r.lr for r in runs))
        return max(runs, key=lambda r: (_val(self.done[r.run_dir]), r.lr not in ends, -r.lr))

    def run_block(self, setting: str, variants: Sequence[Variant]) -> None:
        cells = [self.cell(setting, v, t) for v in variants for t in self.tasks]
        self.log(f"block {setting}: {', '.join(v.name for v in variants)}")
        self.train([r for c in cells for r in c.grid])
        for _ in range(MAX_EXTENSIONS):
            extra = [r for c in cells if (r := self._extension(c)) is not None]
            if not extra:
                break
            self.log(f"  {len(extra)} cell(s) chose a grid end on val: extending the grid")
            self.train(extra)

    def _extension(self, cell: Cell) -> SweepRun | None:
        """The next learning rate beyond the grid end that val chose (x2 or /2), added to
        the cell's grid, or None when val chose an interior point."""
        best = self.chosen(cell)
        lrs = sorted(r.lr for r in cell.grid)
        if best is None or not at_grid_end(best.lr, lrs):
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
                cell = self.cell(setting, v, t)
                best = self.chosen(cell)
                if best is None:
                    continue
                cell.seeds = [
                    plan_run(SETTINGS[setting], v, t, best.lr, s, self.data_root, self.out)
                    for s in seeds
                ]
                todo += cell.seeds
        self.log(f"seeds {list(seeds)} for {', '.join(v.name for v in variants)} ({setting})")
        self.train(todo)

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
        for setting in SCREEN_SETTINGS:
            a, m = self.mean_val(setting, ADAPTER.name), self.mean_val(setting, MOSA_PAPER.name)
            if a is not None and m is not None:
                gaps[setting] = m - a
        return max(gaps, key=gaps.__getitem__) if gaps else "base"

    def val_winner(self, setting: str, variants: Sequence[Variant]) -> Variant | None:
        """The variant with the best mean val accuracy in ``setting`` (None before its runs)."""
        scored = [(m, v) for v in variants if (m := self.mean_val(setting, v.name)) is not None]
        return max(scored, key=lambda mv: mv[0])[1] if scored else None

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
            grid = {f"{r.lr:g}": self.done[r.run_dir].val_acc for r in cell.grid}
            for r in [best, *[s for s in cell.seeds if s.run_dir in self.done]]:
                summ = self.done[r.run_dir]
                out.append(
                    {
                        "setting": cell.setting,
                        "variant": cell.variant.name,
                        "knob": cell.variant.knob,
                        "overrides": list(cell.variant.overrides),
                        "setting_overrides": list(SETTINGS[cell.setting].overrides),
                        "task": cell.task,
                        "seed": r.seed,
                        "lr": r.lr,
                        "val_acc": summ.val_acc,
                        "test_acc": summ.test_acc,
                        "train_acc": summ.final_train_acc,
                        "trainable_params": summ.params.get("trainable"),
                        "wall_s": summ.wall_time_s,
                        "val_by_lr": grid,
                        "test_by_epoch": self.test_record(r),
                        "run_dir": str(r.run_dir),
                    }
                )
        return out

    # ------------------------------------------------------------------ the reference protocol
    def rerun_dir(self, run: SweepRun) -> Path:
        """Where ``run``'s re-run for the per-epoch test record lives (``OUT/rerun/...``)."""
        return self.out / "rerun" / run.run_dir.relative_to(self.out / "runs")

    def rerun_of(self, run: SweepRun) -> SweepRun:
        """``run`` again with the per-epoch test record, in ``OUT/rerun/`` (for a run from
        before the record existed)."""
        config = copy.deepcopy(run.config)
        config.eval.test_every_epoch = True
        rerun_dir = self.rerun_dir(run)
        config.out = str(rerun_dir)
        return replace(run, run_dir=rerun_dir, config=config)

    def test_record(self, run: SweepRun) -> list[float] | None:
        """``run``'s test accuracy after each epoch, from the run or its re-run (a record)."""
        for d in (run.run_dir, self.rerun_dir(run)):
            summ = self.done.get(d)
            if summ is not None and summ.test_by_epoch is not None and summ.test_by_epoch.accs:
                return summ.test_by_epoch.accs
        return None

    def record_tests(self, setting: str, variants: Sequence[Variant]) -> None:
        """Re-run, for the per-epoch test record, the runs of these cells that lack it."""
        todo = []
        for v in variants:
            for t in self.tasks:
                cell = self.cells.get((setting, v.name, t))
                runs = [*cell.grid, *cell.seeds, *cell.ref_seeds] if cell else []
                todo += [
                    self.rerun_of(r)
                    for r in runs
                    if r.run_dir in self.done and self.test_record(r) is None
                ]
        new = [r for r in todo if not (r.run_dir / "summary.json").is_file()]
        if new:  # re-runs finished in an earlier session are only read back
            self.log(f"re-running {len(new)} run(s) of {setting} for the per-epoch test record")
        if todo:
            self.train(todo)

    def reference_lr(self, cell: Cell) -> float | None:
        """The lr whose seed-0 run reached the best test accuracy at any epoch: the
        reference protocol's choice (selection on test, for comparison only)."""
        records = [(self.test_record(r), r.lr) for r in cell.grid if r.run_dir in self.done]
        if len(records) < len(cell.grid) or any(rec is None for rec, _ in records):
            return None
        return max(records, key=lambda rl: (max(rl[0]), -rl[1]))[1]

    def run_reference_seeds(
        self, setting: str, variants: Sequence[Variant], seeds: Sequence[int]
    ) -> None:
        """The extra seeds at the reference protocol's lr (the same runs as the clean
        protocol's where both chose the same lr)."""
        todo = []
        for v in variants:
            for t in self.tasks:
                cell = self.cells.get((setting, v.name, t))
                lr = self.reference_lr(cell) if cell else None
                if lr is None:
                    continue
                s = SETTINGS[setting]
                cell.ref_seeds = [
                    plan_run(s, v, t, lr, seed, self.data_root, self.out) for seed in seeds
                ]
                todo += cell.ref_seeds
        self.train(todo)

    def reference_records(self) -> list[dict[str, Any]]:
        """Per cell and seed: the best test accuracy over epochs (seed 0: and over the grid)."""
        out = []
        for cell in self.cells.values():
            lr = self.reference_lr(cell)
            if cell.setting not in PROTOCOL_SETTINGS or lr is None:
                continue
            at_lr = [r for r in cell.grid if r.lr == lr][:1] + cell.ref_seeds
            for r in at_lr:
                record = self.test_record(r) if r.run_dir in self.done else None
                if record is None:
                    continue
                best = max(range(len(record)), key=record.__getitem__)
                out.append(
                    {
                        "setting": cell.setting,
                        "variant": cell.variant.name,
                        "knob": cell.variant.knob,
                        "task": cell.task,
                        "seed": r.seed,
                        "lr": lr,
                        "epoch": best + 1,
                        "test_acc": record[best],
                        "run_dir": str(r.run_dir),
                    }
                )
        return out

    def rerun_agreement(self) -> tuple[int, int, float]:
        """(re-runs whose final val and test accuracy equal their original's, re-runs, the
        largest difference of either in points)."""
        same = total = 0
        worst = 0.0
        for cell in self.cells.values():
            for r in [*cell.grid, *cell.seeds, *cell.ref_seeds]:
                rerun = self.done.get(self.rerun_dir(r))
                if rerun is None or r.run_dir not in self.done:
                    continue
                total += 1
                first = self.done[r.run_dir]
                diffs = [
                    abs(first.val_acc - rerun.val_acc) * 100,
                    abs(first.test_acc - rerun.test_acc) * 100,
                ]
                same += max(diffs) == 0
                worst = max(worst, *diffs)
        return same, total, worst

    def test_record_cost(self) -> dict[str, float]:
        """Per setting: seconds of per-epoch test evaluation over its runs' wall seconds."""
        spent: dict[str, list[float]] = {}
        for (setting, _, _), cell in self.cells.items():
            for r in [*cell.grid, *cell.seeds]:
                summ = _recorded(self.done.get(r.run_dir))
                if summ is None:  # an older run: its re-run's cost
                    summ = _recorded(self.done.get(self.rerun_dir(r)))
                if summ is not None and summ.wall_time_s:
                    acc = spent.setdefault(setting, [0.0, 0.0])
                    acc[0] += summ.test_by_epoch.seconds
                    acc[1] += summ.wall_time_s
        return {s: t / w for s, (t, w) in spent.items() if w > 0}

    def run_hours(self) -> dict[str, dict[str, float]]:
        """Per setting: its finished runs (re-runs for the test record included) and the sum
        of their wall times in hours (across resumes)."""
        per: dict[str, dict[str, float]] = {}
        for run_dir, summ in self.done.items():
            setting = run_dir.relative_to(self.out).parts[1]
            acc = per.setdefault(setting, {"runs": 0, "hours": 0.0})
            acc["runs"] += 1
            acc["hours"] += summ.wall_time_s / 3600
        return {s: {"runs": a["runs"], "hours": round(a["hours"], 2)} for s, a in per.items()}


def write(study: Study, out: Path, elapsed: float) -> dict[str, Path]:
    records = study.records()
    rows = gaps(records, n_tasks=len(study.tasks))
    reference = study.reference_records()
    matched, ref_rows = matched_gaps(records, reference, len(study.tasks))
    ref_rows = sorted(
        (r for r in ref_rows if r["setting"] in PROTOCOL_SETTINGS),
        key=lambda r: (
            PROTOCOL_SETTINGS.index(r["setting"]),
            PROTOCOL_VARIANTS.index(r["variant"]),
        ),
    )
    same, reruns, worst = study.rerun_agreement()
    protocol = {
        "tasks": list(study.tasks),
        "settings": {
            k: {
                "overrides": list(s.overrides),
                "lrs": list(s.lrs),
                "variant_lrs": {v: list(g) for v, g in s.variant_lrs},
                "note": s.note,
            }
            for k, s in SETTINGS.items()
        },
        "common": list(COMMON),
        "selection": "lr with the best val200 accuracy at seed 0 (ties: an interior lr, then "
        "the smaller; a grid end chosen on val extends the grid by x2 or /2, up to four times); "
        "test never chooses",
        "mosa_best": "the paper's MoSA plus every knob whose base-setting val mean beat the paper's",
        "reference_protocol": "for comparison only, selection on test: seed 0's best test "
        "accuracy over every epoch and lr of its grid; other seeds: their best epoch at that lr",
        "reruns": f"{same} of {reruns} re-runs for the test record reproduced their original's "
        f"final val and test accuracy exactly; the others differ by up to {worst:.1f} points "
        "(reference figures come from the re-runs, clean ones from the originals)",
        "test_record_cost": study.test_record_cost(),
        "run_hours": study.run_hours(),
        "backbone": "mosa_vit_fmnist",
        "wall_s": round(elapsed),
    }
    curves = train_curves(records)
    doc = {"protocol": protocol, "rows": rows, "reference_rows": ref_rows, "records": records}
    doc["reference_records"] = reference
    doc["adapter_train_acc"] = curves
    atomic_write_json(out / "study.json", doc)
    md = render(rows, records, study.tasks) + render_verdicts(rows)
    md += render_grid_ends(records) + render_protocols(matched, ref_rows, len(study.tasks))
    if reruns:
        md += f"\n{protocol['reruns']}.\n"
    md += render_costs(protocol["test_record_cost"]) + render_hours(protocol["run_hours"])
    md += render_curves(curves)
    atomic_write_bytes(out / "study.md", md.encode())
    png = (
        plot(rows, out / "study.png") if any(r.get("gap_test") is not None for r in rows) else None
    )
    plot_trend(rows, out / "study_trend.png")
    return {
        "json": out / "study.json",
        "markdown": out / "study.md",
        "plot": png or out / "study.png",
    }


def run_study(study: Study, *, quick: bool = False, seeds: bool = True) -> dict[str, Path]:
    """Every block in order (``quick``: :data:`QUICK_BLOCK` only), the finalists' seeds after the
    first three blocks and then the paper's regimes (``seeds``: with their extra seeds),
    rewriting the report after each; returns the files of the last write."""
    start = time.perf_counter()

    def save() -> dict[str, Path]:
        return write(study, study.out, time.perf_counter() - start)

    blocks = (QUICK_BLOCK,) if quick else BLOCKS
    for i, (setting, variants) in enumerate(blocks):
        study.run_block(setting, variants)
        save()
        if i == FINALS_AFTER - 1 and not quick and seeds:
            _finals(study, save)
    if not quick:
        _regimes(study, save, seeds)
    return save()


def _finals(study: Study, save: Callable[[], object]) -> None:
    """The best MoSA's grid, then 3 seeds of every finalist, in the base setting and in the
    setting where the paper's MoSA came closest to the adapter on val."""
    best = study.best_combination()
    finalists = [ADAPTER, ADAPTER_CONS, MOSA_PAPER, *([best] if best else [])]
    for setting in dict.fromkeys(["base", study.best_setting()]):
        if best is not None:
            study.run_block(setting, [best])
        study.run_seeds(setting, finalists, FINAL_SEEDS)
        save()


def _regimes(study: Study, save: Callable[[], object], seeds: bool) -> None:
    """The paper's own regimes, cheapest first: sharing levels x N with 10 images per class,
    both protocols for base and 10 shots, our best MoSA over 24 epochs, the published
    100-epoch schedule, then both protocols for those two."""
    best = study.best_combination()
    bests = [best] if best else []
    finalists = [ADAPTER, MOSA_PAPER, *bests]
    study.run_block("shots10", SHARING)
    winner = study.val_winner("shots10", [MOSA_PAPER, *SHARING])
    if seeds and winner is not None:
        study.run_seeds("shots10", [ADAPTER, winner], FINAL_SEEDS)
    save()
    for setting in ("base", "shots10"):
        _protocols(study, setting, [ADAPTER, ADAPTER_CONS, MOSA_PAPER, *bests], seeds)
        save()
    study.run_block("long", bests)
    if seeds:
        study.run_seeds("long", finalists, FINAL_SEEDS)
    save()
    study.run_block("paper", [ADAPTER, ADAPTER_CONS, FULL, MOSA_PAPER, *bests])
    save()
    if seeds:
        study.run_seeds("paper", finalists, FINAL_SEEDS)
        save()
    # the MoSA-vs-adapter answer first, then its consistency control
    for variants in (finalists, [ADAPTER_CONS]):
        for setting in ("long", "paper"):
            _protocols(study, setting, variants, seeds)
            save()


def _protocols(study: Study, setting: str, variants: list[Variant], seeds: bool) -> None:
    """The per-epoch test record of ``variants`` in ``setting`` (re-running older runs); with
    ``seeds``, their clean finals and the extra seeds at the lr test chose, so that both
    protocols cover the same seeds."""
    study.record_tests(setting, variants)
    if seeds:
        study.run_seeds(setting, variants, FINAL_SEEDS)
        study.run_reference_seeds(setting, variants, FINAL_SEEDS)
        study.record_tests(setting, variants)

"""``mosa sweep``: a grid of runs (tasks x methods x shots x lrs x seeds); restarted, it
continues where it stopped."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mosa.cli.common import Subparsers, add_subparser, check_device, csv
from mosa.cli.report import report
from mosa.recipes.sweep import SweepResult, SweepRun, lock_state, plan_sweep, run_status, run_sweep

DESCRIPTION = """
Run a grid, each run in RUNS_DIR/<task>/<method>[/shots<k>]/lr<lr>/seed<seed>. Runs with
a summary.json are skipped and runs with a last/ checkpoint are resumed, so a killed
sweep continues when started again. A task uses the recipe of that name next to the
first --config when there is one (vtab/_base + dtd -> vtab/dtd), else data.task. A
seed sets both the run seed and method.seed.
"""

EXAMPLES = [
    "mosa sweep --config offline/_base --tasks digits,fmnist_rot --methods mosa,adapter,"
    "linear --seeds 0,1,2 --out runs/sweep",
    "mosa sweep --config vtab/_base --tasks dtd,svhn --lrs 1e-3,5e-3 --seeds 0 "
    "data.train_split=train800 data.val_split=val200 --out runs/lr",
    "mosa sweep --config offline/digits --shots 1,2,4 --seeds 0,1 --out runs/fewshot --dry-run",
]


def add_parser(subs: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``mosa sweep`` to ``subs``."""
    s = add_subparser(
        subs,
        "sweep",
        "grid of runs (tasks x methods x shots x lrs x seeds)",
        DESCRIPTION,
        EXAMPLES,
        common,
    )
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    s.add_argument("--config", "-c", action="append", metavar="FILE|RECIPE")
    s.add_argument("--tasks", type=csv(str))
    s.add_argument("--methods", type=csv(str))
    s.add_argument("--seeds", type=csv(int))
    s.add_argument("--lrs", type=csv(float))
    s.add_argument("--shots", type=csv(int))
    s.add_argument("--out", "-o", required=True, metavar="RUNS_DIR")
    s.add_argument("--device", help="auto, cpu, cuda ...")
    s.add_argument("--dry-run", action="store_true", help="list the runs and their state")
    s.add_argument("--keep-going", action="store_true", help="continue after a failed run")
    s.add_argument("--report", action="store_true", help="run 'mosa report' at the end")
    s.set_defaults(func=cmd_sweep)


def _log(text: str) -> None:
    print(f"mosa: {text}", file=sys.stderr)


def _print_plan(runs: list[SweepRun]) -> None:
    """Each planned run with its state (--dry-run)."""
    note = {"running": " (being trained by a running sweep)", "stale": " (stale lock)"}
    for r in runs:
        lock = lock_state(r.run_dir)
        print(f"{run_status(r.run_dir):7s} {r.run_dir}{note.get(lock or '', '')}")
    _log(f"{len(runs)} run(s) planned (dry run)")


def _print_result(result: SweepResult, out: str) -> None:
    """One line of counts, then a line per failed run."""
    print(
        f"mosa: sweep {out}: {len(result.trained)} trained, {len(result.resumed)} resumed, "
        f"{len(result.done)} already done, {len(result.failed)} failed"
        + (f", {len(result.busy)} being trained by another process" if result.busy else "")
    )
    for path, msg in result.failed.items():
        _log(f"failed {path}: {msg}")


def cmd_sweep(args: argparse.Namespace) -> int:
    """Plan the grid, then list it (--dry-run) or run it; exit 1 when a run failed."""
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={check_device(args.device)}")
    runs = plan_sweep(
        args.config or ["default"],
        overrides,
        out=args.out,
        tasks=args.tasks,
        methods=args.methods,
        seeds=args.seeds,
        lrs=args.lrs,
        shots=args.shots,
    )
    if args.dry_run:
        _print_plan(runs)
        return 0
    result = run_sweep(
        runs, keep_going=args.keep_going, log=_log, manifest=Path(args.out) / "sweep.json"
    )
    _print_result(result, args.out)
    if args.report and not result.failed and not result.busy:
        report(args.out)
    elif not result.failed and not result.busy:
        _log(f"aggregate with: mosa report {args.out}")
    return 1 if result.failed else 0

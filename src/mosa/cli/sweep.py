"""``mosa sweep``: a grid of runs (tasks x methods x shots x lrs x seeds); restarted, it
continues where it stopped."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mosa.cli.common import (
    Subparsers,
    add_executor_arguments,
    add_subparser,
    check_device,
    csv,
    executor_options,
)
from mosa.cli.report import report
from mosa.executors import GridResult, run_grid, run_status
from mosa.recipes.sweep import SweepRun, plan_sweep

DESCRIPTION = """
Run a grid, each run in RUNS_DIR/<task>/<method>[/shots<k>]/lr<lr>/seed<seed>. Runs with
a summary.json are skipped and runs with a last/ checkpoint are resumed, so a killed
sweep continues when started again. A task uses the recipe of that name next to the
first --config when there is one (vtab/_base + dtd -> vtab/dtd), else data.task. A
seed sets both the run seed and method.seed.

Runs train in this process one at a time (--jobs 1), in local processes (--jobs N) or as
Ray tasks (--executor ray; --ray-address joins a cluster whose nodes see RUNS_DIR and the
data at the same paths). A run that fails is reported and the others go on; the command
then exits 1 naming it. A run whose worker or node dies is tried again (--max-retries).
"""

EXAMPLES = [
    "mosa sweep --config offline/_base --tasks digits,fmnist_rot --methods mosa,adapter,"
    "linear --seeds 0,1,2 --out runs/sweep",
    "mosa sweep --config vtab/_base --tasks dtd,svhn --lrs 1e-3,5e-3 --seeds 0 "
    "data.train_split=train800 data.val_split=val200 --out runs/lr",
    "mosa sweep --config offline/digits --shots 1,2,4 --seeds 0,1 --out runs/fewshot --dry-run",
    "mosa sweep --config offline/_base --tasks digits --methods adapter,mosa --seeds 0,1 "
    "--executor ray --jobs 2 --threads 1 --out runs/sweep",
    "mosa sweep --config vtab/_base --tasks dtd,svhn --seeds 0,1,2 --ray-address HEAD:6379 "
    "--gpus-per-run 0.25 --cpus-per-run 2 --out /shared/runs/vtab",
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
    # a failed run no longer stops the others; the flag stays for old scripts
    s.add_argument("--keep-going", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--report", action="store_true", help="run 'mosa report' at the end")
    add_executor_arguments(s, jobs=1)
    s.set_defaults(func=cmd_sweep)


def _log(text: str) -> None:
    print(f"mosa: {text}", file=sys.stderr)


def _print_plan(runs: list[SweepRun]) -> None:
    """Each planned run with its state (--dry-run)."""
    for r in runs:
        print(f"{run_status(r.run_dir):7s} {r.run_dir}")
    _log(f"{len(runs)} run(s) planned (dry run)")


def _print_result(result: GridResult, out: str) -> None:
    """One line of counts, then a line per failed run."""
    counts = {s: len(result.having(s)) for s in ("trained", "resumed", "done", "failed")}
    print(
        f"mosa: sweep {out}: {counts['trained']} trained, {counts['resumed']} resumed, "
        f"{counts['done']} already done, {counts['failed']} failed"
    )
    for o in result.failed:
        _log(f"failed {o.run.run_dir}: {o.error}")


def cmd_sweep(args: argparse.Namespace) -> int:
    """Plan the grid, then list it (--dry-run) or run it; exit 1 when a run failed."""
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={check_device(args.device)}")
    options = executor_options(args)
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
    result = run_grid(runs, options, log=_log, manifest=Path(args.out) / "sweep.json")
    _print_result(result, args.out)
    if result.failed:
        return 1
    if args.report:
        report(args.out)
    else:
        _log(f"aggregate with: mosa report {args.out}")
    return 0

"""``mosa bench study``: parse, run :func:`mosa.bench.study.run_study`, print its report."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from mosa.bench import study as bench
from mosa.bench.accuracy import default_jobs, task_root
from mosa.bench.study_plan import QUICK_TASKS, STUDY_TASKS
from mosa.cli.common import (
    RUN_TIMES,
    Formatter,
    add_executor_arguments,
    examples,
    executor_options,
)
from mosa.executors import log_line

PROG = "mosa bench study"


def build_parser() -> argparse.ArgumentParser:
    """The options of ``mosa bench study``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(bench.__doc__ or "").split("\n\n")[0],
        formatter_class=Formatter,
        epilog=examples(
            "mosa bench study --out runs/study          # the full study (resumable)",
            "mosa bench study --quick --out runs/sq     # plumbing: one task, 3 rows, minutes",
        )
        + RUN_TIMES,
    )
    p.add_argument("--out", default="runs/study", help="output folder (resumable)")
    p.add_argument(
        "--data-root", default=None, help="VTAB-layout tasks (default: prepare under OUT/data)"
    )
    p.add_argument(
        "--tasks", default=None, help=f"comma-separated tasks (default: {','.join(STUDY_TASKS)})"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="one task, the base setting: adapter, the paper's MoSA and one knob; no extra seeds",
    )
    p.add_argument("--no-seeds", action="store_true", help="screen only: skip the 3-seed finalists")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite study.json/.md/.png from the finished runs; train nothing",
    )
    add_executor_arguments(p, jobs=default_jobs())
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or, with ``--report-only``, only report) the study and print ``study.md``."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    tasks = tuple(t for t in (args.tasks or "").split(",") if t) or (
        QUICK_TASKS if args.quick else STUDY_TASKS
    )
    data_root = task_root(args.data_root, out, tasks, PROG)
    study = bench.Study(
        out, str(data_root), tasks, executor_options(args), log_line, report_only=args.report_only
    )
    start = time.perf_counter()
    written = bench.run_study(study, quick=args.quick, seeds=not args.no_seeds)
    print(written["markdown"].read_text())
    print(
        f"wrote {written['json']}, {written['markdown']}, {written['plot']} "
        f"({time.perf_counter() - start:.0f}s)"
    )
    return 0

"""``mosa report``: aggregate finished runs into a markdown table, a plot and a JSON dump."""

from __future__ import annotations

import argparse
import sys

from mosa.cli.common import Subparsers, add_subparser
from mosa.results import write_report

DESCRIPTION = """
Collect every summary.json below RUNS_DIR into a table: rows = tasks, columns =
methods, cells = mean ± std over seeds of the final test top-1. Several settings of a
task/method (an lr sweep) are resolved by validation accuracy. VTAB tasks also get
group means, the mean over tasks and the mean of the group means. Writes the markdown,
a PNG bar chart and a JSON dump (default RUNS_DIR/report.md).
"""


def add_parser(subs: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``mosa report`` to ``subs``."""
    s = add_subparser(
        subs,
        "report",
        "aggregate runs into a markdown table + plot",
        DESCRIPTION,
        ["mosa report runs/sweep", "mosa report runs/sweep --out results/vtab.md --quiet"],
        common,
    )
    s.add_argument("runs_dir", metavar="RUNS_DIR")
    s.add_argument("--out", "-o", help="markdown file (default RUNS_DIR/report.md)")
    s.add_argument("--no-plot", action="store_true", help="skip the PNG")
    s.add_argument("--quiet", "-q", action="store_true", help="do not print the table")
    s.set_defaults(func=cmd_report)


def report(
    runs_dir: str, out: str | None = None, *, plot: bool = True, quiet: bool = False
) -> None:
    """Write the report of ``runs_dir``, print its table (unless ``quiet``) and what was written."""
    _, text, written = write_report(runs_dir, out, plot=plot)
    if not quiet:
        print(text, end="")
    for kind, path in written.items():
        print(f"mosa: {kind} written to {path}", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    """``mosa report RUNS_DIR``."""
    report(args.runs_dir, args.out, plot=not args.no_plot, quiet=args.quiet)
    return 0

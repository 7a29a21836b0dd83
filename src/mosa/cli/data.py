"""``mosa data``: prepare the project's offline tasks (VTAB-1k layout) and list them."""

from __future__ import annotations

import argparse
import sys

import mosa.data.prepare  # called through the module: tests and callers may swap its functions
from mosa.cli.common import DEFAULT_DATA_ROOT, Subparsers, add_subparser, csv


def add_parser(subs: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``mosa data`` and its actions (prepare, list) to ``subs``."""
    s = add_subparser(
        subs,
        "data",
        "prepare the offline tasks",
        "Write the project's offline tasks (real images, VTAB-1k layout).",
        [
            "mosa data prepare",
            "mosa data prepare --tasks digits,fmnist_rot --out data/vtab",
            "mosa data list",
        ],  # fmt: skip
        common,
    )
    actions = s.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    d = add_subparser(
        actions,
        "prepare",
        "write tasks under --out",
        """
        Write project tasks (default: all) in the VTAB-1k layout: train800, val200,
        train800val200 and test split files with 32x32 PNGs. A task already written with the
        same seed is skipped.
        """,
        [
            "mosa data prepare",
            "mosa data prepare --tasks digits,fmnist_rot,fmnist_loc --out data/vtab --seed 0",
        ],
        common,
    )
    d.add_argument("--tasks", type=csv(str), help="comma-separated (default: all)")
    d.add_argument("--out", "-o", default=DEFAULT_DATA_ROOT, help=f"default {DEFAULT_DATA_ROOT}")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--limit", type=int, help="cap every split (quick tests)")
    d.add_argument("--overwrite", action="store_true", help="replace differing task folders")
    d.set_defaults(func=cmd_data_prepare)
    d = add_subparser(
        actions, "list", "list the tasks", "List the tasks 'prepare' can write.",
        ["mosa data list"], common,
    )  # fmt: skip
    d.set_defaults(func=cmd_data_list)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    """Write the tasks, reporting each one's progress and result."""

    def progress(task: str, status: str) -> None:
        print(f"mosa: {task}: {status}", file=sys.stderr)

    results = mosa.data.prepare.prepare_tasks(
        args.out,
        args.tasks,
        seed=args.seed,
        limit=args.limit,
        overwrite=args.overwrite,
        progress=progress,
    )
    for r in results:
        counts = ", ".join(f"{k} {v}" for k, v in r.counts.items())
        print(f"{r.task:14s} {r.status:8s} {r.path}  ({counts})")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    """Print the tasks 'prepare' can write: name, group, classes, description."""
    for t in mosa.data.prepare.PREPARE_TASKS.values():
        print(f"{t.name:14s} {t.group:12s} {t.num_classes:3d} classes  {t.description}")
    return 0

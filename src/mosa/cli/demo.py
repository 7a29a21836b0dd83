"""``mosa demo``: prepare digits, train MoSA, a plain adapter and a linear probe, compare."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import mosa.data.prepare  # called through the module: tests and callers may swap its functions
from mosa.cli.common import (
    DEFAULT_DATA_ROOT,
    Subparsers,
    add_subparser,
    check_device,
    fmt_acc,
    trainable_and_seconds,
)
from mosa.executors import run_one
from mosa.recipes import load_config

METHODS = ("mosa", "adapter", "linear")

DESCRIPTION = """
Prepare the digits task if it is missing, train the default recipe (MoSA), the same
recipe with method=adapter (the plain adapter MoSA must beat) and with method=linear,
and print the three test accuracies side by side. Finished runs are reused.
"""

Row = tuple[str, Path, dict[str, Any]]  # method, run folder, summary


def add_parser(subs: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``mosa demo`` to ``subs``."""
    s = add_subparser(
        subs,
        "demo",
        "prepare digits, train MoSA, a plain adapter and a linear probe, compare",
        DESCRIPTION,
        ["mosa demo", "mosa demo --epochs 3 --out runs/demo_quick"],
        common,
    )
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for every run")
    s.add_argument("--out", "-o", default="runs/demo")
    s.add_argument("--data", default=DEFAULT_DATA_ROOT, help="where the digits task lives")
    s.add_argument("--epochs", type=int)
    s.add_argument("--device", help="auto, cpu, cuda ...")
    s.set_defaults(func=cmd_demo)


def _overrides(args: argparse.Namespace) -> list[str]:
    """The overrides every demo run gets: the user's, --epochs and --device."""
    extra = list(args.overrides)
    if args.epochs is not None:
        # keep the warm-up a fraction of a shortened schedule (the recipe's 2 of 12 epochs)
        warmup = min(load_config("default").optim.warmup_epochs, args.epochs // 4)
        extra += [f"optim.epochs={args.epochs}", f"optim.warmup_epochs={warmup}"]
    if args.device:
        extra.append(f"device={check_device(args.device)}")
    return extra


def _train(method: str, data_root: Path, extra: list[str], out: str) -> Row:
    """Train (or reuse) the default recipe with ``method``."""
    cfg = load_config(
        "default",
        [f"method={method}", f"data.root={data_root}", *extra],
        out=str(Path(out) / method),
    )
    print(f"mosa: {method}: training -> {cfg.out}", file=sys.stderr)
    status, summary = run_one(cfg)
    if status == "done":
        print(f"mosa: {method}: already trained, reusing {cfg.out}", file=sys.stderr)
    return method, Path(cfg.out), summary or {}


def _print_table(rows: list[Row]) -> None:
    """The runs side by side, then where each one's outputs are."""
    print()
    print(f"{'method':8s} {'test top-1':>11s} {'val top-1':>10s} {'trainable':>11s} {'time':>7s}")
    for method, _, s in rows:
        trainable, seconds = trainable_and_seconds(s)
        print(
            f"{method:8s} {fmt_acc(s.get('test_acc')):>11s} {fmt_acc(s.get('val_acc')):>10s} "
            f"{f'{trainable:,}' if isinstance(trainable, int) else 'n/a':>11s} "
            f"{f'{seconds:.0f}s' if isinstance(seconds, (int, float)) else 'n/a':>7s}"
        )
    print()
    for method, run_dir, _ in rows:
        print(f"{method}: adapter {run_dir / 'adapter'}, curves {run_dir / 'curves.png'}, "
              f"summary {run_dir / 'summary.json'}")  # fmt: skip


def cmd_demo(args: argparse.Namespace) -> int:
    """Prepare digits if missing, train the three methods, print the comparison."""
    data_root = Path(args.data)
    if not (data_root / "digits" / "test.txt").is_file():
        print(f"mosa: preparing the digits task under {data_root}", file=sys.stderr)
        mosa.data.prepare.prepare_tasks(data_root, ["digits"], seed=0)
    extra = _overrides(args)
    _print_table([_train(m, data_root, extra, args.out) for m in METHODS])
    return 0

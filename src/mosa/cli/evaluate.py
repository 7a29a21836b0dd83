"""``mosa eval``: top-1 of a trained adapter, merged as deployed
(:func:`mosa.evaluation.evaluate_checkpoint` does the work)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mosa.cli.common import Subparsers, add_subparser, check_device
from mosa.cli.runs import CliError, warn_if_random_backbone
from mosa.evaluation import DATA_SPEC, evaluate_checkpoint, find_checkpoint
from mosa.io import atomic_write_json
from mosa.recipes import load_config

DESCRIPTION = """
Rebuild the backbone named in adapter_config.json, load the adapter, merge it and
report top-1 on a split. PATH is a run folder or an adapter folder. The data comes from
--data, from --config (with overrides), or from the run's own config.json.

A multi-task adapter (one head per task) is evaluated through a task's head: --task
NAME picks one, without it every task is evaluated on the run's data set of that
name. --data on a multi-task adapter needs --task (unless it has a single head).
"""

EXAMPLES = [
    "mosa eval runs/default/mosa",
    "mosa eval runs/default/mosa --split val200",
    "mosa eval runs/x/adapter --data vtab:data/vtab:digits:test --out eval.json",
    "mosa eval runs/x --config vtab/dtd data.root=/data/vtab-1k",
    "mosa eval runs/multitask",
    "mosa eval runs/multitask --task digits",
    "mosa eval runs/multitask --task digits --data vtab:data/vtab:digits:val200",
]


def add_parser(subs: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``mosa eval`` to ``subs``."""
    s = add_subparser(
        subs, "eval", "top-1 of a trained adapter (merged)", DESCRIPTION, EXAMPLES, common
    )
    s.add_argument("path", metavar="RUN_DIR|ADAPTER_DIR")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for --config")
    s.add_argument("--data", metavar=DATA_SPEC, help="data set to evaluate on")
    s.add_argument("--config", "-c", action="append", metavar="FILE|RECIPE")
    s.add_argument("--split", default="test", help="split name (default test)")
    s.add_argument("--task", metavar="NAME", help="multi-task adapter: the head to evaluate")
    s.add_argument("--weights", help="local backbone weights file (.safetensors/.npz/.pth)")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--device", help="auto, cpu, cuda ...")
    s.add_argument("--out", "-o", help="also write the result as JSON")
    s.set_defaults(func=cmd_eval)


def describe_result(entry: dict[str, Any]) -> str:
    """One evaluation as a line: task, top-1, image count, data, method and backbone."""
    task_note = f"task {entry['task']}: " if "task" in entry else ""
    return (
        f"{task_note}top-1 {100 * entry['top1']:.2f}% ({entry['n']} images) on {entry['data']} "
        f"[{entry['method']} on {entry['backbone']}, merged]"
    )


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint, print a line per evaluation and optionally write them as JSON."""
    ckpt = find_checkpoint(args.path)  # a bad PATH is reported before a bad --config
    cfg = load_config(args.config, args.overrides) if args.config else None
    if args.overrides and not args.config:
        raise CliError("key=value overrides need --config (they change that config)")
    results = evaluate_checkpoint(
        args.path,
        task=args.task,
        data=args.data,
        split=args.split,
        config=cfg,
        weights=args.weights,
        batch_size=args.batch_size,
        device=check_device(args.device),
    )
    warn_if_random_backbone(ckpt, weights=args.weights, config=cfg)  # before the results
    for entry in results:
        print(describe_result(entry))
    if args.out:
        atomic_write_json(Path(args.out), results[0] if len(results) == 1 else results)
        print(f"mosa: written {args.out}", file=sys.stderr)
    return 0

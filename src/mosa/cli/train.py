"""``mosa train``: fine-tune a backbone from a recipe (or continue a run)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mosa.engine  # called as mosa.engine.train: tests and callers may swap it
from mosa.cli.common import Subparsers, add_subparser, check_device, fmt_acc, trainable_and_seconds
from mosa.cli.runs import CliError
from mosa.engine.config import TrainConfig
from mosa.evaluation import read_run_config
from mosa.recipes import apply_overrides, build_config, dump_yaml, format_out, load_config
from mosa.runs import RUN_CONFIG

DESCRIPTION = """
Train one run. The config is a packaged recipe (see 'mosa recipes') or a YAML file;
several --config are merged left to right; key=value overrides come last (dotted keys,
YAML values). Without --config the default recipe runs (MoSA on mosa_vit_fmnist on the
digits task prepared under data/vtab). Writes config.json, metrics.jsonl, summary.json,
adapter/, last/ and curves.png into the output folder. Prints one line per epoch
(train loss and accuracy, val accuracy, lr, seconds; rank 0 only) and, on a terminal, a
progress bar; --quiet prints only warnings and the result. A run shorter than the
recipe's warm-up (optim.epochs=1) warms up over the whole run, with a notice. A
non-finite loss, gradient, weight or eval loss stops the run with exit code 2, keeping
the last good checkpoint in OUT/last. SIGTERM or SIGUSR1 (a scheduler's preemption) stops
it after the current step with a resumable OUT/last and exit code 75; --resume continues
from that step. Out of memory? optim.accumulate=k runs each batch of optim.batch_size as k
micro-batches with the same updates (MoSA's expert picks are drawn once per batch).
"""

EXAMPLES = [
    "mosa train",
    "mosa train --config vtab/dtd method=lora optim.lr=1e-3 seed=1",
    "mosa train --config fgvc/cub --config methods/adapter data.root=/data/fgvc",
    "mosa train --config my.yaml data.0.task=digits data.1.task=fmnist_rot --out runs/mt",
    "mosa train --resume runs/default/mosa",
    "mosa train --config vtab/dtd optim.accumulate=4     # batch 128 as 4 x 32 on a small GPU",
    "mosa train --config offline/digits optim.epochs=2 --print-config",
]


def add_parser(subs: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``mosa train`` to ``subs``."""
    s = add_subparser(
        subs, "train", "fine-tune a backbone from a recipe", DESCRIPTION, EXAMPLES, common
    )
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    s.add_argument(
        "--config",
        "-c",
        action="append",
        metavar="FILE|RECIPE",
        help="recipe name (vtab/dtd) or YAML path; repeatable",
    )
    s.add_argument("--out", "-o", help="output folder (may use {task} {method} {seed} {lr})")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue a run from RUN_DIR/last")
    s.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    s.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    s.add_argument("--quiet", "-q", action="store_true", help="no per-epoch lines or progress bar")
    s.add_argument(
        "--compile", action="store_true", help="train through torch.compile (= compile=true)"
    )
    s.set_defaults(func=cmd_train)


def resume_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config to continue ``run_dir`` with: its ``config.json`` with ``key=value``
    ``overrides`` applied, writing into ``run_dir`` again."""
    run_dir = Path(run_dir)
    tree = apply_overrides(read_run_config(run_dir).to_dict(), overrides)
    tree["out"] = str(run_dir)
    return build_config(tree, str(run_dir / RUN_CONFIG))


def _config(args: argparse.Namespace) -> TrainConfig:
    """The run's config: a recipe with overrides, or the config of the run to resume."""
    if args.resume:
        if args.config:
            raise CliError("--resume takes the config from RUN_DIR/config.json; drop --config")
        cfg = resume_config(args.resume, args.overrides)
    else:
        cfg = load_config(args.config or None, args.overrides, out=args.out)
    if args.device:
        cfg.device = check_device(args.device)
    if args.compile:
        cfg.compile = True
    return format_out(cfg) if "{" in cfg.out else cfg


def describe_summary(summary: dict[str, Any]) -> list[str]:
    """A run summary as short phrases: test (and val) top-1, trainable params, seconds."""
    trainable, seconds = trainable_and_seconds(summary)
    parts = [f"test top-1 {fmt_acc(summary.get('test_acc'))}"]
    if summary.get("val_acc") is not None:
        parts.append(f"val top-1 {fmt_acc(summary.get('val_acc'))}")
    if isinstance(trainable, int):
        parts.append(f"trainable params {trainable:,}")
    if isinstance(seconds, (int, float)):
        parts.append(f"{seconds:.0f}s")
    return parts


def outputs(run_dir: Path) -> str:
    """``run_dir`` and which of a run's outputs it holds."""
    names = ["adapter/", "summary.json", "metrics.jsonl", "curves.png"]
    have = [n for n in names if (run_dir / n.rstrip("/")).exists()]
    return f"{run_dir}: " + (", ".join(have) if have else "(nothing written)")


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) one run and print its result."""
    cfg = _config(args)
    if args.print_config:
        print(dump_yaml(cfg.to_dict()), end="")
        return 0
    print(f"mosa: {'resuming' if args.resume else 'training'} {cfg.method.method} on "
          f"{'+'.join(d.label for d in cfg.data)} -> {cfg.out}", file=sys.stderr)  # fmt: skip
    summary = mosa.engine.train(cfg, resume=bool(args.resume), progress=not args.quiet)
    print("mosa: " + ", ".join(describe_summary(summary or {})))
    print("mosa: written to " + outputs(Path(cfg.out)))
    return 0

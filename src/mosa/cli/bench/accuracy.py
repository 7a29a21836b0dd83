"""``mosa bench accuracy``: parse the protocol's options, run :mod:`mosa.bench.accuracy`, write
and print its table."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mosa.bench import accuracy as bench
from mosa.bench.accuracy_report import write_results
from mosa.cli.common import (
    RUN_TIMES,
    Formatter,
    add_executor_arguments,
    examples,
    executor_options,
)
from mosa.executors import log_line

PROG = "mosa bench accuracy"
DESCRIPTION = (bench.__doc__ or "").split("\n\n")[0]


def build_parser() -> argparse.ArgumentParser:
    """The options of ``mosa bench accuracy``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        formatter_class=Formatter,
        epilog=examples(
            "mosa bench accuracy --quick                      # 3 tasks, 1 seed",
            "mosa bench accuracy --out runs/bench_accuracy    # the full offline suite, 3 seeds",
            "mosa bench accuracy --data-root DIR --tasks a,b,c --out OUT   # your own VTAB-layout tasks",
        )
        + RUN_TIMES,
    )
    p.add_argument("--out", default="runs/bench_accuracy", help="output folder (resumable)")
    p.add_argument(
        "--data-root",
        default=None,
        help="folder of VTAB-1k-layout tasks (default: prepare the offline suite under OUT/data)",
    )
    p.add_argument("--tasks", default=None, help="comma-separated task folders")
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated, from {','.join(bench.METHODS)} (default: "
        f"{','.join(bench.TABLE_METHODS)}; --quick: {','.join(bench.QUICK_METHODS)})",
    )
    p.add_argument(
        "--seeds", default=None, help="comma-separated seeds (default 0,1,2; --quick: 0)"
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"training epochs (default {bench.TABLE_EPOCHS}; --quick: 5)",
    )
    p.add_argument(
        "--lrs",
        default=None,
        help="comma-separated learning rates searched for every method (default: each "
        "method's own grid, see mosa.bench.accuracy.LR_GRID)",
    )
    p.add_argument("--bottleneck", type=int, default=8, help="adapter bottleneck = LoRA rank")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backbone", default="mosa_vit_fmnist")
    p.add_argument(
        "--quick",
        action="store_true",
        help="3 tasks, 5 methods, 1 seed, 5 epochs, 2-point lr grids",
    )
    add_executor_arguments(p, jobs=bench.default_jobs())
    return p


def _names(value: str | None) -> tuple[str, ...]:
    return tuple(v for v in (value or "").split(",") if v)


def _lrs(value: str | None) -> tuple[float, ...] | None:
    """The ``--lrs`` grid, ascending (None: each method's own)."""
    if not value:
        return None
    try:
        lrs = tuple(sorted(float(v) for v in value.split(",") if v))
    except ValueError:
        raise SystemExit(f"{PROG}: --lrs wants numbers, got {value!r}") from None
    if not lrs or min(lrs) <= 0:
        raise SystemExit(f"{PROG}: --lrs wants positive numbers, got {value!r}")
    return lrs


def protocol_of(args: argparse.Namespace) -> bench.Protocol:
    """The protocol the parsed options ask for (``--quick`` and the suite's defaults filled
    in), checked before any data is prepared; its ``data_root`` is still to be set."""
    quick = args.quick
    methods = _names(args.methods) or (bench.QUICK_METHODS if quick else bench.TABLE_METHODS)
    bad = [m for m in methods if m not in bench.METHODS]
    if bad:
        raise SystemExit(f"{PROG}: unknown method(s) {bad}; choose from {', '.join(bench.METHODS)}")
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    epochs = args.epochs or (5 if quick else bench.TABLE_EPOCHS)
    lrs = _lrs(args.lrs)
    return bench.Protocol(
        tasks=_names(args.tasks) or (bench.QUICK_TASKS if quick else bench.SUITE_TASKS),
        methods=methods,
        seeds=seeds or ((0,) if quick else (0, 1, 2)),
        epochs=epochs,
        warmup_epochs=max(1, epochs // 5),
        batch_size=args.batch_size,
        bottleneck=args.bottleneck,
        lr_grid={m: lrs or bench.LR_GRID[m] for m in methods},
        data_root="",
        backbone=args.backbone,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the protocol, write ``results.json`` / ``.md`` / ``.png`` and print the table."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    protocol = protocol_of(args)
    data_root = bench.task_root(args.data_root, out, protocol.tasks, PROG)
    protocol = replace(protocol, data_root=str(data_root))
    start = time.perf_counter()
    groups = bench.task_groups(data_root, protocol.tasks)
    described = bench.protocol_dict(protocol)

    def partial(records: list[dict[str, Any]]) -> None:
        if len(protocol.seeds) > 1:  # the table so far: first seed only, seed phase to come
            write_results(records, described, out, groups)
            log_line(f"wrote the first seed's table to {out / 'results.md'}; seeds next")

    records = bench.run_protocol(
        protocol, out, options=executor_options(args), on_selection=partial
    )
    written = write_results(records, described, out, groups)
    print(written["markdown"].read_text())
    print(
        f"wrote {written['json']}, {written['markdown']}, {written['plot']} "
        f"({time.perf_counter() - start:.0f}s)"
    )
    return 0

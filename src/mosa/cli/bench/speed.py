"""``mosa bench speed``: parse, run :func:`mosa.bench.speed.run_speed_bench`, print its table."""

from __future__ import annotations

import argparse
import sys

from mosa.bench.speed import run_speed_bench
from mosa.bench.speed_report import format_speed_table
from mosa.cli.common import RUN_TIMES, Formatter, examples


def build_parser() -> argparse.ArgumentParser:
    """The options of ``mosa bench speed``."""
    p = argparse.ArgumentParser(
        prog="mosa bench speed",
        description="``mosa bench speed``: training and inference cost of every method on one "
        "backbone, in one run.",
        formatter_class=Formatter,
        epilog=examples(
            "mosa bench speed --device cpu --compile --out runs/bench_speed_cpu.json",
            "mosa bench speed --device cuda --compile --out runs/bench_speed_cuda.json",
            "mosa bench speed --quick                   # plumbing: seconds",
        )
        + RUN_TIMES,
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--out", default=None, help="write the JSON result here")
    p.add_argument("--model", default=None, help="timm model name (random weights)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed training rounds")
    p.add_argument("--quick", action="store_true", help="tiny model, few steps (plumbing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 on cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument(
        "--compile", action="store_true", help="add torch.compile rows beside the eager ones"
    )
    return p


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """``mosa bench speed --device cpu --out FILE.json``."""
    a = build_parser().parse_args(argv)
    result = run_speed_bench(
        a.device,
        a.out,
        model=a.model,
        batch_size=a.batch_size,
        img_size=a.img_size,
        steps=a.steps,
        quick=a.quick,
        seed=a.seed,
        threads=a.threads,
        compile=a.compile,
        log=None if a.quiet else _log,
    )
    print(format_speed_table(result))
    if a.out:
        print(f"wrote {a.out}")
    return 0

"""``mosa bench executors``: parse, run :func:`mosa.bench.executors.run`, print the ratio."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mosa.bench import executors as bench
from mosa.bench.accuracy import default_jobs
from mosa.data.prepare import prepare_tasks
from mosa.io import atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    """The options of ``mosa bench executors``."""
    p = argparse.ArgumentParser(
        prog="mosa bench executors",
        description=(bench.__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  mosa bench executors --out runs/bench_executors.json\n",
    )
    p.add_argument("--out", default="runs/bench_executors.json", help="results (JSON)")
    p.add_argument("--data-root", help="VTAB-layout folder with digits (default: prepared)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--jobs", type=int, default=default_jobs(), help="runs at once")
    p.add_argument("--rounds", type=int, default=1, help="repeat, alternating the order")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Time the grid on both executors, write the JSON and print the ratio."""
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mosa-bench-executors-") as tmp:
        work = Path(tmp)
        data_root = args.data_root
        if data_root is None:
            prepare_tasks(work / "data", ["digits"], seed=0)
            data_root = str(work / "data")
        result = bench.run(data_root, args.epochs, args.jobs, args.rounds, work)
    atomic_write_json(Path(args.out), result)
    print(json.dumps(result["wall_s"]))
    print(
        f"{result['grid']['runs']} runs, {args.jobs} at a time: local "
        f"{result['wall_s']['local']:.1f}s, ray {result['wall_s']['ray']:.1f}s, ratio ray/local "
        f"{result['ratio_ray_over_local']:.3f}; Ray start-up {result['ray_startup_s']:.1f}s; "
        f"wrote {args.out}"
    )
    return 0

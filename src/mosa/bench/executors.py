"""``mosa bench executors``: the same grid on the ``local`` executor and on a local Ray
instance, side by side: wall time of each, their ratio, and Ray's start-up seconds.

Each round trains the grid twice from empty folders (local first, then Ray; ``--rounds``
repeats and alternates the order), so the ratio compares like with like on this machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mosa.bench.accuracy import default_jobs
from mosa.executors import ExecutorOptions, log_line, run_grid
from mosa.io import atomic_write_json
from mosa.recipes.sweep import plan_sweep

GRID = {"tasks": ["digits"], "methods": ["adapter", "mosa"], "seeds": [0, 1, 2, 3]}


def _timed(runs_of: Any, options: ExecutorOptions, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = run_grid(runs_of(out), options, log=lambda s: None)
    wall = time.perf_counter() - start
    result.raise_for_failures()
    return {"executor": options.executor, "wall_s": wall, "startup_s": result.startup_s}


def run(data_root: str, epochs: int, jobs: int, rounds: int, work: Path) -> dict[str, Any]:
    """Both executors on the grid, ``rounds`` times; the rows and the ratio ray / local."""
    overrides = [f"data.root={data_root}", f"optim.epochs={epochs}", "optim.warmup_epochs=1"]

    def runs_of(out: Path) -> list[Any]:
        return plan_sweep(["offline/_base"], overrides, out=out, **GRID)

    local = ExecutorOptions(executor="local", jobs=jobs, threads=1)
    ray = ExecutorOptions(executor="ray", jobs=jobs, threads=1)
    rows = []
    for i in range(rounds):
        order = [local, ray] if i % 2 == 0 else [ray, local]
        for options in order:
            row = _timed(runs_of, options, work / options.executor)
            rows.append({"round": i, **row})
            log_line(f"round {i}: {options.executor} {row['wall_s']:.1f}s")
    mean = {
        name: statistics.fmean(r["wall_s"] for r in rows if r["executor"] == name)
        for name in ("local", "ray")
    }
    startups = [r["startup_s"] for r in rows if r["executor"] == "ray"]
    return {
        "grid": {**GRID, "runs": len(runs_of(work / "plan")), "epochs": epochs, "jobs": jobs},
        "rows": rows,
        "wall_s": mean,
        "ratio_ray_over_local": mean["ray"] / mean["local"],
        "ray_startup_s": statistics.fmean(startups),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mosa bench executors",
        description=__doc__.split("\n\n")[0],
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
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mosa-bench-executors-") as tmp:
        work = Path(tmp)
        data_root = args.data_root
        if data_root is None:
            from mosa.data.prepare import prepare_tasks

            prepare_tasks(work / "data", ["digits"], seed=0)
            data_root = str(work / "data")
        result = run(data_root, args.epochs, args.jobs, args.rounds, work)
    atomic_write_json(Path(args.out), result)
    print(json.dumps(result["wall_s"]))
    print(
        f"{result['grid']['runs']} runs, {args.jobs} at a time: local {result['wall_s']['local']:.1f}s, "
        f"ray {result['wall_s']['ray']:.1f}s, ratio ray/local {result['ratio_ray_over_local']:.3f}; "
        f"Ray start-up {result['ray_startup_s']:.1f}s; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``mosa bench executors``: the same grid on the ``local`` executor and on a local Ray
instance, side by side: wall time of each, their ratio, and Ray's start-up seconds.

Each round trains the grid twice from empty folders (local first, then Ray; ``--rounds``
repeats and alternates the order), so the ratio compares like with like on this machine.
The command line: :mod:`mosa.cli.bench.executors`.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from mosa.executors import ExecutorOptions, log_line, run_grid
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

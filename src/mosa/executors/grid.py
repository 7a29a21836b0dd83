"""``run_grid``: train many run folders on an executor, report each as it finishes.

Runs whose folder holds a ``summary.json`` are read back and never trained again; the others
go to the executor (``local`` processes or ``ray``), which resumes a started run from its
``last/`` checkpoint wherever it lands. A run that fails by itself is reported with its
one-line error while the others go on; a worker that dies is tried again, up to
``max_retries`` times.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mosa.executors.options import ExecutorOptions, Finished, GridError, Log
from mosa.executors.worker import run_status
from mosa.io import atomic_write_json
from mosa.recipes.sweep import SweepRun, run_dir_name

__all__ = [
    "GridResult",
    "RunOutcome",
    "log_line",
    "progress_note",
    "run_grid",
]


@dataclass
class RunOutcome:
    """One run of a grid: ``status`` is ``done`` (finished before), ``trained``, ``resumed``
    or ``failed`` (with its one-line ``error``); ``node`` says where it ran."""

    run: SweepRun
    status: str
    summary: dict[str, Any] | None = None
    error: str | None = None
    node: str | None = None
    seconds: float | None = None


@dataclass
class GridResult:
    """Every run's outcome, in the order the runs were given; ``startup_s``: seconds it took
    to start (or join) the executor, None when nothing needed training."""

    outcomes: list[RunOutcome] = field(default_factory=list)
    startup_s: float | None = None

    def having(self, status: str) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def failed(self) -> list[RunOutcome]:
        return self.having("failed")

    @property
    def summaries(self) -> dict[Path, dict[str, Any]]:
        """Run folder -> summary of every finished run."""
        return {o.run.run_dir: o.summary for o in self.outcomes if o.summary is not None}

    def raise_for_failures(self) -> None:
        """:class:`GridError` naming every failed run and its error, if any failed."""
        if self.failed:
            runs = "; ".join(f"{o.run.run_dir} ({o.error})" for o in self.failed)
            raise GridError(f"{len(self.failed)} run(s) failed: {runs}")


class Executor(Protocol):
    """What ``run_grid`` needs from an executor."""

    slots: int  # runs that can train at once

    def describe(self) -> str: ...

    def check(self, cwd: str, out_root: str, data_roots: Sequence[str]) -> list[str]: ...

    def run(self, todo: Sequence[SweepRun], finished: Finished) -> None: ...

    def close(self) -> None: ...


def log_line(text: str) -> None:
    """Print a progress line at once, also when stdout is a file (block-buffered)."""
    print(text, flush=True)


def progress_note(done: int, total: int, running: int, elapsed_s: float, trained: int) -> str:
    """``"12/99 done, 2 running, 85 left, ETA 41 min"``; the ETA extrapolates the wall time
    per run trained in this process (``elapsed_s / trained``, parallel runs included) over
    the runs left."""
    left = total - done
    note = f"{done}/{total} done, {running} running, {left} left"
    if trained and left:
        eta = elapsed_s / trained * left
        note += f", ETA {eta / 60:.0f} min" if eta >= 90 else f", ETA {eta:.0f} s"
    return note


def make_executor(options: ExecutorOptions, log: Log) -> Executor:
    """The executor ``options`` name, started (a Ray instance is started or joined here)."""
    if options.executor == "ray":
        from mosa.executors.ray_cluster import RayExecutor  # optional dependency

        return RayExecutor(options, log)
    from mosa.executors.local import LocalExecutor

    return LocalExecutor(options)


def _out_root(runs: Sequence[SweepRun]) -> str:
    """The folder holding every run folder (checked for writing before any training)."""
    return os.path.commonpath([os.path.abspath(r.run_dir.parent) for r in runs])


class _Progress:
    """Records outcomes, prints a line per finished run and keeps the manifest current."""

    def __init__(self, runs: Sequence[SweepRun], log: Log, manifest: Path | None) -> None:
        self.outcomes: dict[Path, RunOutcome] = {}
        self.runs, self.log, self.manifest = runs, log, manifest
        self.total = self.count = 0
        self.slots = 1
        self.start = time.perf_counter()

    def finished(self, run: SweepRun, res: dict[str, Any]) -> None:
        if res.get("ok"):
            status = "resumed" if res.get("before") == "resume" else "trained"
            outcome = RunOutcome(run, status, res["summary"], None, res["node"], res["seconds"])
        else:
            outcome = RunOutcome(run, "failed", None, res["error"], res.get("node"))
        self.outcomes[run.run_dir] = outcome
        self.count += 1
        note = progress_note(
            self.count,
            self.total,
            min(self.slots, self.total - self.count),
            time.perf_counter() - self.start,
            self.count,
        )
        where = f" on {outcome.node}" if outcome.node else ""
        what = f"FAILED ({outcome.error})" if outcome.error else outcome.status
        took = f" in {outcome.seconds:.0f}s" if outcome.seconds is not None else ""
        self.log(f"[{self.count}/{self.total}] {self._label(run)}: {what}{where}{took} ({note})")
        self.write()

    def _label(self, run: SweepRun) -> str:
        return run_dir_name(run.task, run.method, run.lr, run.seed, run.shots)

    def write(self) -> None:
        if self.manifest is None:
            return
        rows = []
        for r in self.runs:
            o = self.outcomes.get(r.run_dir)
            row = {**r.key, "run_dir": str(r.run_dir)}
            row["status"] = o.status if o else run_status(r.run_dir)
            if o and o.node:
                row["node"] = o.node
            if o and o.error:
                row["error"] = o.error
            rows.append(row)
        atomic_write_json(self.manifest, {"runs": rows})


def run_grid(
    runs: Sequence[SweepRun],
    options: ExecutorOptions | None = None,
    *,
    log: Log = log_line,
    manifest: str | Path | None = None,
) -> GridResult:
    """Train every run not finished yet on the executor ``options`` names; return each run's
    outcome. ``manifest``: a JSON file listing the runs and their state, rewritten
    atomically after each run.

    Raises :class:`GridError` before any training when a machine cannot read a data root or
    write the output folder. Ctrl-C stops the runs at once (each resumes from its last
    checkpoint) and propagates.
    """
    options = options or ExecutorOptions()
    runs = list(runs)
    if not runs:
        return GridResult()
    root = _out_root(runs)
    progress = _Progress(runs, log, Path(manifest) if manifest else None)
    todo = []
    for r in runs:
        if run_status(r.run_dir) == "done":
            summary = json.loads((r.run_dir / "summary.json").read_text())
            progress.outcomes[r.run_dir] = RunOutcome(r, "done", summary)
        else:
            todo.append(r)
    progress.total = len(todo)
    startup_s = _train(todo, options, progress, root) if todo else None
    if not todo:
        progress.write()
    outcomes = [progress.outcomes[r.run_dir] for r in runs if r.run_dir in progress.outcomes]
    return GridResult(outcomes, startup_s)


def _train(todo: list[SweepRun], options: ExecutorOptions, progress: _Progress, root: str) -> float:
    """Train ``todo``; the executor's start-up seconds."""
    data_roots = sorted({d.root for r in todo for d in r.config.data})
    start = time.perf_counter()
    executor = make_executor(options, progress.log)
    startup_s = time.perf_counter() - start
    try:
        problems = executor.check(os.getcwd(), root, data_roots)
        if problems:
            raise GridError("cannot run the grid: " + "; ".join(problems))
        progress.slots = executor.slots
        done = len(progress.outcomes)
        progress.log(f"training {len(todo)} run(s) on {executor.describe()} ({done} already done)")
        progress.start = time.perf_counter()
        try:
            progress.write()
            executor.run(todo, progress.finished)
        finally:
            progress.write()
    finally:
        executor.close()
    return startup_s

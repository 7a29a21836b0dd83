"""What the executors share: the options of a grid's run and the types they pass around."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mosa.config import ConfigError
from mosa.recipes.sweep import SweepRun

__all__ = ["EXECUTORS", "ExecutorOptions", "Finished", "GridError", "Log"]

EXECUTORS = ("local", "ray")
Log = Callable[[str], None]
# what an executor hands back for each run: execute()'s dict (ok, summary / error, node, ...)
Finished = Callable[[SweepRun, dict[str, Any]], None]


class GridError(RuntimeError):
    """The grid cannot start (a machine cannot reach its folders, Ray is missing) or some
    of its runs failed."""


@dataclass(frozen=True)
class ExecutorOptions:
    """Where and how the runs of a grid train.

    ``executor``: ``local`` (processes on this machine) or ``ray`` (a local Ray instance, or
    the cluster at ``ray_address``). ``jobs``: runs at once on this machine (``1`` trains in
    this process; with a local Ray instance, the CPUs it gets are ``jobs * cpus_per_run``).
    ``threads``: torch threads per run (default: this machine's cores shared among the
    ``jobs``; 1 gives results that do not depend on the thread count). ``cpus_per_run`` /
    ``gpus_per_run``: what Ray reserves per run (0.25 GPU packs four runs on a GPU).
    ``max_retries``: how often a run whose worker or node died is tried again.
    """

    executor: str = "local"
    jobs: int = 1
    threads: int | None = None
    ray_address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor={self.executor!r} is not one of {', '.join(EXECUTORS)}")
        if self.ray_address and self.executor != "ray":
            raise ConfigError("--ray-address needs --executor ray")
        if self.jobs < 1 or (self.threads is not None and self.threads < 1):
            raise ConfigError(f"jobs={self.jobs} and threads={self.threads} must be at least 1")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries={self.max_retries} must not be negative")
        if self.cpus_per_run < 0 or self.gpus_per_run < 0:
            raise ConfigError("cpus_per_run and gpus_per_run must not be negative")
        if self.gpus_per_run and self.executor == "local":
            raise ConfigError(
                "--gpus-per-run sizes Ray tasks and the local executor would ignore it: use "
                "--executor ray (a local Ray instance packs runs on this machine's GPUs) or "
                "--ray-address for a cluster"
            )

    @property
    def run_threads(self) -> int:
        """torch threads per run: ``threads``, or the cores shared among the ``jobs``."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.jobs)

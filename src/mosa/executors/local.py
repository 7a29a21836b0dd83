"""The ``local`` executor: runs in worker processes on this machine (``jobs`` at a time).

Each worker is a fresh interpreter (``spawn``: no torch threads inherited from a fork) that
trains one run after another. A worker that dies (killed, out of memory) breaks Python's
process pool: the runs it held and the ones next to it are given to a new pool, each
counting one retry, and resume from their checkpoints. ``jobs=1`` trains in this process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import active_children, get_context

from mosa.executors.options import ExecutorOptions, Finished
from mosa.executors.worker import execute, reach_problems
from mosa.recipes.sweep import SweepRun

__all__ = ["LocalExecutor"]


class LocalExecutor:
    """Worker processes on this machine; see the module docstring."""

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options
        self.slots = options.jobs
        self.host = socket.gethostname()

    def describe(self) -> str:
        o = self.options
        where = "this process" if self.slots == 1 else f"{self.slots} local processes"
        return f"{where}, {o.run_threads} thread(s) each"

    def check(self, cwd: str, out_root: str, data_roots: Sequence[str]) -> list[str]:
        return [f"{self.host}: {p}" for p in reach_problems(cwd, out_root, data_roots)]

    def run(self, todo: Sequence[SweepRun], finished: Finished) -> None:
        cwd = os.getcwd()
        if self.slots == 1:
            for r in todo:
                res = execute(r.config.to_dict(), threads=self.options.run_threads, cwd=cwd)
                finished(r, res)
            return
        queue = deque(todo)
        attempts = {r.run_dir: 0 for r in todo}
        while queue:
            self._pool_round(queue, attempts, cwd, finished)

    def _pool_round(
        self, queue: deque[SweepRun], attempts: dict, cwd: str, finished: Finished
    ) -> None:
        """Train from ``queue`` in one pool until it is empty or the pool breaks; the runs a
        broken pool held go back to the front of ``queue`` (or fail past the retry bound)."""
        pool = ProcessPoolExecutor(self.slots, mp_context=get_context("spawn"))
        running: dict[Future, SweepRun] = {}
        try:
            while queue or running:
                while queue and len(running) < self.slots:
                    r = queue.popleft()
                    fut = pool.submit(
                        execute, r.config.to_dict(), threads=self.options.run_threads, cwd=cwd
                    )
                    running[fut] = r
                ready, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in ready:
                    r = running.pop(fut)
                    try:
                        finished(r, fut.result())
                    except BrokenProcessPool:
                        running[fut] = r  # with the other runs of the broken pool, below
                        raise
        except BrokenProcessPool:
            for r in reversed(list(running.values())):
                attempts[r.run_dir] += 1
                if attempts[r.run_dir] > self.options.max_retries:
                    error = f"its worker process died {attempts[r.run_dir]} time(s)"
                    finished(r, {"ok": False, "error": error, "node": self.host})
                else:
                    queue.appendleft(r)
        except BaseException:
            _interrupt_workers()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        pass


def _interrupt_workers() -> None:
    """Ctrl-C for the workers too (a terminal sends it to them; ``kill -INT`` does not), so
    that each stops its run at once; every file they write is replaced atomically."""
    for child in active_children():
        if child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGINT)

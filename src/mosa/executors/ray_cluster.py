"""The ``ray`` executor: each run is a Ray task (``pip install 'mosa[ray]'``).

Ray Core tasks rather than Ray Tune: the grid and its selection rule are ours (learning rate
chosen on val, then more seeds), and the run folder already holds everything Tune would
keep (config, metrics, checkpoints, summary). A task asks for ``cpus_per_run`` CPUs and
``gpus_per_run`` GPUs; Ray runs it again when its worker or node dies (``max_retries``),
never when the run fails by itself (that comes back as a result, not an exception).

Without an address a local instance starts that listens on 127.0.0.1 only, with Ray's token
authentication on. With ``ray_address`` the driver joins that cluster, whose nodes must see
the grid's folders (and the driver's working folder) at the same paths.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from mosa.executors.options import ExecutorOptions, Finished, GridError, Log
from mosa.executors.worker import execute, reach_problems
from mosa.recipes.sweep import SweepRun

__all__ = ["RayExecutor"]

INTERRUPT_GRACE_S = 30.0


def _import_ray(local: bool) -> Any:
    if local:
        # Ray advertises (and binds its servers to) the machine's address unless told that
        # clusters are off: then a local instance uses 127.0.0.1 only
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ["RAY_AUTH_MODE"] = "token"
        # the instance exists for this grid alone: its runs get the priority the local
        # executor's get, not 15 below them (Ray's default worker niceness; docs/faq.md)
        os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        import ray
    except ImportError:
        raise GridError(
            "--executor ray needs Ray: pip install 'mosa[ray]' (or pip install ray)"
        ) from None
    return ray


def _node_name(ray: Any) -> str:
    return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"


def _train_task(config: dict[str, Any], threads: int, cwd: str) -> dict[str, Any]:
    import ray

    return execute(config, threads=threads, cwd=cwd, node=_node_name(ray))


def _check_task(cwd: str, out_root: str, data_roots: list[str]) -> list[str]:
    import ray

    node = _node_name(ray)
    return [f"{node}: {p}" for p in reach_problems(cwd, out_root, data_roots)]


class RayExecutor:
    """Runs as Ray tasks on a local instance or a cluster; see the module docstring."""

    def __init__(self, options: ExecutorOptions, log: Log) -> None:
        self.options = options
        local = not options.ray_address
        self.ray = ray = _import_ray(local)
        start = time.perf_counter()
        try:
            if local:
                ray.init(
                    num_cpus=math.ceil(options.jobs * (options.cpus_per_run or 1)),
                    include_dashboard=False,
                    log_to_driver=False,
                    _node_ip_address="127.0.0.1",
                )
            else:
                ray.init(address=options.ray_address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise GridError(f"cannot start or join Ray at {options.ray_address}: {e}") from None
        self.startup_s = time.perf_counter() - start
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.nodes = nodes
        self.slots = max(1, sum(self._fits(n.get("Resources", {})) for n in nodes))
        where = "local instance (127.0.0.1)" if local else options.ray_address
        log(f"ray: {where} ready in {self.startup_s:.1f}s, {len(nodes)} node(s)")

    def _fits(self, resources: dict[str, float]) -> int:
        """How many runs fit on a node with ``resources`` at once."""
        o = self.options
        counts = []
        if o.cpus_per_run > 0:
            counts.append(int(resources.get("CPU", 0) // o.cpus_per_run))
        if o.gpus_per_run > 0:
            counts.append(int(resources.get("GPU", 0) // o.gpus_per_run))
        return min(counts) if counts else 1

    def describe(self) -> str:
        o = self.options
        per = f"{o.cpus_per_run:g} CPU" + (f", {o.gpus_per_run:g} GPU" if o.gpus_per_run else "")
        return f"ray, {len(self.nodes)} node(s), {self.slots} at once ({per} per run)"

    def check(self, cwd: str, out_root: str, data_roots: Sequence[str]) -> list[str]:
        """Every alive node checks the folders itself (a task pinned to it, no CPU held)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = self.ray.remote(_check_task)
        refs = [
            task.options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
            ).remote(cwd, out_root, list(data_roots))
            for n in self.nodes
        ]
        return [p for problems in self.ray.get(refs) for p in problems]

    def run(self, todo: Sequence[SweepRun], finished: Finished) -> None:
        o, ray = self.options, self.ray
        task = ray.remote(_train_task).options(
            num_cpus=o.cpus_per_run,
            num_gpus=o.gpus_per_run,
            max_retries=o.max_retries,
            retry_exceptions=False,
        )
        cwd = os.getcwd()
        threads = o.threads or max(1, int(o.cpus_per_run))
        pending = {task.remote(r.config.to_dict(), threads, cwd): r for r in todo}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    finished(pending.pop(ref), self._result(ref))
        except BaseException:
            for ref in pending:
                ray.cancel(ref)  # KeyboardInterrupt inside the run: it stops at once
            ray.wait(list(pending), num_returns=len(pending), timeout=INTERRUPT_GRACE_S)
            raise

    def _result(self, ref: Any) -> dict[str, Any]:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            # the worker or node died more than max_retries times, or the task could not
            # even start there (mosa missing on that node): not a result of the run
            text = " ".join(str(e).split())[:300]
            return {"ok": False, "error": f"{type(e).__name__}: {text}"}

    def close(self) -> None:
        self.ray.shutdown()

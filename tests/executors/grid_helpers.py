"""Real grids on real data for the executor tests: the digits task cut small, a sweep
command, and what the tests need to watch and kill processes (Linux ``/proc``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from mosa.data.prepare import prepare_tasks

# 4 runs of the embedded ViT on 160 digits images (MoSA's routing generators must resume
# exactly too): a few seconds per epoch on a 2-core CPU, long enough to kill a worker between
# two checkpoints
GRID = ("--config", "offline/_base", "--tasks", "digits", "--methods", "adapter,mosa",
        "--seeds", "0,1")  # fmt: skip
RUNS = 4
EPOCHS = 6


@pytest.fixture(scope="session")
def small_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    prepare_tasks(root, ["digits"], seed=0, limit=160)
    return root


def sweep_argv(data: Path, out: Path, *extra: str, grid: Sequence[str] = GRID) -> list[str]:
    """``mosa sweep`` of ``grid`` (1 thread per run: results independent of placement)."""
    return [
        sys.executable, "-m", "mosa", "sweep", *grid, "--out", str(out), "--threads", "1",
        f"data.root={data}", f"optim.epochs={EPOCHS}", "optim.warmup_epochs=1",
        "optim.batch_size=32", *extra,
    ]  # fmt: skip


def in_flight_with_checkpoint(out: Path, before_epoch: int = EPOCHS - 2) -> list[Path]:
    """Run folders holding a checkpoint of an epoch before ``before_epoch`` and no summary:
    started, and far enough from their end to be caught still running."""
    found = []
    for p in out.glob("**/last/state.json"):
        try:
            epoch = json.loads(p.read_text())["epoch"]
        except (OSError, ValueError, KeyError):
            continue  # replaced while we read it
        if epoch < before_epoch and not (p.parent.parent / "summary.json").exists():
            found.append(p.parent.parent)
    return found


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children ...), from ``/proc``."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_all(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def adapters(out: Path) -> dict[str, bytes]:
    """Run folder (relative) -> the bytes of its adapter weights."""
    return {
        str(p.parent.relative_to(out)): (p.parent / "adapter" / "adapter.safetensors").read_bytes()
        for p in sorted(out.glob("**/summary.json"))
    }


def run_to_end(argv: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr

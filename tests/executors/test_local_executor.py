"""The local executor on real runs: a worker killed mid-run is replaced and its run resumes;
the results equal a serial sweep's, byte for byte."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from grid_helpers import (
    EPOCHS,
    RUNS,
    adapters,
    descendants,
    in_flight_with_checkpoint,
    kill_all,
    run_to_end,
    small_digits,
    sweep_argv,
    wait_for,
)

pytestmark = pytest.mark.slow
__all__ = ["small_digits"]  # a fixture


def test_a_killed_worker_is_replaced_and_its_run_resumes(small_digits: Path, tmp_path: Path):
    out = tmp_path / "pool"
    log = (tmp_path / "pool.log").open("w")
    sweep = subprocess.Popen(
        sweep_argv(small_digits, out, "--jobs", "2"), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: in_flight_with_checkpoint(out), 300, "a run with a checkpoint")
        kill_all(descendants(sweep.pid))  # the pool's workers (and whatever they started)
        assert sweep.wait(timeout=600) == 0, (tmp_path / "pool.log").read_text()
    finally:
        sweep.kill()
    text = (tmp_path / "pool.log").read_text()
    summaries = {p.parent: json.loads(p.read_text()) for p in out.glob("**/summary.json")}
    assert len(summaries) == RUNS, text
    resumed = {d: s for d, s in summaries.items() if s["resumed_from_epoch"]}
    assert resumed, text  # a killed run continued from its checkpoint, not from scratch
    for run_dir, s in resumed.items():
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        epochs = [json.loads(ln) for ln in lines]
        assert [e["epoch"] for e in epochs] == list(range(1, EPOCHS + 1))
        assert epochs[-1]["resumed_from_epoch"] == s["resumed_from_epoch"]
    serial = tmp_path / "serial"
    run_to_end(sweep_argv(small_digits, serial, "--jobs", "1"))
    assert adapters(out) == adapters(serial) and len(adapters(out)) == RUNS
    assert not list(out.glob("**/.last.tmp-*"))  # what the killed worker was writing is gone

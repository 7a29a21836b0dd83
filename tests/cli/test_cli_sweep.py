"""Sweep grid, folder naming, skip / resume after a kill, config-mismatch refusal."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import mosa.engine
from mosa.cli.main import main
from mosa.config import ConfigError
from mosa.recipes.sweep import (
    LOCK_NAME,
    lock_state,
    plan_sweep,
    run_dir_name,
    run_one,
    run_status,
    run_sweep,
)


class FakeTrain:
    """Stands in for mosa.engine.train: records calls, writes what the engine would write.

    ``kill_at``: the n-th call writes a ``last/`` checkpoint and then dies (as a killed job)."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.kill_at = kill_at

    def __call__(self, config, *, model=None, datasets=None, resume=False):
        out = Path(config.out)
        self.calls.append((str(out), resume))
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict()))
        (out / "last").mkdir(exist_ok=True)
        (out / "last" / "state.json").write_text("{}")
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            raise KeyboardInterrupt
        summary = {"test_acc": 0.5 + 0.01 * config.seed, "val_acc": config.optim.lr}
        (out / "summary.json").write_text(json.dumps(summary))
        return summary


def plan(tmp_path, **kw):
    axes = {"tasks": ["digits", "fmnist_rot"], "methods": ["mosa", "linear"], "seeds": [0, 1]}
    axes.update(kw)
    return plan_sweep(["offline/_base"], ["optim.epochs=2", "optim.warmup_epochs=0"],
                      out=tmp_path, **axes)  # fmt: skip


def test_plan_is_the_full_grid_with_deterministic_folders(tmp_path):
    runs = plan(tmp_path, lrs=[1e-3, 5e-3])
    assert len(runs) == 2 * 2 * 2 * 2
    rels = {r.run_dir.relative_to(tmp_path).as_posix() for r in runs}
    assert "digits/mosa/lr0.001/seed0" in rels and "fmnist_rot/linear/lr0.005/seed1" in rels
    r = next(r for r in runs if r.run_dir == tmp_path / "fmnist_rot/linear/lr0.005/seed1")
    c = r.config
    assert (c.data[0].task, c.method.method, c.optim.lr, c.seed, c.method.seed) == (
        "fmnist_rot",
        "linear",
        0.005,
        1,
        1,
    )
    assert c.optim.epochs == 2 and c.out == str(r.run_dir)
    assert [x.run_dir for x in plan(tmp_path, lrs=[1e-3, 5e-3])] == [x.run_dir for x in runs]


def test_shots_add_a_folder_level_and_set_data_shots(tmp_path):
    runs = plan(tmp_path, tasks=["digits"], methods=["mosa"], seeds=[0], shots=[1, 4])
    assert [r.run_dir.relative_to(tmp_path).as_posix() for r in runs] == [
        "digits/mosa/shots1/lr0.01/seed0",
        "digits/mosa/shots4/lr0.01/seed0",
    ]
    assert [r.config.data[0].shots for r in runs] == [1, 4]
    assert run_dir_name("t", "m", 5e-4, 3, 2) == "t/m/shots2/lr0.0005/seed3"


def test_task_uses_the_sibling_recipe_when_there_is_one(tmp_path):
    runs = plan_sweep(["fgvc/_base"], [], out=tmp_path, tasks=["cub", "stanford_cars"])
    cub, cars = (r.config for r in runs)
    assert (cub.data[0].task, cub.optim.lr) == ("cub", pytest.approx(1e-3))
    assert (cars.method.num_experts, cars.method.share) == (2, "up")


def test_axes_without_values_keep_the_config(tmp_path):
    runs = plan_sweep(["offline/fmnist_rot"], ["seed=7"], out=tmp_path)
    assert len(runs) == 1
    assert runs[0].run_dir == tmp_path / "fmnist_rot/mosa/lr0.01/seed7"


def test_killed_sweep_resumes_and_skips_finished_runs(tmp_path):
    runs = plan(tmp_path)
    assert all(run_status(r.run_dir) == "new" for r in runs)
    killer = FakeTrain(kill_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(runs, train_fn=killer, log=lambda s: None)
    assert [resume for _, resume in killer.calls] == [False, False, False]
    assert [run_status(r.run_dir) for r in runs[:4]] == ["done", "done", "resume", "new"]

    again = FakeTrain()
    result = run_sweep(runs, train_fn=again, log=lambda s: None, manifest=tmp_path / "sweep.json")
    assert len(again.calls) == len(runs) - 2  # the two finished runs are not trained again
    assert again.calls[0] == (str(runs[2].run_dir), True)  # the killed one resumes
    assert all(not resume for _, resume in again.calls[1:])
    assert (len(result.done), len(result.resumed), len(result.trained)) == (2, 1, 5)
    manifest = json.loads((tmp_path / "sweep.json").read_text())
    assert {r["status"] for r in manifest["runs"]} == {"done"}

    third = FakeTrain()
    run_sweep(runs, train_fn=third, log=lambda s: None)
    assert third.calls == []  # nothing left to do


def test_keep_going_records_failures(tmp_path):
    runs = plan(tmp_path, tasks=["digits"], methods=["mosa"])
    calls = []

    def flaky(config, *, resume=False, **kw):
        calls.append(config.seed)
        if config.seed == 0:
            raise RuntimeError("boom")
        return FakeTrain()(config, resume=resume)

    result = run_sweep(runs, train_fn=flaky, keep_going=True, log=lambda s: None)
    assert calls == [0, 1]
    assert list(result.failed.values()) == ["RuntimeError: boom"]
    with pytest.raises(RuntimeError, match="boom"):
        run_sweep(runs, train_fn=flaky, log=lambda s: None)


def test_a_folder_with_another_config_is_refused(tmp_path):
    (r,) = plan(tmp_path, tasks=["digits"], methods=["mosa"], seeds=[0])
    FakeTrain()(r.config)
    (changed,) = plan_sweep(
        ["offline/_base"], ["optim.epochs=3", "optim.warmup_epochs=0"], out=tmp_path,
        tasks=["digits"], methods=["mosa"], seeds=[0],
    )  # fmt: skip
    with pytest.raises(ConfigError, match="another config.*optim"):
        run_one(changed.config, train_fn=FakeTrain())
    status, summary = run_one(r.config, train_fn=FakeTrain())
    assert status == "done" and summary["test_acc"] == pytest.approx(0.5)


def test_cli_sweep_runs_grid_then_skips(tmp_path, monkeypatch, capsys):
    fake = FakeTrain()
    monkeypatch.setattr(mosa.engine, "train", fake, raising=False)
    argv = ["sweep", "--config", "offline/_base", "--tasks", "digits,fmnist_rot",
            "--methods", "mosa", "--seeds", "0,1", "--out", str(tmp_path),
            "optim.epochs=1", "optim.warmup_epochs=0"]  # fmt: skip
    assert main(argv) == 0
    assert len(fake.calls) == 4
    assert main(argv) == 0
    assert len(fake.calls) == 4  # second invocation: everything skipped
    assert "0 trained, 0 resumed, 4 already done" in capsys.readouterr().out
    assert main([*argv, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.startswith("done") for line in lines)


def _lock(run_dir: Path, pid: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": socket.gethostname(), "since": 0}
    (run_dir / LOCK_NAME).write_text(json.dumps(holder))


def test_runs_locked_by_a_live_process_are_left_to_it(tmp_path):
    runs = plan(tmp_path, tasks=["digits"], methods=["mosa"])
    _lock(runs[0].run_dir, os.getppid())  # alive: the process that started pytest
    assert lock_state(runs[0].run_dir) == "running" and lock_state(runs[1].run_dir) is None
    fake = FakeTrain()
    result = run_sweep(runs, train_fn=fake, log=lambda s: None)
    assert result.busy == [runs[0].run_dir]
    assert [c for c, _ in fake.calls] == [str(runs[1].run_dir)]
    assert not (runs[1].run_dir / LOCK_NAME).exists()  # released after the run
    assert (runs[0].run_dir / LOCK_NAME).exists()  # someone else's: untouched


def test_a_lock_of_a_killed_sweep_is_taken_over(tmp_path):
    runs = plan(tmp_path, tasks=["digits"], methods=["mosa"], seeds=[0])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock(runs[0].run_dir, dead.pid)
    assert lock_state(runs[0].run_dir) == "stale"
    fake = FakeTrain()
    result = run_sweep(runs, train_fn=fake, log=lambda s: None)
    assert result.trained == [runs[0].run_dir] and result.busy == []
    assert not (runs[0].run_dir / LOCK_NAME).exists()


def test_lock_is_released_when_a_run_fails(tmp_path):
    runs = plan(tmp_path, tasks=["digits"], methods=["mosa"], seeds=[0])

    def boom(config, **kw):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(runs, train_fn=boom, log=lambda s: None)
    assert not (runs[0].run_dir / LOCK_NAME).exists()

"""Sweep grid, folder naming, skip / resume after a kill, config-mismatch refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mosa.engine
from mosa.cli.main import main
from mosa.config import ConfigError
from mosa.executors import run_grid, run_one, run_status
from mosa.recipes.sweep import plan_sweep, run_dir_name


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
    data = _data_root(tmp_path)
    return plan_sweep(["offline/_base"], ["optim.epochs=2", "optim.warmup_epochs=0",
                      f"data.root={data}"], out=tmp_path, **axes)  # fmt: skip


def _data_root(tmp_path: Path) -> Path:
    """An existing data folder: every worker checks it can read the data before training."""
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    return root


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


def _quiet(text: str) -> None:
    pass


def test_killed_sweep_resumes_and_skips_finished_runs(tmp_path, monkeypatch):
    runs = plan(tmp_path)
    assert all(run_status(r.run_dir) == "new" for r in runs)
    killer = FakeTrain(kill_at=3)
    monkeypatch.setattr(mosa.engine, "train", killer)
    with pytest.raises(KeyboardInterrupt):
        run_grid(runs, log=_quiet)
    assert [resume for _, resume in killer.calls] == [False, False, False]
    assert [run_status(r.run_dir) for r in runs[:4]] == ["done", "done", "resume", "new"]

    again = FakeTrain()
    monkeypatch.setattr(mosa.engine, "train", again)
    result = run_grid(runs, log=_quiet, manifest=tmp_path / "sweep.json")
    assert len(again.calls) == len(runs) - 2  # the two finished runs are not trained again
    assert again.calls[0] == (str(runs[2].run_dir), True)  # the killed one resumes
    assert all(not resume for _, resume in again.calls[1:])
    counts = [len(result.having(s)) for s in ("done", "resumed", "trained", "failed")]
    assert counts == [2, 1, 5, 0]
    manifest = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["status"] for r in manifest["runs"]] == ["done"] * 2 + ["resumed"] + ["trained"] * 5

    third = FakeTrain()
    monkeypatch.setattr(mosa.engine, "train", third)
    run_grid(runs, log=_quiet)
    assert third.calls == []  # nothing left to do


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, monkeypatch):
    runs = plan(tmp_path, tasks=["digits"], methods=["mosa"])
    calls = []

    def flaky(config, *, resume=False, **kw):
        calls.append(config.seed)
        if config.seed == 0:
            raise RuntimeError("boom\nsecond line")
        return FakeTrain()(config, resume=resume)

    monkeypatch.setattr(mosa.engine, "train", flaky)
    lines: list[str] = []
    result = run_grid(runs, log=lines.append, manifest=tmp_path / "sweep.json")
    assert calls == [0, 1]
    assert [o.error for o in result.failed] == ["RuntimeError: boom second line"]
    assert [o.run.seed for o in result.having("trained")] == [1]
    assert any("FAILED (RuntimeError: boom second line)" in ln for ln in lines)
    rows = json.loads((tmp_path / "sweep.json").read_text())["runs"]
    assert [(r["status"], r.get("error")) for r in rows] == [
        ("failed", "RuntimeError: boom second line"),
        ("trained", None),
    ]
    with pytest.raises(Exception, match="1 run\\(s\\) failed: .*seed0 \\(RuntimeError: boom"):
        result.raise_for_failures()


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
            "optim.epochs=1", "optim.warmup_epochs=0",
            f"data.root={_data_root(tmp_path)}"]  # fmt: skip
    assert main(argv) == 0
    assert len(fake.calls) == 4
    assert main(argv) == 0
    assert len(fake.calls) == 4  # second invocation: everything skipped
    assert "0 trained, 0 resumed, 4 already done" in capsys.readouterr().out
    assert main([*argv, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.startswith("done") for line in lines)


def test_cli_sweep_exits_1_naming_the_failed_run(tmp_path, monkeypatch, capsys):
    def nan_stop(config, **kw):
        raise mosa.engine.TrainingDivergedError(1, 3, 3, float("nan"), 0.01, run=config.out)

    monkeypatch.setattr(mosa.engine, "train", nan_stop, raising=False)
    argv = ["sweep", "--config", "offline/_base", "--tasks", "digits", "--seeds", "0",
            "--out", str(tmp_path), "optim.epochs=1", "optim.warmup_epochs=0",
            f"data.root={_data_root(tmp_path)}"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "failed " in err and "digits/mosa/lr0.01/seed0: TrainingDivergedError" in err


def test_an_old_sweeps_lock_file_does_not_stop_a_resume(tmp_path, monkeypatch):
    (r,) = plan(tmp_path, tasks=["digits"], methods=["mosa"], seeds=[0])
    r.run_dir.mkdir(parents=True)
    (r.run_dir / "last").mkdir()
    (r.run_dir / "last" / "state.json").write_text("{}")
    # what mosa 0.1's sweep left behind when it was killed: a lock naming a live process
    (r.run_dir / ".sweep.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    fake = FakeTrain()
    monkeypatch.setattr(mosa.engine, "train", fake)
    result = run_grid([r], log=_quiet)
    assert fake.calls == [(str(r.run_dir), True)]
    assert [o.status for o in result.outcomes] == ["resumed"]


def test_a_folder_the_machine_cannot_write_stops_the_grid_before_training(
    tmp_path, monkeypatch, capsys
):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the output folder should go: nothing can be made there
    fake = FakeTrain()
    monkeypatch.setattr(mosa.engine, "train", fake, raising=False)
    argv = ["sweep", "--config", "offline/_base", "--tasks", "digits", "--seeds", "0",
            "--out", str(blocker / "runs"), "optim.epochs=1", f"data.root={_data_root(tmp_path)}"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot run the grid" in err and "cannot write to" in err and str(blocker) in err
    assert fake.calls == []

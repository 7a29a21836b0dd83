"""The study's protocol: val chooses every learning rate and the best MoSA, test never does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mosa.bench import study
from mosa.executors import worker


def _fake_run_one(calls: list[dict[str, Any]]):
    # val prefers the LARGEST lr of a grid and N=2 experts; test prefers the opposite, so a
    # study that peeks at test would choose other learning rates and another best MoSA
    def run_one(config):
        lr = config.optim.lr
        grid = study.LONG_LRS if config.optim.epochs == 24 else study.SHORT_LRS
        top = lr == max(grid)
        n2 = config.method.is_mosa and config.method.num_experts == 2
        calls.append({"lr": lr, "seed": config.seed, "out": config.out})
        summary = {
            "val_acc": (0.8 if top else 0.6) + (0.1 if n2 else 0.0),
            "test_acc": (0.5 if top else 0.9) - (0.2 if n2 else 0.0) + 0.01 * config.seed,
            "final_train_acc": 1.0,
            "params": {"trainable": 10},
            "wall_time_s": 1.0,
        }
        Path(config.out).mkdir(parents=True)  # as the engine does: a finished run's folder
        (Path(config.out) / "summary.json").write_text(json.dumps(summary))
        return "new", summary

    return run_one


def test_study_chooses_on_val_and_writes_every_cell(tmp_path: Path, monkeypatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(worker, "run_one", _fake_run_one(calls))
    (tmp_path / "data" / "t1").mkdir(parents=True)
    argv = ["--data-root", str(tmp_path / "data"), "--tasks", "t1", "--jobs", "1"]
    assert study.main([*argv, "--out", str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "study.json").read_text())
    recs = res["records"]
    cells = {(r["setting"], r["variant"]) for r in recs}
    for setting, variants in study.BLOCKS:
        assert {(setting, v.name) for v in variants} <= cells
    for r in recs:  # the val winner of its grid, with the grid's val accuracies kept
        grid = study.SETTINGS[r["setting"]].lrs
        assert r["lr"] == max(grid), r
        # val chose the grid's top end, so the grid grew past it once (and val kept its choice)
        assert set(r["val_by_lr"]) == {f"{lr:g}" for lr in (*grid, 2 * max(grid))}
        for key in ("val_acc", "test_acc", "seed", "lr", "run_dir"):
            assert r[key] is not None
    # the best MoSA combines exactly the knob that won on val, and reached the final seeds
    best = [r for r in recs if r["variant"] == "mosa_best"]
    assert best and all(r["overrides"] == ["method.num_experts=2"] for r in best)
    finals = {"adapter", "adapter_cons", "mosa_paper", "mosa_best"}
    seeds = {(r["variant"], r["seed"]) for r in recs if r["setting"] == "base"}
    assert {(v, s) for v in finals for s in (0, 1, 2)} <= seeds
    # no run trained twice, and seeds > 0 only at the chosen learning rate
    outs = [c["out"] for c in calls]
    assert len(outs) == len(set(outs))
    assert all(c["lr"] == max(study.SHORT_LRS) for c in calls if c["seed"] > 0)
    rows = {(r["setting"], r["variant"]): r for r in res["rows"]}
    assert rows[("base", "mosa_best")]["gap_test"] < 0  # reported, though test disagrees
    assert rows[("base", "mosa_best")]["seeds"] == 3
    assert (tmp_path / "out" / "study.png").stat().st_size > 1000
    assert "mosa_best" in (tmp_path / "out" / "study.md").read_text()
    # resumable: a second invocation trains nothing
    n = len(calls)
    assert study.main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert len(calls) == n

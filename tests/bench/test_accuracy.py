"""The accuracy benchmark's protocol: selection on val only, seeds at the chosen lr, outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mosa.bench import accuracy
from mosa.bench.accuracy_report import render_markdown, summarise
from mosa.cli.bench import accuracy as accuracy_cli
from mosa.data.prepare import prepare_tasks
from mosa.executors import ExecutorOptions, worker

# the protocol tests use their own grids, so they do not change with the shipped LR_GRID
GRID: dict[str, tuple[float, ...]] = {m: (1e-3, 3e-3, 1e-2) for m in accuracy.METHODS}


def _fake_run_one(calls: list[dict[str, Any]]):
    # val prefers the LARGER lr, test prefers the SMALLER one: a protocol that peeks at test
    # would pick the other learning rate
    def run_one(config):
        lr = config.optim.lr
        grid = GRID[config.method.method]
        big = lr == max(grid)
        calls.append({"lr": lr, "seed": config.seed, "method": config.method.method})
        summary = {
            "val_acc": 0.8 if big else 0.6,
            "test_acc": (0.5 if big else 0.9) + 0.01 * config.seed,
            "params": {"trainable": 123, "total": 1000},
            "wall_time_s": 1.0,
        }
        return "new", summary

    return run_one


def _protocol(root: Path, tasks: tuple[str, ...], methods: tuple[str, ...]) -> accuracy.Protocol:
    root.mkdir(parents=True, exist_ok=True)  # every worker checks that it can read the data
    return accuracy.Protocol(
        tasks=tasks,
        methods=methods,
        seeds=(0, 1, 2),
        epochs=1,
        warmup_epochs=0,
        batch_size=8,
        bottleneck=4,
        lr_grid={m: GRID[m] for m in methods},
        data_root=str(root),
    )


def test_learning_rate_is_chosen_on_val_never_on_test(tmp_path, monkeypatch):
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(worker, "run_one", _fake_run_one(calls))
    protocol = _protocol(tmp_path / "data", ("t1", "t2"), ("adapter", "mosa"))
    records = accuracy.run_protocol(
        protocol, tmp_path / "out", options=ExecutorOptions(jobs=1), log=lambda s: None
    )
    # selection: 2 tasks x 2 methods x 3 lrs at seed 0; then 2 more seeds per cell
    assert len(calls) == 2 * 2 * 3 + 2 * 2 * 2
    assert len(records) == 2 * 2 * 3
    for rec in records:
        assert rec["lr"] == max(GRID[rec["method"]])  # the val winner
        assert rec["val_acc"] == 0.8
        assert rec["hyperparameters"]["val_by_lr"] == {
            f"{lr:g}": (0.8 if lr == max(GRID[rec["method"]]) else 0.6)
            for lr in GRID[rec["method"]]
        }
    seeds_at_small_lr = [c for c in calls if c["seed"] > 0 and c["lr"] != max(GRID[c["method"]])]
    assert not seeds_at_small_lr


def test_summary_means_and_group_means():
    recs = []
    for task, _group, accs in (
        ("a", "natural", (0.5, 0.7)),
        ("b", "structured", (0.9, 0.9)),
        ("c", "structured", (0.1, 0.3)),
    ):
        for seed, acc in enumerate(accs):
            recs.append(
                {"task": task, "method": "mosa", "seed": seed, "lr": 1e-3, "test_acc": acc, "val_acc": acc,
                 "trainable_params": 10, "wall_s": 2.0}
            )  # fmt: skip
    groups = {"a": "natural", "b": "structured", "c": "structured"}
    table = summarise(recs, groups)
    cell = table["tasks"]["a"]["methods"]["mosa"]
    assert cell["test_mean"] == pytest.approx(60.0)
    assert cell["test_std"] == pytest.approx(14.1421356, rel=1e-6)
    means = table["means"]["mosa"]
    assert means["task_mean"] == pytest.approx((60 + 90 + 20) / 3)
    assert means["group_means"] == {
        "natural": pytest.approx(60.0),
        "structured": pytest.approx(55.0),
    }
    assert means["mean_of_group_means"] == pytest.approx(57.5)
    md = render_markdown(
        table, {"seeds": [0, 1], "epochs": 1, "bottleneck_and_rank": 4, "backbone": "x"}
    )
    assert "| a | natural | 60.0 ± 14.1 |" in md
    assert "57.5" in md


def test_task_mean_seed_spread_and_gap_paired_by_seed():
    # seed 0 is hard for every method, seed 1 easy: a paired gap sees through that
    tests = {"adapter": ((0.5, 0.7), (0.6, 0.8)), "mosa": ((0.4, 0.7), (0.6, 0.7))}
    recs = [
        {"task": task, "method": m, "seed": seed, "lr": 1e-3, "test_acc": by_task[t][seed],
         "val_acc": 0.5, "trainable_params": 10, "wall_s": 1.0}
        for m, by_task in tests.items() for t, task in enumerate("ab") for seed in (0, 1)
    ]  # fmt: skip
    recs.append({**recs[-1], "task": "a", "method": "mosa", "seed": 2, "test_acc": 0.9})
    table = summarise(recs, {})
    adapter, mosa = table["means"]["adapter"], table["means"]["mosa"]
    assert adapter["task_mean_by_seed"] == {"0": pytest.approx(55.0), "1": pytest.approx(75.0)}
    assert adapter["task_mean_std"] == pytest.approx(14.1421356, rel=1e-6)
    # seed 2 ran one task of two: it has no task mean and pairs with nothing
    assert mosa["task_mean_by_seed"] == {"0": pytest.approx(50.0), "1": pytest.approx(70.0)}
    assert "task_mean_std" not in mosa  # its task mean also counts seed 2: no mixed spread
    assert mosa["gap_vs_adapter"] == pytest.approx(-5.0)
    assert mosa["gap_vs_adapter_std"] == pytest.approx(0.0, abs=1e-9)
    assert "gap_vs_adapter" not in adapter and "gap_vs_lora" not in mosa
    md = render_markdown(
        table, {"seeds": [0, 1], "epochs": 1, "bottleneck_and_rank": 4, "backbone": "x"}
    )
    assert "| **mean over tasks** | | **65.0 ± 14.1** |" in md
    assert "| − adapter (paired by seed) | | — | -5.0 ± 0.0 |" in md
    assert "| − lora" not in md


@pytest.mark.slow
def test_end_to_end_on_prepared_tasks(tmp_path, data_missing):
    try:
        prepare_tasks(tmp_path / "data", ["digits"], seed=0)
    except FileNotFoundError as e:  # Fashion-MNIST missing
        data_missing(str(e))
    out = tmp_path / "out"
    argv = ["--data-root", str(tmp_path / "data"), "--tasks", "digits",
            "--methods", "linear,mosa", "--seeds", "0,1", "--epochs", "1", "--jobs", "1",
            "--lrs", "0.01,0.003",
            "--batch-size", "64", "--out", str(out)]  # fmt: skip
    assert accuracy_cli.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["lr_grid"] == {"linear": [0.003, 0.01], "mosa": [0.003, 0.01]}
    assert len(res["records"]) == 1 * 2 * 2
    for rec in res["records"]:
        for key in ("task", "method", "seed", "test_acc", "val_acc", "trainable_params", "wall_s"):
            assert rec[key] is not None, key
        assert 0.0 <= rec["test_acc"] <= 1.0
    assert (out / "results.md").read_text().startswith("Test top-1")
    assert (out / "results.png").stat().st_size > 1000
    # a second invocation finds every run finished and trains nothing
    assert accuracy_cli.main(argv) == 0
    with pytest.raises(SystemExit, match="--lrs wants numbers"):
        accuracy_cli.main([*argv, "--lrs", "fast"])


def test_every_method_has_a_grid():
    assert set(accuracy.LR_GRID) == set(accuracy.METHODS)
    assert all(list(g) == sorted(g) for g in accuracy.LR_GRID.values())  # ties keep the smaller


def test_the_first_seeds_table_is_handed_over_before_the_seed_phase(tmp_path, monkeypatch):
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(worker, "run_one", _fake_run_one(calls))
    protocol = _protocol(tmp_path / "data", ("t1",), ("adapter", "mosa"))
    seen: list[tuple[int, list[dict[str, Any]]]] = []

    def on_selection(records: list[dict[str, Any]]) -> None:
        seen.append((len(calls), records))

    accuracy.run_protocol(
        protocol,
        tmp_path / "out",
        options=ExecutorOptions(jobs=1),
        log=lambda s: None,
        on_selection=on_selection,
    )
    ((calls_then, first),) = seen
    assert calls_then == 1 * 2 * 3  # only the selection runs had trained
    assert [(r["method"], r["seed"], r["lr"]) for r in first] == [
        ("adapter", 0, max(GRID["adapter"])),
        ("mosa", 0, max(GRID["mosa"])),
    ]


def test_a_first_seed_table_shows_no_spread_and_says_it_is_partial(tmp_path, monkeypatch):
    monkeypatch.setattr(worker, "run_one", _fake_run_one([]))
    protocol = _protocol(tmp_path / "data", ("t1",), ("adapter",))
    tables: list[str] = []

    def on_selection(records: list[dict[str, Any]]) -> None:
        table = summarise(records, {})
        tables.append(render_markdown(table, accuracy.protocol_dict(protocol)))

    accuracy.run_protocol(
        protocol,
        tmp_path / "out",
        options=ExecutorOptions(jobs=1),
        log=lambda s: None,
        on_selection=on_selection,
    )
    (md,) = tables
    assert "1 seed(s) (so far: the protocol runs 3 seeds)" in md
    assert "±" not in md.split("\n\n")[1]  # the results table itself

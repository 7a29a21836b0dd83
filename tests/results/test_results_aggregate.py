"""Report aggregation on fabricated run folders: mean/std, VTAB conventions, selection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mosa.cli.main import main
from mosa.data.vtab import VTAB_TASKS
from mosa.engine.config import TrainConfig
from mosa.results import ResultsError, build_table, collect_runs, render_markdown, write_report


def fake_run(root: Path, task: str, method: str, seed: int, test, val=None, lr=5e-3, config=True,
             train_size=None, sub=""):  # fmt: skip
    d = root / task / method / sub / f"lr{lr:g}" / f"seed{seed}"
    d.mkdir(parents=True)
    summary = {"test_acc": test, "val_acc": val}
    if train_size is not None:  # as the engine writes it
        summary["tasks"] = {task: {"train_size": train_size, "test_acc": test}}
    (d / "summary.json").write_text(json.dumps(summary))
    if config:
        cfg = TrainConfig.from_dict(
            {"data": {"task": task}, "method": {"method": method, "seed": seed}, "seed": seed,
             "optim": {"lr": lr, "epochs": 10, "warmup_epochs": 0}, "out": str(d)}
        )  # fmt: skip
        (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    return d


GROUP_VALUE = {"natural": 0.70, "specialized": 0.80, "structured": 0.50}


def vtab_runs(root: Path, methods=("mosa",), skip=()) -> None:
    """Two seeds per task at value -/+ 1 point: mean = the group's value, std = sqrt(2)."""
    for m in methods:
        for task, (group, _) in VTAB_TASKS.items():
            if (task, m) in skip:
                continue
            v = GROUP_VALUE[group]
            fake_run(root, task, m, 0, v - 0.01)
            fake_run(root, task, m, 1, v + 0.01)


def test_cells_are_mean_and_sample_std_over_seeds(tmp_path):
    for seed, acc in enumerate([0.80, 0.82, 0.87]):
        fake_run(tmp_path, "digits", "mosa", seed, acc)
    fake_run(tmp_path, "digits", "linear", 0, 0.61)
    table = build_table(collect_runs(tmp_path))
    cell = table.cells[("digits", "mosa")]
    assert cell.n == 3
    assert cell.mean == pytest.approx(83.0)  # fractions are shown in percent
    assert cell.std == pytest.approx(math.sqrt((9 + 1 + 16) / 2))  # ddof=1
    assert table.cells[("digits", "linear")].std == 0.0
    assert table.methods == ["linear", "mosa"]  # METHODS order


def test_vtab_task_mean_and_group_mean_differ_as_computed_by_hand(tmp_path):
    vtab_runs(tmp_path, methods=("mosa", "adapter"), skip={("dtd", "adapter")})
    table = build_table(collect_runs(tmp_path))
    assert len(table.rows) == 19
    assert table.rows[0] == "cifar" and table.rows[-1] == "smallnorb_ele"  # VTAB order
    agg = table.aggregates
    assert agg["VTAB natural mean (7 tasks)"]["mosa"] == pytest.approx(70.0)
    assert agg["VTAB specialized mean (4 tasks)"]["mosa"] == pytest.approx(80.0)
    assert agg["VTAB structured mean (8 tasks)"]["mosa"] == pytest.approx(50.0)
    assert agg["VTAB mean (19 tasks)"]["mosa"] == pytest.approx((7 * 70 + 4 * 80 + 8 * 50) / 19)
    assert agg["VTAB mean of 3 group means"]["mosa"] == pytest.approx((70 + 80 + 50) / 3)
    # a method without every task gets no overall mean (it would not be comparable)
    assert agg["VTAB mean (19 tasks)"]["adapter"] is None
    assert agg["VTAB mean of 3 group means"]["adapter"] is None
    assert agg["VTAB specialized mean (4 tasks)"]["adapter"] == pytest.approx(80.0)
    md = render_markdown(table)
    assert "| dtd | ? | natural | — | 70.0 ± 1.4 |" in md  # columns: adapter, mosa
    assert f"| **VTAB mean (19 tasks)** |  |  | — | **{1210 / 19:.1f}** |" in md
    assert "| **VTAB mean of 3 group means** |  |  | — | **66.7** |" in md


def test_offline_tasks_get_their_own_block_and_never_change_the_vtab_means(tmp_path):
    vtab_runs(tmp_path)
    fake_run(tmp_path, "digits", "mosa", 0, 0.10)  # an offline "natural" task
    fake_run(tmp_path, "fmnist_rot", "mosa", 0, 0.30)  # an offline "structured" task
    table = build_table(collect_runs(tmp_path))
    agg = table.aggregates
    assert agg["VTAB mean of 3 group means"]["mosa"] == pytest.approx(200 / 3)
    assert agg["VTAB natural mean (7 tasks)"]["mosa"] == pytest.approx(70.0)
    assert agg["offline mean (2 tasks)"]["mosa"] == pytest.approx(20.0)
    assert agg["offline mean of 2 group means"]["mosa"] == pytest.approx(20.0)
    assert table.rows[-2:] == ["digits", "fmnist_rot"]


def test_setting_is_chosen_on_validation_never_on_test(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path, "dtd", "mosa", seed, test=0.90, val=0.60, lr=1e-3)
        fake_run(tmp_path, "dtd", "mosa", seed, test=0.70, val=0.65, lr=5e-3)
    table = build_table(collect_runs(tmp_path))
    cell = table.cells[("dtd", "mosa")]
    assert cell.lr == pytest.approx(5e-3) and cell.mean == pytest.approx(70.0)
    assert cell.candidates == 2 and cell.n == 2
    assert "Selected settings" in render_markdown(table)


def test_several_settings_without_validation_is_an_error(tmp_path):
    fake_run(tmp_path, "dtd", "mosa", 0, test=0.9, lr=1e-3)
    fake_run(tmp_path, "dtd", "mosa", 0, test=0.7, lr=5e-3)
    with pytest.raises(ResultsError, match="no val_acc"):
        build_table(collect_runs(tmp_path))


def test_runs_without_config_use_summary_keys_or_the_folder(tmp_path):
    fake_run(tmp_path, "eurosat", "lora", 0, 91.5, config=False)  # already in percent
    d = tmp_path / "elsewhere"
    d.mkdir()
    (d / "summary.json").write_text(
        json.dumps({"task": "svhn", "method": "mosa", "test_acc": 88.0})
    )
    table = build_table(collect_runs(tmp_path))
    assert table.cells[("eurosat", "lora")].mean == pytest.approx(91.5)
    assert table.cells[("svhn", "mosa")].mean == pytest.approx(88.0)
    assert table.groups["eurosat"] == "specialized"


def test_write_report_and_cli(tmp_path, capsys):
    runs = tmp_path / "runs"
    vtab_runs(runs)
    out = tmp_path / "out" / "vtab.md"
    table, text, written = write_report(runs, out)
    assert written["markdown"] == out and out.read_text() == text
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dumped = json.loads(out.with_suffix(".json").read_text())
    assert dumped["cells"]["dtd|mosa"]["n"] == 2
    assert "![test top-1" in text

    assert main(["report", str(runs), "--out", str(tmp_path / "r2.md"), "--quiet"]) == 0
    assert (tmp_path / "r2.md").is_file() and (tmp_path / "r2.png").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mosa: error: no run with a test accuracy") and err.count("\n") == 1


def test_multi_task_summaries_give_one_row_per_task(tmp_path):
    d = tmp_path / "mt" / "mosa" / "seed0"
    d.mkdir(parents=True)
    summary = {
        "test_acc": None,
        "method": "mosa",
        "tasks": {"digits": {"test_acc": 0.9, "val_acc": 0.8}, "fmnist_rot": {"test_acc": 0.6}},
    }
    (d / "summary.json").write_text(json.dumps(summary))
    table = build_table(collect_runs(tmp_path))
    assert table.cells[("digits", "mosa")].mean == pytest.approx(90.0)
    assert table.cells[("fmnist_rot", "mosa")].mean == pytest.approx(60.0)


def test_smaller_training_sets_are_rows_of_their_own(tmp_path):
    for seed in (0, 1):
        fake_run(tmp_path, "digits", "mosa", seed, 0.90, train_size=800)
        fake_run(tmp_path, "digits", "mosa", seed, 0.40, train_size=64, sub="small")
    table = build_table(collect_runs(tmp_path))
    assert table.rows == ["digits", "digits (n=64)"]
    assert table.cells[("digits", "mosa")].mean == pytest.approx(90.0)  # not averaged with 40
    assert table.cells[("digits (n=64)", "mosa")].mean == pytest.approx(40.0)
    md = render_markdown(table)
    assert "| digits | 800 | natural | 90.0 ± 0.0 |" in md
    assert "| digits (n=64) | 64 |  | 40.0 ± 0.0 |" in md  # no group mean

"""The study's protocol: val chooses every learning rate and the best MoSA, test never does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mosa.bench import study_plan as plan
from mosa.bench.study import Study
from mosa.bench.study_report import (
    gaps,
    matched_gaps,
    render,
    render_grid_ends,
    render_protocols,
    verdict,
)
from mosa.cli.bench import study as study_cli
from mosa.executors import ExecutorOptions, worker


def _fake_run_one(calls: list[dict[str, Any]]):
    # val prefers the LARGEST lr of a grid and N=2 experts; test prefers the opposite, so a
    # study that peeks at test would choose other learning rates and another best MoSA
    def run_one(config):
        lr = config.optim.lr
        top = lr == max(_grid(config))
        n2 = config.method.is_mosa and config.method.num_experts == 2
        calls.append({"lr": lr, "seed": config.seed, "out": config.out})
        test = (0.5 if top else 0.9) - (0.2 if n2 else 0.0) + 0.01 * config.seed
        summary = {
            "val_acc": (0.8 if top else 0.6) + (0.1 if n2 else 0.0),
            "test_acc": test,
            "final_train_acc": 1.0,
            "params": {"trainable": 10},
            "wall_time_s": 360.0,
        }
        if config.eval.test_every_epoch:  # the record peaks before the last epoch
            summary.update(test_by_epoch=[0.3, test + 0.02, test], test_by_epoch_seconds=0.25)
        Path(config.out).mkdir(parents=True)  # as the engine does: a finished run's folder
        (Path(config.out) / "summary.json").write_text(json.dumps(summary))
        return "new", summary

    return run_one


def _grid(config) -> tuple[float, ...]:
    if config.optim.epochs == 100:
        return plan.FULL_LRS if config.method.method == "full" else plan.PAPER_LRS
    return plan.LONG_LRS if config.optim.epochs == 24 else plan.SHORT_LRS


def test_study_chooses_on_val_and_writes_every_cell(tmp_path: Path, monkeypatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(worker, "run_one", _fake_run_one(calls))
    (tmp_path / "data" / "t1").mkdir(parents=True)
    argv = ["--data-root", str(tmp_path / "data"), "--tasks", "t1", "--jobs", "1"]
    assert study_cli.main([*argv, "--out", str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "study.json").read_text())
    recs = res["records"]
    cells = {(r["setting"], r["variant"]) for r in recs}
    for setting, variants in plan.BLOCKS:
        assert {(setting, v.name) for v in variants} <= cells
    for r in recs:  # the val winner of its grid, with the grid's val accuracies kept
        grid = plan.SETTINGS[r["setting"]].lrs_of(r["variant"])
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
    clean_seeds = {(Path(r["run_dir"]), r["lr"]) for r in recs if r["seed"] > 0}
    assert all(lr == max(plan.SETTINGS[p.parts[-5]].lrs_of(p.parts[-3])) for p, lr in clean_seeds)
    # the reference protocol: best test over epochs and lrs, reported beside, choosing nothing
    refs = res["reference_records"]
    assert {r["setting"] for r in refs} == set(plan.PROTOCOL_SETTINGS)
    for r in refs:
        assert r["lr"] == min(plan.SETTINGS[r["setting"]].lrs_of(r["variant"])), r
        assert r["epoch"] == 2
    ref_rows = {(r["setting"], r["variant"]): r for r in res["reference_rows"]}
    assert ref_rows[("paper", "mosa_best")]["seeds"] == 3
    assert "selection on test" in (tmp_path / "out" / "study.md").read_text()
    assert res["protocol"]["test_record_cost"]["paper"] > 0
    hours = res["protocol"]["run_hours"]  # every run trained, 6 minutes each, by setting
    assert sum(h["runs"] for h in hours.values()) == len(calls)
    paper_runs = sum("/paper/" in str(c["out"]) for c in calls)
    assert hours["paper"] == {"runs": paper_runs, "hours": round(paper_runs / 10, 2)}
    assert "Run time per setting" in (tmp_path / "out" / "study.md").read_text()
    # the regimes: sharing levels with 10 shots, full fine-tuning in the paper's schedule
    cells = {(r["setting"], r["variant"]) for r in recs}
    assert {("shots10", v.name) for v in plan.SHARING} <= cells
    assert ("paper", "full") in cells and ("long", "mosa_best") in cells
    paper = [r for r in recs if r["setting"] == "paper"]
    assert all("optim.epochs=100" in r["setting_overrides"] for r in paper)
    assert (tmp_path / "out" / "study_trend.png").stat().st_size > 1000
    rows = {(r["setting"], r["variant"]): r for r in res["rows"]}
    assert rows[("base", "mosa_best")]["gap_test"] < 0  # reported, though test disagrees
    assert rows[("base", "mosa_best")]["seeds"] == 3
    md = (tmp_path / "out" / "study.md").read_text()
    assert "- base / mosa_best: " in md and " over 3 seeds: trails the adapter" in md
    assert (tmp_path / "out" / "study.png").stat().st_size > 1000
    assert "mosa_best" in (tmp_path / "out" / "study.md").read_text()
    # resumable: a second invocation trains nothing
    n = len(calls)
    assert study_cli.main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert len(calls) == n
    before = json.loads((tmp_path / "out" / "study.json").read_text())["records"]
    assert study_cli.main([*argv, "--out", str(tmp_path / "out"), "--report-only"]) == 0
    assert json.loads((tmp_path / "out" / "study.json").read_text())["records"] == before
    assert study_cli.main([*argv, "--out", str(tmp_path / "empty"), "--report-only"]) == 0
    assert len(calls) == n  # --report-only never trains


def test_runs_without_the_test_record_are_rerun_beside_and_never_replaced(
    tmp_path: Path, monkeypatch
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(worker, "run_one", _fake_run_one(calls))
    (tmp_path / "data" / "t1").mkdir(parents=True)
    opts = ExecutorOptions(jobs=1)
    s = Study(tmp_path, str(tmp_path / "data"), ("t1",), opts, lambda _: None)
    # a finished run from before the per-epoch test record existed
    cell = s.cell("base", plan.ADAPTER, "t1")
    old = {}
    for r in cell.grid:  # val chose the middle of the grid
        old[r.run_dir] = {"val_acc": 0.8 if r.lr == 2e-2 else 0.6, "test_acc": 0.5}
        r.run_dir.mkdir(parents=True)
        (r.run_dir / "summary.json").write_text(json.dumps(old[r.run_dir]))
    s.run_block("base", [plan.ADAPTER])
    assert not calls and s.reference_lr(cell) is None
    s.record_tests("base", [plan.ADAPTER])
    assert sorted(Path(c["out"]).parent for c in calls) == sorted(
        tmp_path / "rerun" / r.run_dir.relative_to(tmp_path / "runs").parent for r in cell.grid
    )
    for r in cell.grid:  # the original stays as it was
        assert json.loads((r.run_dir / "summary.json").read_text()) == old[r.run_dir]
    assert s.reference_lr(cell) == min(plan.SHORT_LRS)  # test's choice: a record only
    assert s.chosen(cell).lr == 2e-2  # val's choice is unchanged
    # the fake's re-runs report other finals than the originals: the agreement says so
    assert s.rerun_agreement()[:2] == (0, 3)
    s.record_tests("base", [plan.ADAPTER])
    assert len(calls) == 3  # nothing re-run twice


def test_verdict_needs_the_gap_beyond_its_seed_spread() -> None:
    row = {"variant": "mosa_best", "gap_std": 1.0}
    assert verdict({**row, "gap_test": 1.5}) == "beats"
    assert verdict({**row, "gap_test": -1.5}) == "trails"
    assert verdict({**row, "gap_test": 0.5}) == "level"
    # a gap equal to the spread is not beyond it
    assert verdict({**row, "gap_test": -1.0}) == "level"
    assert verdict({**row, "gap_test": 3.0, "gap_std": None}) is None  # one seed: no spread
    assert verdict({"variant": "adapter", "gap_test": 0.0, "gap_std": 0.0}) is None
    assert verdict({"variant": "adapter_cons", "gap_test": -2.0, "gap_std": 0.5}) is None  # dense


def test_a_tie_reaching_inside_the_grid_does_not_extend_it(tmp_path: Path, monkeypatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(worker, "run_one", _fake_run_one(calls))
    (tmp_path / "data" / "t1").mkdir(parents=True)
    s = Study(tmp_path, str(tmp_path / "data"), ("t1",), ExecutorOptions(jobs=1), lambda _: None)
    cell = s.cell("base", plan.ADAPTER, "t1")
    lrs = sorted(r.lr for r in cell.grid)

    def finish(vals: dict[float, float]) -> None:
        for r in cell.grid:
            r.run_dir.mkdir(parents=True, exist_ok=True)
            summary = {"val_acc": vals[r.lr], "test_acc": 0.5}
            (r.run_dir / "summary.json").write_text(json.dumps(summary))

    finish(dict.fromkeys(lrs, 0.995))  # a saturated task: every lr ties on val
    s.run_block("base", [plan.ADAPTER])
    assert not calls and s.chosen(cell).lr == lrs[1]  # interior, then the smaller
    # a grid end that wins outright still extends the grid, as before
    s2 = Study(
        tmp_path / "b", str(tmp_path / "data"), ("t1",), ExecutorOptions(jobs=1), lambda _: None
    )
    cell = s2.cell("base", plan.ADAPTER, "t1")
    finish({lr: 0.9 if lr == lrs[0] else 0.8 for lr in lrs})
    s2.run_block("base", [plan.ADAPTER])
    assert [c["lr"] for c in calls][:1] == [lrs[0] / 2]


def _rec(variant: str, task: str, seed: int, test: float) -> dict[str, Any]:
    """A study record of the paper setting whose val and test accuracies are both ``test``."""
    where = {"setting": "paper", "variant": variant, "task": task, "seed": seed, "lr": 0.01}
    return where | {"test_acc": test, "val_acc": test, "knob": None}


def test_a_row_still_missing_tasks_is_marked_and_has_no_gap() -> None:
    records = [_rec("adapter", t, 0, 0.8) for t in ("t1", "t2")] + [
        _rec("mosa_paper", "t1", 0, 0.9)
    ]
    rows = {r["variant"]: r for r in gaps(records + [_rec("mosa_paper", "t2", 0, 0.7)], n_tasks=2)}
    assert abs(rows["mosa_paper"]["gap_test"]) < 1e-9  # complete: (10 - 10) / 2
    # mosa_paper on t1 only, adapter on both: a gap over t1 alone would read +10
    rows = gaps(records, n_tasks=2)
    assert [r.get("gap_test") for r in rows] == [0.0, None]
    md = render(rows, records, ("t1", "t2"))
    assert "| paper | mosa_paper (1 of 2 tasks so far) |  | 1 | 90.0 | 90.0 | — |" in md


def test_both_protocols_compare_the_same_seeds() -> None:
    # clean gaps -6, -2, -1 over seeds 0..2; the reference figure exists for seed 0 only
    clean = [_rec("adapter", "t1", s, 0.8) for s in range(3)]
    clean += [_rec("mosa_paper", "t1", s, t) for s, t in enumerate((0.74, 0.78, 0.79))]
    reference = [_rec("adapter", "t1", 0, 0.82), _rec("mosa_paper", "t1", 0, 0.77)]
    md = render_protocols(*matched_gaps(clean, reference, 1), 1)
    # seed 0 moved from -6 to -5; against the 3-seed clean mean (-3) it would read -2
    assert "| paper | mosa_paper | 1 | 74.0 | -6.0 | 77.0 | -5.0 | +1.0 |" in md
    # the other way round: 3 reference seeds (gaps -5, -1, 0), a clean figure for seed 0
    reference += [_rec("adapter", "t1", s, 0.8) for s in (1, 2)]
    reference += [_rec("mosa_paper", "t1", s, t) for s, t in ((1, 0.79), (2, 0.8))]
    md = render_protocols(*matched_gaps(clean[:1] + clean[3:4], reference, 1), 1)
    assert "| paper | mosa_paper | 1 | 74.0 | -6.0 | 77.0 | -5.0 | +1.0 |" in md


def test_a_row_averages_its_tasks_over_the_seeds_they_share() -> None:
    # t1's finals are done (seeds 1 and 2 far lower), t2 has seed 0 only
    records = [_rec("adapter", t, 0, 0.8) for t in ("t1", "t2")]
    records += [_rec("adapter", "t1", s, 0.5) for s in (1, 2)]
    rows = {r["variant"]: r for r in gaps(records, n_tasks=2)}
    assert rows["adapter"]["seeds"] == 1
    assert abs(rows["adapter"]["test"] - 80.0) < 1e-9  # not (60 + 80) / 2


def test_the_grid_grows_past_a_winning_end_up_to_its_cap(tmp_path: Path, monkeypatch) -> None:
    def run_one(config):  # val keeps rising with the lr: the top end always wins
        summary = {"val_acc": config.optim.lr, "test_acc": 0.5, "wall_time_s": 1.0}
        Path(config.out).mkdir(parents=True)
        (Path(config.out) / "summary.json").write_text(json.dumps(summary))
        return "new", summary

    monkeypatch.setattr(worker, "run_one", run_one)
    (tmp_path / "data" / "t1").mkdir(parents=True)
    s = Study(tmp_path, str(tmp_path / "data"), ("t1",), ExecutorOptions(jobs=1), lambda _: None)
    s.run_block("base", [plan.ADAPTER])
    cell = s.cell("base", plan.ADAPTER, "t1")
    top = max(plan.SETTINGS["base"].lrs_of("adapter"))
    assert plan.MAX_EXTENSIONS == 4
    assert sorted(r.lr for r in cell.grid)[-5:] == [top * 2**k for k in range(5)]
    assert s.chosen(cell).lr == top * 2**4  # still an end: the cap stops the walk
    ends = render_grid_ends(s.records())
    assert f"base / adapter / t1 (lr {top * 2**4:g})" in ends
    assert render_grid_ends([]) == ""

"""One config diff for a resume (strict) and a grid's run folders (lenient)."""

from __future__ import annotations

from mosa.engine.config import config_changes


def test_a_resume_sees_every_change_but_those_it_may_make() -> None:
    saved = {"out": "a", "optim": {"lr": 0.1, "accumulate": 1}, "data": [{"mean": [0.5, 0.5]}]}
    now = {"out": "b", "optim": {"lr": 0.2, "accumulate": 2}, "data": [{"mean": (0.5, 0.5)}]}
    assert config_changes(saved, now, ignore=("out", "optim.accumulate")) == {
        "optim.lr": (0.1, 0.2)
    }
    assert set(config_changes(saved, now)) == {"out", "optim.lr", "optim.accumulate"}


def test_automatic_fields_and_newer_fields_are_no_change_for_a_grid() -> None:
    saved = {"data": [{"img_size": 32}], "seed": 1}
    grid = {"data": [{"img_size": None}], "seed": 1, "compile": False}
    assert config_changes(saved, grid, automatic=True) == {}
    assert config_changes(saved, grid) == {
        "compile": (None, False),
        "data.0.img_size": (32, None),
    }
    assert config_changes(saved, {**grid, "seed": 2}, automatic=True) == {"seed": (1, 2)}

"""Few-shot draws, remainders, hold-outs and their JSON files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mosa.data import (
    DataError,
    few_shot_indices,
    few_shot_split,
    holdout_split,
    load_indices,
    remaining_indices,
    save_indices,
)

TARGETS = [i % 4 for i in range(40)] + [3] * 5  # 10,10,10,15 per class


def test_balanced_and_valid() -> None:
    idx = few_shot_indices(TARGETS, 3, seed=0)
    assert len(idx) == 12 and len(set(idx)) == 12 and idx == sorted(idx)
    assert Counter(TARGETS[i] for i in idx) == {0: 3, 1: 3, 2: 3, 3: 3}


def test_deterministic_per_seed() -> None:
    a = few_shot_indices(TARGETS, 5, seed=7)
    assert a == few_shot_indices(TARGETS, 5, seed=7)
    assert a != few_shot_indices(TARGETS, 5, seed=8)


def test_too_few_images_names_the_class() -> None:
    with pytest.raises(DataError, match=r"class 0: 10.*class 1: 10.*class 2: 10"):
        few_shot_indices(TARGETS, 11, seed=0)
    with pytest.raises(DataError, match="class 4: 0"):
        few_shot_indices(TARGETS, 1, seed=0, num_classes=5)
    with pytest.raises(DataError, match="shots must be >= 1"):
        few_shot_indices(TARGETS, 0, seed=0)


def test_remaining_and_disjoint_validation() -> None:
    train = few_shot_indices(TARGETS, 4, seed=1)
    rest = remaining_indices(TARGETS, train)
    assert set(rest) | set(train) == set(range(len(TARGETS))) and not set(rest) & set(train)
    val = few_shot_indices(TARGETS, 6, seed=2, exclude=train)
    assert not set(val) & set(train)
    assert Counter(TARGETS[i] for i in val) == {0: 6, 1: 6, 2: 6, 3: 6}
    # class 0 has 10 images, 4 drawn: only 6 left
    with pytest.raises(DataError, match="class 0: 6"):
        few_shot_indices(TARGETS, 7, seed=2, exclude=train)
    tr, va = few_shot_split(TARGETS, 2, 3, seed=5)
    assert len(tr) == 8 and len(va) == 12 and not set(tr) & set(va)
    with pytest.raises(DataError, match="outside"):
        remaining_indices(5, [5])


def test_holdout_split_stratified() -> None:
    tr, va = holdout_split(TARGETS, 0.2, seed=0)
    assert sorted(tr + va) == list(range(len(TARGETS)))
    assert Counter(TARGETS[i] for i in va) == {0: 2, 1: 2, 2: 2, 3: 3}
    assert (tr, va) == holdout_split(TARGETS, 0.2, seed=0)
    with pytest.raises(DataError):
        holdout_split(TARGETS, 1.0)


def test_save_load_roundtrip_and_checks(tmp_path: Path) -> None:
    idx = few_shot_indices(TARGETS, 2, seed=3)
    p = tmp_path / "sub" / "fewshot.json"
    save_indices(p, idx, targets=TARGETS, shots=2, seed=3)
    doc = json.loads(p.read_text())
    assert doc["shots"] == 2 and doc["seed"] == 3 and doc["num_items"] == len(TARGETS)
    assert load_indices(p, targets=TARGETS) == idx
    other = list(reversed(TARGETS))
    with pytest.raises(DataError, match="different data set"):
        load_indices(p, targets=other)
    bad = tmp_path / "bad.json"
    bad.write_text('{"indices": [1, -2]}')
    with pytest.raises(DataError, match=r"bad\.json"):
        load_indices(bad)
    with pytest.raises(DataError, match="index file not found"):
        load_indices(tmp_path / "none.json")

"""``mosa data prepare`` backends: layouts, sizes, determinism and what the tasks contain."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mosa.data import TASK_GROUPS, DataError, build_dataset, prepare, sources
from mosa.data.prepare import CANVAS, PREPARE_TASKS, generate_task, prepare_tasks

KW = {"img_size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "train": False}
FMNIST_TASKS = [t for t in PREPARE_TASKS if t.startswith("fmnist")]


def _tree_digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(d)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_registry() -> None:
    assert set(TASK_GROUPS) == set(PREPARE_TASKS)
    assert set(TASK_GROUPS.values()) == {"natural", "specialized", "structured"}
    n = {t: v.num_classes for t, v in PREPARE_TASKS.items()}
    assert n == {
        "digits": 10,
        "digits_noisy": 10,
        "fmnist_noisy": 10,
        "fmnist_rot": 4,
        "fmnist_loc": 9,
        "fmnist_count": 5,
        "fmnist_scale": 4,
    }


def test_digits_full_task_loads_back(tmp_path: Path) -> None:
    (res,) = prepare_tasks(tmp_path, "digits", seed=0)
    assert res.status == "written"
    assert res.counts == {"train800": 800, "val200": 200, "train800val200": 1000, "test": 797}
    tdir = tmp_path / "digits"
    meta = json.loads((tdir / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["group"] == "natural" and "digits" in meta["source"]
    sizes = {}
    for split in ("train800", "val200", "train800val200", "test"):
        ds = build_dataset("vtab", tmp_path, "digits", split, **KW)
        sizes[split] = len(ds)
        assert ds.num_classes == 10 and ds.group == "natural"
        assert min(ds.targets) == 0 and max(ds.targets) == 9
    assert sizes == res.counts
    tv = build_dataset("vtab", tmp_path, "digits", "train800val200", **KW)
    tr = build_dataset("vtab", tmp_path, "digits", "train800", **KW)
    va = build_dataset("vtab", tmp_path, "digits", "val200", **KW)
    assert tv.paths == tr.paths + va.paths
    te = build_dataset("vtab", tmp_path, "digits", "test", **KW)
    assert not set(te.paths) & set(tv.paths)
    x, _ = te[0]
    assert x.shape == (3, 32, 32)
    # all 1797 digits used once: train/val/test are disjoint draws of the source
    parts = generate_task("digits", seed=0)
    ids = np.concatenate([np.concatenate(s.source_ids) for s in parts.values()])
    assert len(ids) == 1797 and len(set(ids.tolist())) == 1797


def test_digits_labels_match_source() -> None:
    images, labels = sources.load_digits()
    parts = generate_task("digits", seed=3, limit=30)
    for sp in parts.values():
        src = np.array([int(i[0]) for i in sp.source_ids])
        assert (sp.labels == labels[src]).all()
        assert sp.images.shape[1:] == (CANVAS, CANVAS)
        # the upscaled image keeps the digit's layout: 4x4 block means correlate with the source
        a = sp.images[0].reshape(8, 4, 8, 4).mean(axis=(1, 3)).ravel()
        b = images[src[0]].astype(float).ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.9


def test_idempotent_and_guarded(tmp_path: Path) -> None:
    prepare_tasks(tmp_path, ["digits_noisy"], seed=1, limit=12)
    before = _tree_digest(tmp_path / "digits_noisy")
    (res,) = prepare_tasks(tmp_path, ["digits_noisy"], seed=1, limit=12)
    assert res.status == "skipped" and res.counts["test"] == 12
    assert _tree_digest(tmp_path / "digits_noisy") == before
    with pytest.raises(DataError, match=r"digits_noisy exists .* seed=2"):
        prepare_tasks(tmp_path, ["digits_noisy"], seed=2, limit=12)
    (res,) = prepare_tasks(tmp_path, ["digits_noisy"], seed=2, limit=12, overwrite=True)
    assert res.status == "written"
    assert _tree_digest(tmp_path / "digits_noisy") != before
    assert [p.name for p in tmp_path.iterdir()] == ["digits_noisy"]  # no temp folders left


def test_deterministic_given_seed(tmp_path: Path) -> None:
    prepare_tasks(tmp_path / "a", ["digits_noisy"], seed=5, limit=10)
    prepare_tasks(tmp_path / "b", ["digits_noisy"], seed=5, limit=10)
    prepare_tasks(tmp_path / "c", ["digits_noisy"], seed=6, limit=10)
    da, db, dc = (_tree_digest(tmp_path / k / "digits_noisy") for k in "abc")
    assert da == db and da != dc


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(prepare, "write_task", boom)
    with pytest.raises(RuntimeError):
        prepare_tasks(tmp_path, ["digits"], limit=5)
    assert list(tmp_path.iterdir()) == []


def test_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown project task.*mnist_rot"):
        prepare_tasks(tmp_path, ["mnist_rot"])


def test_missing_fashion_mnist_is_a_data_error(tmp_path: Path, monkeypatch) -> None:
    def absent() -> Path:
        raise FileNotFoundError("Fashion-MNIST not found in /nowhere")

    monkeypatch.setattr(sources, "fashion_mnist_dir", absent)
    prepare._fmnist_test.cache_clear()
    try:
        with pytest.raises(DataError, match="Fashion-MNIST not found"):
            prepare_tasks(tmp_path, ["fmnist_rot"], limit=5)
    finally:
        prepare._fmnist_test.cache_clear()


# ---------------------------------------------------------------- Fashion-MNIST tasks


def test_all_tasks_with_limit_load_back(tmp_path: Path, fmnist) -> None:
    res = prepare_tasks(tmp_path, seed=0, limit=20)
    assert [r.task for r in res] == list(PREPARE_TASKS)
    for r in res:
        info = PREPARE_TASKS[r.task]
        assert r.counts == {"train800": 20, "val200": 20, "train800val200": 40, "test": 20}
        for split in ("train800val200", "test"):
            ds = build_dataset("vtab", tmp_path, r.task, split, **KW)
            assert len(ds) == r.counts[split]
            assert ds.num_classes == info.num_classes and ds.classes == list(info.classes)
            assert ds.group == TASK_GROUPS[r.task]
            assert min(ds.targets) >= 0 and max(ds.targets) < info.num_classes
        assert ds[0][0].shape == (3, 32, 32)


def test_fashion_mnist_train_split_never_read(monkeypatch, fmnist) -> None:
    real = sources.load_fashion_mnist

    def guarded(split: str):
        assert split == "test", "a target task read the Fashion-MNIST train split"
        return real(split)

    monkeypatch.setattr(sources, "load_fashion_mnist", guarded)
    prepare._fmnist_test.cache_clear()
    try:
        for t in FMNIST_TASKS:
            generate_task(t, seed=0, limit=5)
    finally:
        prepare._fmnist_test.cache_clear()


@pytest.mark.parametrize("task", FMNIST_TASKS)
def test_full_sizes_and_disjoint_sources(task: str, fmnist) -> None:
    parts = generate_task(task, seed=0)
    assert {k: len(v.labels) for k, v in parts.items()} == {"train": 800, "val": 200, "test": 1000}
    used = {k: set(np.concatenate(v.source_ids).tolist()) for k, v in parts.items()}
    assert not used["train"] & used["val"]
    assert not used["train"] & used["test"]
    assert not used["val"] & used["test"]
    per_image = sum(len(ids) for ids in parts["train"].source_ids)
    assert len(used["train"]) == per_image  # no source image reused within a split either
    k = PREPARE_TASKS[task].num_classes
    counts = Counter(parts["train"].labels.tolist())
    assert set(counts) == set(range(k)) and min(counts.values()) >= 800 // k - 30


def test_rotation_task_content(fmnist) -> None:
    images, _ = sources.load_fashion_mnist("test")
    sp = generate_task("fmnist_rot", seed=0, limit=40)["train"]
    for img, lab, ids in zip(sp.images, sp.labels, sp.source_ids, strict=True):
        upright = np.rot90(img, k=-int(lab))
        assert np.array_equal(upright[2:30, 2:30], images[ids[0]])


def test_location_task_content(fmnist) -> None:
    sp = generate_task("fmnist_loc", seed=0, limit=60)["test"]
    for img, lab in zip(sp.images, sp.labels, strict=True):
        ys, xs = np.nonzero(img)
        r, c = divmod(int(lab), 3)
        assert (r * CANVAS) // 3 <= ys.min() and ys.max() < ((r + 1) * CANVAS) // 3
        assert (c * CANVAS) // 3 <= xs.min() and xs.max() < ((c + 1) * CANVAS) // 3


def test_count_task_content(fmnist) -> None:
    sp = generate_task("fmnist_count", seed=0, limit=60)["val"]
    for img, lab, ids in zip(sp.images, sp.labels, sp.source_ids, strict=True):
        occupied = sum(
            img[
                (r * CANVAS) // 3 : ((r + 1) * CANVAS) // 3,
                (c * CANVAS) // 3 : ((c + 1) * CANVAS) // 3,
            ].any()
            for r in range(3)
            for c in range(3)
        )
        assert occupied == int(lab) + 1 == len(ids)


def test_scale_task_content(fmnist) -> None:
    sp = generate_task("fmnist_scale", seed=0, limit=80)["train"]
    for img, lab in zip(sp.images, sp.labels, strict=True):
        ys, xs = np.nonzero(img)
        side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        target = (8, 14, 20, 26)[int(lab)]
        assert target - 2 <= side <= target + 1


def test_noisy_task_keeps_garment_labels(fmnist) -> None:
    _, labels = sources.load_fashion_mnist("test")
    sp = generate_task("fmnist_noisy", seed=0, limit=50)["train"]
    src = np.array([int(i[0]) for i in sp.source_ids])
    assert (sp.labels == labels[src]).all()
    # strongly corrupted: the black background is lifted and noisy
    corners = sp.images[:, :3, :3].astype(float)
    assert corners.mean() > 20 and corners.std() > 10

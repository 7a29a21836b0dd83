"""CIFAR-100, Food-101 and FGVC-Aircraft through torchvision, on tiny fakes of their layouts."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from mosa.data import DataError, build_dataset

KW = {"img_size": 8, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "train": False}


@pytest.mark.parametrize(
    "kind, folder",
    [
        ("cifar100", "cifar-100-python"),
        ("food101", "food-101"),
        ("aircraft", "fgvc-aircraft-2013b"),
    ],
)
def test_missing_folder_is_named(tmp_path: Path, kind: str, folder: str) -> None:
    with pytest.raises(DataError) as e:
        build_dataset(kind, tmp_path, None, "train", **KW)
    assert str(tmp_path / folder) in str(e.value) and "never downloaded" in str(e.value)


def make_food(root: Path, write_image) -> None:
    base = root / "food-101"
    meta = {"train": {}, "test": {}}
    for c in ("apple_pie", "bibimbap"):
        meta["train"][c] = [f"{c}/{i}" for i in range(10)]
        meta["test"][c] = [f"{c}/t{i}" for i in range(2)]
    for split, d in meta.items():
        for ims in d.values():
            for k, rel in enumerate(ims):
                write_image(base / "images" / f"{rel}.jpg", k, size=(9, 7))
        (base / "meta").mkdir(parents=True, exist_ok=True)
        (base / "meta" / f"{split}.json").write_text(json.dumps(d))


def test_food101_splits_hold_out_val_from_train(tmp_path: Path, write_image) -> None:
    make_food(tmp_path, write_image)
    tr = build_dataset("food101", tmp_path, None, "train", **KW)
    va = build_dataset("food101", tmp_path, None, "val", **KW)
    tv = build_dataset("food101", tmp_path, None, "trainval", **KW)
    te = build_dataset("food101", tmp_path / "food-101", None, "test", **KW)  # folder itself ok
    assert (len(tr), len(va), len(tv), len(te)) == (18, 2, 20, 4)
    assert sorted(tr._keep + va._keep) == list(range(20))  # disjoint and covering trainval
    assert sorted(va.targets) == [0, 1]  # stratified: one per class
    assert tr.classes == ["apple_pie", "bibimbap"] and tr.num_classes == 2
    x, y = te[3]
    assert x.shape == (3, 8, 8) and y == 1


def test_food101_missing_image(tmp_path: Path, write_image) -> None:
    make_food(tmp_path, write_image)
    missing = tmp_path / "food-101" / "images" / "bibimbap" / "t1.jpg"
    missing.unlink()
    with pytest.raises(DataError, match="bibimbap/t1.jpg"):
        build_dataset("food101", tmp_path, None, "test", **KW)


def make_aircraft(root: Path, write_image) -> None:
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("707-320\nA300B4\nBoeing 717\n")
    rows = {
        "train": ["0001 707-320", "0002 Boeing 717"],
        "val": ["0003 A300B4"],
        "test": ["0004 A300B4"],
    }
    rows["trainval"] = rows["train"] + rows["val"]
    for split, lines in rows.items():
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    for i in range(1, 5):
        write_image(data / "images" / f"{i:04d}.jpg", i, size=(20, 12))


def test_aircraft_native_splits(tmp_path: Path, write_image) -> None:
    make_aircraft(tmp_path, write_image)
    tr = build_dataset("aircraft", tmp_path, None, "train", **{**KW, "train": True})
    assert tr.targets == [0, 2] and tr.num_classes == 3
    assert tr[1][0].shape == (3, 8, 8)
    assert build_dataset("aircraft", tmp_path, None, "val", **KW).targets == [1]
    assert len(build_dataset("aircraft", tmp_path, None, "trainval", **KW)) == 3


def make_unsorted_food(root: Path, write_image) -> None:
    """Food-101 whose meta lists the classes out of order, every image distinct."""
    base = root / "food-101"
    (base / "meta").mkdir(parents=True)
    for split, n in (("train", 3), ("test", 2)):
        meta = {c: [f"{c}/{split}{i}" for i in range(n)] for c in ("ramen", "apple_pie", "pho")}
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta))
        for k, rel in enumerate(r for ims in meta.values() for r in ims):
            write_image(base / "images" / f"{rel}.jpg", 100 * n + k, size=(9, 7))


@pytest.mark.parametrize(
    "kind, split, make",
    [("food101", "test", make_unsorted_food), ("aircraft", "trainval", make_aircraft)],
)
def test_images_labels_and_classes_in_torchvision_order(
    tmp_path: Path, write_image, kind: str, split: str, make
) -> None:
    import torchvision.datasets as tvd

    make(tmp_path, write_image)
    ours = build_dataset(kind, tmp_path, None, split, **KW)
    if kind == "food101":
        theirs = tvd.Food101(str(tmp_path), split=split)
    else:
        theirs = tvd.FGVCAircraft(str(tmp_path), split=split)
    assert ours.classes == theirs.classes and len(ours) == len(theirs)
    for i in range(len(theirs)):
        image, label = theirs[i]
        assert ours.targets[i] == label
        assert np.array_equal(np.asarray(ours._decode(i)), np.asarray(image))


def test_cifar100_through_torchvision(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets.cifar as tv_cifar

    base = tmp_path / "cifar-100-python"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 30), ("test", 6)):
        entry = {
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            "fine_labels": [i % 3 for i in range(n)],
        }
        (base / name).write_bytes(pickle.dumps(entry))
    (base / "meta").write_bytes(pickle.dumps({"fine_label_names": ["apple", "bee", "cup"]}))
    # The fake files cannot match torchvision's md5 sums; everything else is real.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    te = build_dataset("cifar100", tmp_path, None, "test", **KW)
    assert te.targets == [0, 1, 2, 0, 1, 2] and te.classes == ["apple", "bee", "cup"]
    x, _ = te[0]
    assert x.shape == (3, 8, 8)
    tr = build_dataset("cifar100", tmp_path, None, "train", **KW)
    va = build_dataset("cifar100", tmp_path, None, "val", **KW)
    assert len(tr) == 27 and len(va) == 3 and sorted(va.targets) == [0, 1, 2]


def test_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown data kind 'imagenet'"):
        build_dataset("imagenet", tmp_path, None, "train", **KW)


def test_bad_split(tmp_path: Path, write_image) -> None:
    make_food(tmp_path, write_image)
    with pytest.raises(DataError, match="unknown split 'dev'"):
        build_dataset("food101", tmp_path, None, "dev", **KW)

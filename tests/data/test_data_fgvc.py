"""FGVC sets in the VPT json layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mosa.data import FGVC_SETS, DataError, build_dataset
from mosa.data.fgvc import FgvcDataset, fgvc_spec
from mosa.data.transforms import build_transform

KW = {"img_size": 16, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "train": False}


def make_set(root: Path, write_image, name: str, splits: dict[str, dict[str, int]]) -> Path:
    """Write a set folder (conventional folder name) with the given split jsons and images."""
    spec = FGVC_SETS[name]
    sdir = root / spec.folder
    for k, (split, data) in enumerate(splits.items()):
        for j, rel in enumerate(data):
            write_image(sdir / spec.image_dir / rel, 1000 * k + j)
        (sdir / f"{split}.json").write_text(json.dumps(data, indent=1))
    return sdir


CUB_SPLITS = {
    "train": {"001.Albatross/a1.jpg": 1, "002.Auklet/b1.jpg": 2, "003.Crow/c1.jpg": 3},
    "val": {"001.Albatross/a2.jpg": 1, "003.Crow/c2.jpg": 3},
    "test": {"002.Auklet/b2.jpg": 2, "001.Albatross/a3.jpg": 1},
}


def test_fgvc_table() -> None:
    assert {k: v.num_classes for k, v in FGVC_SETS.items()} == {
        "cub": 200,
        "nabirds": 555,
        "oxford_flowers": 102,
        "stanford_dogs": 120,
        "stanford_cars": 196,
    }
    assert FGVC_SETS["cub"].folder == "CUB_200_2011" and FGVC_SETS["cub"].image_dir == "images"
    assert FGVC_SETS["stanford_dogs"].image_dir == "Images"
    assert fgvc_spec("Dogs")[0] == "stanford_dogs"


def test_ids_inside_range_are_kept(tmp_path: Path, write_image) -> None:
    # ids 1..3 already lie in CUB's 0..199: kept as they are (a 0-based file with gaps)
    make_set(tmp_path, write_image, "cub", CUB_SPLITS)
    train = build_dataset("fgvc", tmp_path, "cub", "train", **KW)
    test = build_dataset("fgvc", tmp_path, "cub", "test", **KW)
    assert train.num_classes == 200
    assert train.targets == [1, 2, 3]
    assert test.targets == [2, 1]
    # class names come from the per-class image folders
    assert train.classes[1:4] == ["001.Albatross", "002.Auklet", "003.Crow"]
    assert train.classes[0] == "0"
    x, y = train[0]
    assert x.shape == (3, 16, 16) and y == 1


def test_one_based_ids_are_remapped_consistently(tmp_path: Path, write_image, monkeypatch) -> None:
    from mosa.data import fgvc

    monkeypatch.setitem(
        fgvc.FGVC_SETS, "cub", fgvc.FgvcSpec("Tiny CUB", 3, "CUB_200_2011", "images")
    )
    make_set(tmp_path, write_image, "cub", CUB_SPLITS)  # ids 1..3 of 3 classes: 1-based
    train = build_dataset("fgvc", tmp_path, "cub", "train", **KW)
    val = build_dataset("fgvc", tmp_path, "cub", "val", **KW)
    test = build_dataset("fgvc", tmp_path, "cub", "test", **KW)
    assert (train.targets, val.targets, test.targets) == ([0, 1, 2], [0, 2], [1, 0])
    assert train.classes == ["001.Albatross", "002.Auklet", "003.Crow"]


def test_sparse_ids_are_remapped(tmp_path: Path, write_image) -> None:
    splits = {
        "train": {"a/1.jpg": 295, "b/1.jpg": 1010, "c/1.jpg": 600},
        "val": {"a/2.jpg": 295},
        "test": {"b/2.jpg": 1010, "c/2.jpg": 600},
    }
    make_set(tmp_path, write_image, "nabirds", splits)
    ds = build_dataset("fgvc", tmp_path, "nabirds", "test", **KW)
    assert ds.num_classes == 555
    assert ds.targets == [2, 1]  # 295 -> 0, 600 -> 1, 1010 -> 2
    assert ds.class_ids == [295, 600, 1010]


def test_trainval_is_union_and_root_can_be_set_folder(tmp_path: Path, write_image) -> None:
    sdir = make_set(tmp_path, write_image, "stanford_dogs", {
        "train": {"n1/x.jpg": 0, "n2/y.jpg": 1},
        "val": {"n1/z.jpg": 0},
        "test": {"n2/w.jpg": 1},
    })  # fmt: skip
    ds = build_dataset("fgvc", sdir, "stanford_dogs", "trainval", **KW)
    assert len(ds) == 3 and ds.targets == [0, 1, 0]
    assert all("/Images/" in p for p in ds.paths)


def test_image_dir_override(tmp_path: Path, write_image) -> None:
    sdir = tmp_path / "mycars"
    write_image(sdir / "imgs" / "1.jpg", 1)
    (sdir / "train.json").write_text(json.dumps({"1.jpg": 0}))
    pipe = build_transform("crop", 16)
    ds = FgvcDataset(tmp_path, "cars", "train", pipe, folder="mycars", image_dir="imgs")
    assert ds.paths == [str(sdir / "imgs" / "1.jpg")]


def test_train_transform_random_crop(tmp_path: Path, write_image) -> None:
    make_set(tmp_path, write_image, "cub", CUB_SPLITS)
    ds = build_dataset("fgvc", tmp_path, "cub", "train", **{**KW, "train": True})
    assert ds.prepared(0).shape == (3, 18, 21)  # shorter side 16*256/224 -> 18 (12x10 source)
    assert ds[0][0].shape == (3, 16, 16)


# ---------------------------------------------------------------- errors


def test_missing_set_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CUB-200-2011 folder not found: .*CUB_200_2011"):
        build_dataset("fgvc", tmp_path, "cub", "train", **KW)


def test_unknown_set(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown FGVC set 'birds'"):
        build_dataset("fgvc", tmp_path, "birds", "train", **KW)


def test_missing_split_json(tmp_path: Path, write_image) -> None:
    sdir = make_set(tmp_path, write_image, "cub", {"train": CUB_SPLITS["train"]})
    with pytest.raises(DataError) as e:
        build_dataset("fgvc", tmp_path, "cub", "test", **KW)
    assert str(sdir / "test.json") in str(e.value)


def test_invalid_json_names_line(tmp_path: Path, write_image) -> None:
    sdir = make_set(tmp_path, write_image, "cub", CUB_SPLITS)
    (sdir / "val.json").write_text('{\n "001.Albatross/a2.jpg": 1,\n oops\n}')
    with pytest.raises(DataError) as e:
        build_dataset("fgvc", tmp_path, "cub", "train", **KW)  # all splits are read
    assert f"{sdir / 'val.json'}:3" in str(e.value)


def test_non_integer_id_names_entry_and_line(tmp_path: Path, write_image) -> None:
    sdir = make_set(tmp_path, write_image, "cub", CUB_SPLITS)
    data = dict(CUB_SPLITS["test"])
    data["002.Auklet/b2.jpg"] = "two"
    (sdir / "test.json").write_text(json.dumps(data, indent=1))
    with pytest.raises(DataError) as e:
        build_dataset("fgvc", tmp_path, "cub", "test", **KW)
    assert f"{sdir / 'test.json'}:2" in str(e.value) and "002.Auklet/b2.jpg" in str(e.value)


def test_missing_image_names_json_line(tmp_path: Path, write_image) -> None:
    sdir = make_set(tmp_path, write_image, "cub", CUB_SPLITS)
    (sdir / "images" / "003.Crow" / "c1.jpg").unlink()
    with pytest.raises(DataError) as e:
        build_dataset("fgvc", tmp_path, "cub", "train", **KW)
    assert f"{sdir / 'train.json'}:4" in str(e.value) and "003.Crow/c1.jpg" in str(e.value)


def test_too_many_classes(tmp_path: Path, write_image, monkeypatch) -> None:
    from mosa.data import fgvc

    monkeypatch.setitem(fgvc.FGVC_SETS, "stanford_cars", fgvc.FgvcSpec("Tiny", 3, "cars", ""))
    sdir = tmp_path / "cars"
    data = {f"{i}.jpg": i for i in range(5)}
    for rel in data:
        write_image(sdir / rel, 1)
    (sdir / "train.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="5 distinct class ids but Tiny has 3 classes"):
        build_dataset("fgvc", tmp_path, "stanford_cars", "train", **KW)


def test_corrupt_image_names_file(tmp_path: Path, write_image) -> None:
    sdir = make_set(tmp_path, write_image, "cub", CUB_SPLITS)
    bad = sdir / "images" / "002.Auklet" / "b2.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    ds = build_dataset("fgvc", tmp_path, "cub", "test", **KW)
    with pytest.raises(DataError) as e:
        ds[0]
    assert str(bad) in str(e.value) and "test.json" in str(e.value)

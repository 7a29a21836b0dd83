"""ImageFolder-style trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from mosa.data import DataError, build_dataset

KW = {"img_size": 8, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "train": False}


def test_classes_are_union_over_splits(tmp_path: Path, write_image) -> None:
    root = tmp_path / "pets"
    write_image(root / "train" / "cat" / "1.png", 1)
    write_image(root / "train" / "cat" / "2.jpg", 2)
    write_image(root / "train" / "dog" / "1.png", 3)
    write_image(root / "valid" / "cat" / "9.png", 4)
    write_image(root / "test" / "ant" / "5.png", 5)  # class only in test
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    train = build_dataset("folder", tmp_path, "pets", "train", **KW)
    assert train.classes == ["ant", "cat", "dog"] and train.num_classes == 3
    assert train.targets == [1, 1, 2]
    val = build_dataset("folder", root, None, "val", **KW)  # 'valid' folder, root given directly
    assert val.targets == [1]
    test = build_dataset("folder", root, None, "test", **KW)
    assert test.targets == [0]
    x, y = test[0]
    assert x.shape == (3, 8, 8) and y == 0


def test_grayscale_images_become_rgb(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "train" / "a" / "g.png", 1, mode="L")
    ds = build_dataset("folder", tmp_path, None, "train", **KW)
    x, _ = ds[0]
    assert x.shape == (3, 8, 8)
    assert (x[0] == x[1]).all() and (x[1] == x[2]).all()


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"image folder root not found: .*absent"):
        build_dataset("folder", tmp_path / "absent", None, "train", **KW)


def test_missing_split_lists_subfolders(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "train" / "a" / "1.png", 1)
    with pytest.raises(DataError) as e:
        build_dataset("folder", tmp_path, None, "test", **KW)
    assert str(tmp_path / "test") in str(e.value) and "train" in str(e.value)


def test_no_images(tmp_path: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no image files under .*train"):
        build_dataset("folder", tmp_path, None, "train", **KW)


def test_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="has no class sub-folders"):
        build_dataset("folder", tmp_path, None, "train", **KW)


def test_corrupt_image_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "train" / "a" / "x.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = build_dataset("folder", tmp_path, None, "train", **KW)
    with pytest.raises(DataError, match=r"cannot decode image .*x\.png"):
        ds[0]

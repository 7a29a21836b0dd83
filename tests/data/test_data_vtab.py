"""VTAB-1k layout: parsing, class counts and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mosa.data import VTAB_TASKS, DataError, build_dataset
from mosa.data.vtab import parse_split_file

KW = {"img_size": 16, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "train": True}


def test_vtab_table_matches_spec() -> None:
    assert len(VTAB_TASKS) == 19
    groups = [g for g, _ in VTAB_TASKS.values()]
    assert groups.count("natural") == 7
    assert groups.count("specialized") == 4
    assert groups.count("structured") == 8
    counts = {t: n for t, (_, n) in VTAB_TASKS.items()}
    assert counts == {
        "cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102,
        "oxford_iiit_pet": 37, "svhn": 10, "sun397": 397, "patch_camelyon": 2, "eurosat": 10,
        "resisc45": 45, "diabetic_retinopathy": 5, "clevr_count": 8, "clevr_dist": 6, "dmlab": 6,
        "kitti": 4, "dsprites_loc": 16, "dsprites_ori": 16, "smallnorb_azi": 18,
        "smallnorb_ele": 9,
    }  # fmt: skip
    assert VTAB_TASKS["diabetic_retinopathy"][0] == "specialized"


def test_layout_parses_all_splits(make_vtab, vtab_root: Path) -> None:
    make_vtab("mytask", train=[0, 1, 2, 3], val=[3, 2], test=[1, 0, 3])
    sizes = {}
    for split in ("train800", "val200", "train800val200", "test"):
        ds = build_dataset("vtab", vtab_root, "mytask", split, **KW)
        sizes[split] = len(ds)
        assert ds.num_classes == 4  # max label + 1 over all split files
        assert ds.classes == ["0", "1", "2", "3"]
    assert sizes == {"train800": 4, "val200": 2, "train800val200": 6, "test": 3}
    ds = build_dataset("vtab", vtab_root, "mytask", "train800val200", **KW)
    assert ds.targets == [0, 1, 2, 3, 3, 2]
    x, y = ds[4]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert y == 3
    assert ds.group is None  # unknown user task without meta.json


def test_generic_split_aliases(make_vtab, vtab_root: Path) -> None:
    make_vtab("mytask")
    for alias, canon in (("train", "train800"), ("val", "val200"), ("trainval", "train800val200")):
        a = build_dataset("vtab", vtab_root, "mytask", alias, **KW)
        b = build_dataset("vtab", vtab_root, "mytask", canon, **KW)
        assert a.split == canon
        assert a.targets == b.targets and a.paths == b.paths


def test_known_task_uses_table_count_and_group(make_vtab, vtab_root: Path) -> None:
    make_vtab("kitti", train=[0, 1], val=[1], test=[0])
    ds = build_dataset("vtab", vtab_root, "kitti", "test", **KW)
    assert ds.num_classes == 4
    assert ds.group == "structured"


def test_classes_file_gives_names_and_count(make_vtab, vtab_root: Path) -> None:
    make_vtab("mytask", train=[0, 1], val=[0], test=[1], classes=["cat", "dog", "emu"])
    ds = build_dataset("vtab", vtab_root, "mytask", "train800", **KW)
    assert ds.num_classes == 3
    assert ds.classes == ["cat", "dog", "emu"]


def test_group_from_meta_json(make_vtab, vtab_root: Path) -> None:
    tdir = make_vtab("mytask")
    (tdir / "meta.json").write_text(json.dumps({"group": "specialized"}))
    assert build_dataset("vtab", vtab_root, "mytask", "test", **KW).group == "specialized"


def test_paths_with_spaces_and_blank_lines(make_vtab, vtab_root: Path, write_image) -> None:
    tdir = make_vtab("mytask")
    write_image(tdir / "images" / "odd name.png", 7)
    (tdir / "test.txt").write_text("\nimages/odd name.png 2\n\n")
    ds = build_dataset("vtab", vtab_root, "mytask", "test", **KW)
    assert ds.targets == [2]
    assert ds.paths[0].endswith("odd name.png")


# ---------------------------------------------------------------- errors


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"VTAB root folder not found: .*nowhere"):
        build_dataset("vtab", tmp_path / "nowhere", "cifar", "test", **KW)


def test_missing_task_folder_lists_present(make_vtab, vtab_root: Path) -> None:
    make_vtab("mytask")
    with pytest.raises(DataError) as e:
        build_dataset("vtab", vtab_root, "cifar", "test", **KW)
    msg = str(e.value)
    assert str(vtab_root / "cifar") in msg and "mytask" in msg


def test_missing_split_file(make_vtab, vtab_root: Path) -> None:
    tdir = make_vtab("mytask")
    (tdir / "val200.txt").unlink()
    with pytest.raises(DataError) as e:
        build_dataset("vtab", vtab_root, "mytask", "val200", **KW)
    assert str(tdir / "val200.txt") in str(e.value)
    assert "train800.txt" in str(e.value)  # lists what is present


def test_unknown_split_name(make_vtab, vtab_root: Path) -> None:
    make_vtab("mytask")
    with pytest.raises(DataError, match="unknown VTAB split 'dev'"):
        build_dataset("vtab", vtab_root, "mytask", "dev", **KW)


def test_missing_image_names_file_and_line(make_vtab, vtab_root: Path) -> None:
    tdir = make_vtab("mytask", test=[0, 1, 2])
    (tdir / "images" / "test" / "000001.png").unlink()
    with pytest.raises(DataError) as e:
        build_dataset("vtab", vtab_root, "mytask", "test", **KW)
    assert f"{tdir / 'test.txt'}:2" in str(e.value)
    assert "images/test/000001.png" in str(e.value)


@pytest.mark.parametrize(
    "bad, expect",
    [("images/test/000000.png", "malformed line"), ("images/test/000000.png x", "not an integer")],
)
def test_malformed_line_names_file_and_line(make_vtab, vtab_root: Path, bad, expect) -> None:
    tdir = make_vtab("mytask", test=[0, 1])
    (tdir / "test.txt").write_text(f"images/test/000001.png 1\n{bad}\n")
    with pytest.raises(DataError) as e:
        build_dataset("vtab", vtab_root, "mytask", "test", **KW)
    assert f"{tdir / 'test.txt'}:2" in str(e.value) and expect in str(e.value)


def test_negative_label(make_vtab, vtab_root: Path) -> None:
    tdir = make_vtab("mytask")
    (tdir / "test.txt").write_text("images/test/000000.png -1\n")
    with pytest.raises(DataError, match=r"test\.txt:1: negative label -1"):
        build_dataset("vtab", vtab_root, "mytask", "test", **KW)


def test_label_outside_known_task_count(make_vtab, vtab_root: Path) -> None:
    tdir = make_vtab("kitti", train=[0, 1, 3], val=[4], test=[0])
    with pytest.raises(DataError) as e:
        build_dataset("vtab", vtab_root, "kitti", "val200", **KW)
    msg = str(e.value)
    assert f"{tdir / 'val200.txt'}:1" in msg and "label 4" in msg and "4 classes" in msg


def test_label_outside_classes_file(make_vtab, vtab_root: Path) -> None:
    tdir = make_vtab("mytask", train=[0, 1, 2], val=[0], test=[1], classes=["a", "b"])
    with pytest.raises(DataError) as e:
        build_dataset("vtab", vtab_root, "mytask", "train800", **KW)
    assert f"{tdir / 'train800.txt'}:3" in str(e.value) and "classes.txt" in str(e.value)


def test_classes_file_disagreeing_with_known_task(make_vtab, vtab_root: Path) -> None:
    tdir = make_vtab("kitti", train=[0], val=[1], test=[2], classes=["a", "b"])
    with pytest.raises(
        DataError, match=r"classes\.txt lists 2 classes but VTAB task 'kitti' has 4"
    ):
        build_dataset("vtab", vtab_root, "kitti", "test", **KW)
    assert tdir.exists()


def test_duplicate_class_name(make_vtab, vtab_root: Path) -> None:
    make_vtab("mytask", classes=["a", "b", "a"])
    with pytest.raises(DataError, match=r"classes\.txt:3: class name 'a' repeats line 1"):
        build_dataset("vtab", vtab_root, "mytask", "test", **KW)


def test_corrupt_image_detected_at_decode(make_vtab, vtab_root: Path) -> None:
    tdir = make_vtab("mytask", test=[0, 1])
    bad = tdir / "images" / "test" / "000001.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    ds = build_dataset("vtab", vtab_root, "mytask", "test", **KW)  # existence check passes
    ds[0]
    with pytest.raises(DataError) as e:
        ds[1]
    msg = str(e.value)
    assert str(bad) in msg and f"{tdir / 'test.txt'}:2" in msg


def test_not_an_image_detected(make_vtab, vtab_root: Path) -> None:
    tdir = make_vtab("mytask", test=[0])
    (tdir / "images" / "test" / "000000.png").write_text("hello")
    ds = build_dataset("vtab", vtab_root, "mytask", "test", **KW)
    with pytest.raises(DataError, match="cannot decode image .*000000.png"):
        ds.preload()


def test_parse_split_file_values(tmp_path: Path) -> None:
    p = tmp_path / "s.txt"
    p.write_text("a/b.jpg 3\n\n c.jpg   0 \n")
    lines = parse_split_file(p)
    assert [(x.rel_path, x.label, x.line) for x in lines] == [("a/b.jpg", 3, 1), ("c.jpg", 0, 3)]

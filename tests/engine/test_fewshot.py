"""Low-resource runs (``data.shots``): the class-balanced draw, its file, resume and leakage.

Data: the project's offline ``digits`` task (``mosa.data.prepare_tasks``, 100 images per split)
and a tiny random ViT; what is checked is which images are used, not how well they are learnt.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from mosa.data import DataError, build_dataset, few_shot_indices, load_indices, prepare_tasks
from mosa.engine import DataConfig, OptimConfig, ResumeError, TrainConfig, train
from mosa.engine.data import build_tasks

VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vtab")
    prepare_tasks(path, ["digits"], seed=0, limit=100)
    return path


def _data(root: Path, **kw: Any) -> DataConfig:
    settings: dict[str, Any] = {
        "kind": "vtab",
        "root": str(root),
        "task": "digits",
        "train_split": "train800",
        "val_split": None,
        "test_split": "test",
        "shots": 2,
        "img_size": 32,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
    }
    settings.update(kw)
    return DataConfig(**settings)


def _config(root: Path, out: Path, seed: int = 0, epochs: int = 1, **data: Any) -> TrainConfig:
    return TrainConfig(
        backbone="vit_tiny_patch16_224",
        pretrained=False,
        backbone_kwargs=dict(VIT),
        method={"method": "mosa", "bottleneck": 8, "num_experts": 4},
        data=[_data(root, **data)],
        optim=OptimConfig(lr=1e-2, epochs=epochs, warmup_epochs=0, batch_size=8),
        seed=seed,
        out=str(out),
        device="cpu",
    )


def _split(root: Path, split: str) -> Any:
    return build_dataset(
        "vtab", root, "digits", split, img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, train=False
    )


def test_draw_is_balanced_seeded_written_and_never_validated_or_tested_on(
    root: Path, tmp_path: Path
) -> None:
    train_split, test_split = _split(root, "train800"), _split(root, "test")
    targets = train_split.targets
    summary = train(_config(root, tmp_path / "s0"), progress=False)

    drawn = load_indices(tmp_path / "s0" / "shots_digits.json", targets=targets)
    assert Counter(targets[i] for i in drawn) == {c: 2 for c in range(10)}  # class balance
    assert drawn == few_shot_indices(targets, 2, seed=0)
    val = load_indices(tmp_path / "s0" / "shots_digits_val.json", targets=targets)
    assert Counter(targets[i] for i in val) == {c: 2 for c in range(10)}  # val_shots = shots
    task = summary["tasks"]["digits"]
    assert (task["train_size"], task["val_size"], task["test_size"]) == (20, 20, 100)
    assert task["shots"] == 2 and task["shots_file"] == str(tmp_path / "s0" / "shots_digits.json")
    assert summary["val_acc"] is not None and task["val_note"] is None

    # no drawn image in validation or test, compared by file path
    drawn_paths = {train_split.paths[i] for i in drawn}
    assert len(drawn_paths) == 20
    assert not drawn_paths & {train_split.paths[i] for i in val}
    assert not drawn_paths & set(test_split.paths)

    # same seed, same draw; another seed, another draw
    train(_config(root, tmp_path / "again"), progress=False)
    assert load_indices(tmp_path / "again" / "shots_digits.json") == drawn
    train(_config(root, tmp_path / "s1", seed=1), progress=False)
    other = load_indices(tmp_path / "s1" / "shots_digits.json", targets=targets)
    assert other != drawn and Counter(targets[i] for i in other) == {c: 2 for c in range(10)}


def test_drawn_images_are_removed_from_a_val_split_inside_the_train_split(
    root: Path, tmp_path: Path
) -> None:
    # train800val200 contains val200: validation keeps only the val200 images not drawn
    dcfg = _data(root, train_split="train800val200", val_split="val200", shots=3)
    (task,) = build_tasks([dcfg], seed=5, out=tmp_path)
    drawn = set(task.train.paths)
    val200 = set(_split(root, "val200").paths)
    assert len(drawn) == 30 and drawn & val200  # this draw does take some val200 images
    assert task.val is not None and set(task.val.paths) == val200 - drawn
    assert task.train.base.pipeline.train  # the training subset keeps its augmentation flag
    assert (tmp_path / "shots_digits.json").is_file()
    assert not (tmp_path / "shots_digits_val.json").exists()  # a val split exists

    # validation drawn from the rest of the train split is read without augmentation
    (task,) = build_tasks([_data(root)], seed=5, out=tmp_path / "rest")
    assert not task.val.base.pipeline.train and task.train.base.pipeline.train
    assert set(task.val.paths).isdisjoint(task.train.paths)
    # the smallest classes have 7 images: after 5 drawn, 2 are left for validation, which
    # caps the default val_shots (= shots); an explicit val_shots=4 cannot be met
    (task,) = build_tasks([_data(root, shots=5)], seed=5)
    assert set(Counter(task.val.targets).values()) == {2}
    with pytest.raises(DataError, match="fewer than 4"):
        build_tasks([_data(root, val_shots=4, shots=5)], seed=5)

    # a test split holding a drawn image is an error, never a silent overlap
    with pytest.raises(DataError, match="contains .* drawn for training"):
        build_tasks([_data(root, test_split="train800")], seed=5)


def test_resume_reads_the_drawn_indices_back(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = train(_config(root, tmp_path / "a", epochs=2), progress=False)

    class Crash(Exception):
        pass

    def crash(record: dict[str, Any]) -> None:
        raise Crash

    cfg = _config(root, tmp_path / "b", epochs=2)
    with pytest.raises(Crash):
        train(cfg, progress=False, on_epoch_end=crash)
    written = (tmp_path / "b" / "shots_digits.json").read_text()
    shutil.copytree(tmp_path / "b", tmp_path / "c")

    import mosa.data.fewshot as fewshot

    def no_draw(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a resumed run must not draw its subset again")

    monkeypatch.setattr(fewshot, "few_shot_indices", no_draw)
    monkeypatch.setattr(fewshot, "few_shot_split", no_draw)
    resumed = train(cfg, resume=True, progress=False)
    assert (tmp_path / "b" / "shots_digits.json").read_text() == written
    assert resumed["resumed_from_epoch"] == 1
    assert resumed["tasks"]["digits"]["val_acc"] == straight["tasks"]["digits"]["val_acc"]
    a = load_file(str(tmp_path / "a" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter" / "adapter.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # without its indices file a few-shot run cannot be resumed
    (tmp_path / "c" / "shots_digits.json").unlink()
    with pytest.raises(ResumeError, match="shots_digits.json is missing"):
        train(dataclasses.replace(cfg, out=str(tmp_path / "c")), resume=True, progress=False)

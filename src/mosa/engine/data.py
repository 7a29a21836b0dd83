"""Tasks (one data set with its splits) and their loaders, for one process of a (DDP) job.

A run trains on a list of :class:`TaskData`: one for a single-task run, several for multi-task
training (one head per task, see :mod:`mosa.heads`).

Low-resource runs (``data.shots = k``) train on k images per class drawn from the train split
(class-balanced, seeded by the run seed). The drawn indices are written next to the run as
``shots_<task>.json`` (``mosa.data.save_indices`` format) and a resumed run reads them back
instead of drawing again. Without a val split, validation is drawn from the train images that
were not drawn (``val_shots`` per class, ``shots_<task>_val.json``); drawn images are removed
from a val split that contains some, and a test split that contains one is an error.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import mosa.backbones.zoo  # noqa: F401  (registers mosa_vit_fmnist with timm)
from mosa.data import IMAGENET_MEAN, IMAGENET_STD, DataError, build_dataset, fewshot
from mosa.data.fewshot import load_indices, save_indices
from mosa.engine.config import DataConfig, TrainConfig
from mosa.engine.distributed import DistInfo
from mosa.engine.errors import ClassCountError, ResumeError

log = logging.getLogger("mosa.engine")


@dataclass
class TaskData:
    """The splits of one task. ``val`` is None when absent or when it is not a held-out set
    (then ``val_note`` says why)."""

    name: str
    train: Dataset
    val: Dataset | None
    test: Dataset | None
    num_classes: int
    val_note: str | None = None
    shots: int | None = None  # k images per class drawn from the train split (None: all)
    shots_file: str | None = None  # where the drawn indices are written / read


class LabelledSubset(Dataset):
    """A subset that keeps the label metadata (``targets``, ``classes``, ``num_classes``,
    ``paths``) the engine needs, unlike ``torch.utils.data.Subset``."""

    def __init__(self, base: Dataset, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]
        all_targets = dataset_targets(base)
        self.targets = [all_targets[i] for i in self.indices]
        self.num_classes = dataset_num_classes(base)
        self.classes = list(getattr(base, "classes", [])) or None
        base_paths = getattr(base, "paths", None)
        self.paths = [base_paths[i] for i in self.indices] if base_paths is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.indices[i]]


# ----------------------------------------------------------------------------- label metadata
def dataset_targets(ds: Dataset) -> list[int]:
    """Integer labels of every item, from ``targets`` or a TensorDataset's second tensor."""
    targets = getattr(ds, "targets", None)
    if targets is None and hasattr(ds, "tensors") and len(ds.tensors) >= 2:
        targets = ds.tensors[1]
    if targets is None:
        raise ValueError(
            f"{type(ds).__name__} exposes no labels: give it a 'targets' list (mosa.data "
            "datasets do) or use a TensorDataset(images, labels)"
        )
    if torch.is_tensor(targets):
        return [int(t) for t in targets.tolist()]
    return [int(t) for t in targets]


def dataset_num_classes(ds: Dataset) -> int:
    """``num_classes`` if the data set states it, else ``len(classes)``, else max label + 1."""
    n = getattr(ds, "num_classes", None)
    if n is not None:
        return int(n)
    classes = getattr(ds, "classes", None)
    if classes:
        return len(classes)
    targets = dataset_targets(ds)
    return max(targets) + 1 if targets else 0


def head_outputs(model: nn.Module) -> int | None:
    """Number of outputs of the model's classifier head (None if it has no linear head)."""
    get = getattr(model, "get_classifier", None)
    head = get() if get is not None else None
    if isinstance(head, nn.Linear):
        return head.out_features
    n = getattr(model, "num_classes", None)
    return int(n) if n else None


def check_class_count(model: nn.Module, task: TaskData) -> None:
    """The head must have one output per class, and every label must be one of them."""
    outputs = head_outputs(model)
    if outputs != task.num_classes:
        raise ClassCountError(
            f"task {task.name!r} has {task.num_classes} classes but the model's classifier head "
            f"has {outputs} outputs; build the model with num_classes={task.num_classes} "
            "(or pass no model and let mosa.engine.train build it)"
        )
    for split, ds in (("train", task.train), ("val", task.val), ("test", task.test)):
        if ds is None:
            continue
        targets = dataset_targets(ds)
        if targets and (min(targets) < 0 or max(targets) >= outputs):
            raise ClassCountError(
                f"task {task.name!r}: the {split} split has labels in "
                f"{min(targets)}..{max(targets)}, outside 0..{outputs - 1}"
            )


def check_task_labels(task: TaskData) -> None:
    """Every label of every split must be one of the task's ``num_classes`` classes."""
    for split, ds in (("train", task.train), ("val", task.val), ("test", task.test)):
        if ds is None:
            continue
        targets = dataset_targets(ds)
        if targets and (min(targets) < 0 or max(targets) >= task.num_classes):
            raise ClassCountError(
                f"task {task.name!r}: the {split} split has labels in "
                f"{min(targets)}..{max(targets)}, outside 0..{task.num_classes - 1}"
            )


def val_inside_train(train: Dataset, val: Dataset, dcfg: DataConfig | None) -> bool:
    """Whether the val split's images are all training images (VTAB's val200 is part of
    train800val200), decided by image paths when both splits have them, else by split names."""
    train_paths = getattr(train, "paths", None)
    val_paths = getattr(val, "paths", None)
    if train_paths is not None and val_paths is not None:
        return set(val_paths) <= set(train_paths)
    if dcfg is None:
        return False
    joint = {"trainval", "train800val200"}
    return dcfg.train_split in joint and dcfg.val_split in {"val", "val200"}


# ----------------------------------------------------------------------------- building
def resolve_input(
    config: TrainConfig, model: nn.Module | None
) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Image size, mean and std of the backbone (from the model, or timm's registry)."""
    cfg: Mapping[str, Any] = {}
    size: Any = None
    if model is not None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    else:
        from timm.models import get_pretrained_cfg

        try:
            found = get_pretrained_cfg(config.backbone)
        except (RuntimeError, KeyError, ValueError):
            found = None
        cfg = found.to_dict() if found is not None else {}
        size = config.backbone_kwargs.get("img_size")
    if size is None and cfg.get("input_size"):
        size = cfg["input_size"][-1]
    if isinstance(size, (tuple, list)):
        size = size[-1]
    mean, std = cfg.get("mean"), cfg.get("std")
    if size is None or not mean or not std:
        log.warning(
            "no pretrained_cfg for backbone %r: using image size 224 and ImageNet mean/std "
            "unless the data config sets them",
            config.backbone,
        )
        mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    return int(size or 224), tuple(float(x) for x in mean), tuple(float(x) for x in std)


def resolve_data_configs(
    config: TrainConfig, size: int, mean: Sequence[float], std: Sequence[float]
) -> list[DataConfig]:
    """The data configs with image size and normalisation filled in from the backbone."""
    return [
        dataclasses.replace(
            d,
            img_size=d.img_size or size,
            mean=tuple(d.mean or mean),
            std=tuple(d.std or std),
        )
        for d in config.data
    ]


def shots_paths(out: str | os.PathLike[str], label: str) -> tuple[Path, Path]:
    """Files of a task's few-shot draw: ``out/shots_<task>.json`` (train) and
    ``out/shots_<task>_val.json`` (validation drawn from the rest, when there is no val split)."""
    out = Path(out)
    return out / f"shots_{label}.json", out / f"shots_{label}_val.json"


def _draw_shots(targets: Sequence[int], dcfg: DataConfig, seed: int) -> tuple[list[int], Any]:
    """Fresh draw: (train indices, validation indices or None when the config has a val
    split). Validation takes ``val_shots`` (default: ``shots``, capped by what every class has
    left) per class from the undrawn images."""
    shots = int(dcfg.shots)  # type: ignore[arg-type]
    if dcfg.val_split is not None:
        return fewshot.few_shot_indices(targets, shots, seed), None
    counts = Counter(int(t) for t in targets)
    left = min(counts.values()) - shots if counts else 0
    val_shots = dcfg.val_shots if dcfg.val_shots is not None else min(shots, left)
    if val_shots < 1:
        return fewshot.few_shot_indices(targets, shots, seed), []
    return fewshot.few_shot_split(targets, shots, val_shots, seed)


def _paths(ds: Dataset | None) -> list[str] | None:
    paths = getattr(ds, "paths", None) if ds is not None else None
    return [os.path.normpath(str(p)) for p in paths] if paths is not None else None


def _apply_shots(
    dcfg: DataConfig,
    splits: Mapping[str, Dataset | None],
    seed: int,
    out: str | os.PathLike[str] | None,
    resume: bool,
    write: bool,
) -> tuple[Dataset, Dataset | None, str | None, str | None]:
    """(train subset, val, val note, indices file) of a few-shot task."""
    train_full = splits["train"]
    assert train_full is not None
    targets = dataset_targets(train_full)
    label = dcfg.label
    path = val_path = None
    if out is not None:
        path, val_path = shots_paths(out, label)
    if resume and path is not None:
        if not path.is_file():
            raise ResumeError(
                f"{path} is missing: the resumed run must train on the images it drew "
                f"({dcfg.shots} per class); restore the file or start a new run"
            )
        idx = load_indices(path, targets=targets)
        val_idx = None
        if dcfg.val_split is None:
            if not val_path.is_file():  # type: ignore[union-attr]
                raise ResumeError(f"{val_path} is missing: restore it or start a new run")
            val_idx = load_indices(val_path, targets=targets)  # type: ignore[arg-type]
        log.info("task %r: re-using the %d-shot draw in %s", label, dcfg.shots, path)
    else:
        idx, val_idx = _draw_shots(targets, dcfg, seed)
        if write and path is not None:
            meta = {"task": label, "split": dcfg.train_split, "shots": dcfg.shots, "seed": seed}
            save_indices(path, idx, targets=targets, role="train", **meta)
            if val_idx is not None:
                save_indices(val_path, val_idx, targets=targets, role="val", **meta)  # type: ignore[arg-type]
    train = LabelledSubset(train_full, idx)
    note = None
    val = splits["val"]
    drawn = set(_paths(train) or [])
    if val_idx is not None:
        # validation from the undrawn train images, without the training augmentation
        source = splits.get("train_eval") or train_full
        if not set(val_idx).isdisjoint(idx):
            raise DataError(f"{val_path}: validation indices overlap the drawn training images")
        val = LabelledSubset(source, val_idx) if val_idx else None
        if val is None:
            note = (
                f"no validation: every class of {dcfg.train_split!r} has at most "
                f"{dcfg.shots} images, all drawn for training"
            )
    elif val is not None and drawn:
        val_paths = _paths(val)
        if val_paths is not None:
            keep = [i for i, p in enumerate(val_paths) if p not in drawn]
            if len(keep) < len(val_paths):
                log.info(
                    "task %r: %d drawn training images removed from the val split",
                    label,
                    len(val_paths) - len(keep),
                )
                val = LabelledSubset(val, keep) if keep else None
                if val is None:
                    note = f"no validation: every image of {dcfg.val_split!r} was drawn"
    test_paths = _paths(splits["test"])
    if drawn and test_paths is not None:
        shared = drawn.intersection(test_paths)
        if shared:
            raise DataError(
                f"task {label!r}: the test split {dcfg.test_split!r} contains {len(shared)} "
                f"image(s) drawn for training (e.g. {sorted(shared)[0]}); fix the split files"
            )
    return train, val, note, str(path) if path is not None else None


def build_tasks(
    data_configs: Sequence[DataConfig],
    seed: int,
    datasets: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    write: bool = True,
) -> list[TaskData]:
    """One :class:`TaskData` per data config, from ``mosa.data.build_dataset`` or from
    pre-built data sets: a mapping ``{"train": ds, "val": ds or None, "test": ds or None}``
    (one task) or a list of such mappings (one per data config); an optional ``"train_eval"``
    entry (the train split without augmentation) is where few-shot validation is drawn from.

    Few-shot configs draw their training subset with ``seed`` and write it under ``out``
    (when ``write``, i.e. on rank 0); with ``resume`` the subset is read back from there.
    """
    if datasets is not None:
        given = [datasets] if isinstance(datasets, Mapping) else list(datasets)
        if len(given) != len(data_configs):
            raise ValueError(
                f"{len(given)} pre-built data set group(s) for {len(data_configs)} data config(s)"
            )
        for g in given:
            if "train" not in g:
                raise ValueError("pre-built data sets need a 'train' entry (and optional val/test)")
    tasks = []
    for i, dcfg in enumerate(data_configs):
        if datasets is not None:
            splits = {k: given[i].get(k) for k in ("train", "val", "test", "train_eval")}
        else:
            splits = _build_splits(dcfg)
        train, val, note, shots_file = splits["train"], splits["val"], None, None
        if dcfg.shots is not None:
            train, val, note, shots_file = _apply_shots(dcfg, splits, seed, out, resume, write)
        if val is not None and val_inside_train(train, val, dcfg):
            note = (
                f"val split {dcfg.val_split!r} is contained in the train split "
                f"{dcfg.train_split!r}: it is not held out, so no validation accuracy is reported"
            )
            val = None
        num_classes = dataset_num_classes(train)
        tasks.append(
            TaskData(
                dcfg.label,
                train,
                val,
                splits["test"],
                num_classes,
                note,
                shots=dcfg.shots,
                shots_file=shots_file,
            )
        )
    return tasks


def _build_splits(dcfg: DataConfig) -> dict[str, Dataset | None]:
    def make(split: str | None, train: bool) -> Dataset | None:
        if split is None:
            return None
        return build_dataset(
            dcfg.kind,
            dcfg.root,
            dcfg.task,
            split,
            img_size=int(dcfg.img_size),  # resolved before this is called
            mean=dcfg.mean,
            std=dcfg.std,
            train=train,
            cache=dcfg.cache,
        )

    # few-shot validation drawn from the train split is read without training augmentation
    eval_copy = dcfg.shots is not None and dcfg.val_split is None
    return {
        "train": make(dcfg.train_split, True),
        "val": make(dcfg.val_split, False),
        "test": make(dcfg.test_split, False),
        "train_eval": make(dcfg.train_split, False) if eval_copy else None,
    }


# ----------------------------------------------------------------------------- loaders
def per_rank_batch(global_batch: int, info: DistInfo) -> int:
    if global_batch % info.world_size:
        raise ValueError(
            f"optim.batch_size={global_batch} is the global batch and must be divisible by the "
            f"number of processes ({info.world_size})"
        )
    return global_batch // info.world_size


def train_loader(
    ds: Dataset, batch_size: int, info: DistInfo, seed: int, num_workers: int
) -> tuple[DataLoader, DistributedSampler, torch.Generator]:
    """Shuffled loader of this rank's share of every global batch.

    The order is ``randperm(n)`` seeded with ``seed + epoch`` (``sampler.set_epoch``) and rank r
    takes items r, r+W, ... of it, so W ranks together see exactly the single-process global
    batches when n is divisible by W (otherwise DistributedSampler repeats < W items per epoch).
    The returned generator seeds the loader workers; reseed it per epoch for exact resumes.
    """
    sampler = DistributedSampler(
        ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=False
    )
    gen = torch.Generator()
    if num_workers > 0 and hasattr(ds, "preload"):
        ds.preload()  # the decoded-image cache lives in this process, not in the workers
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=info.device.type == "cuda",
        drop_last=False,
        generator=gen,
    )
    return loader, sampler, gen


def eval_loader(ds: Dataset, batch_size: int, info: DistInfo, num_workers: int) -> DataLoader:
    """This rank's disjoint share (items r, r+W, ...) with no padding, so summed counts are exact."""
    shard = torch.utils.data.Subset(ds, range(info.rank, len(ds), info.world_size))
    return DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=info.device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )

"""Data layer: VTAB-1k, FGVC, image folders and torchvision sets behind one ``build_dataset``.

Every dataset yields ``(float tensor [3, img_size, img_size], int label)`` and exposes
``num_classes``, ``targets`` and ``classes``. All bad input raises :class:`DataError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .base import FileImageDataset, ImageDataset
from .cache import DEFAULT_CACHE_MAX_BYTES, UInt8Cache
from .errors import DataError
from .fewshot import (
    few_shot_indices,
    few_shot_split,
    holdout_split,
    load_indices,
    remaining_indices,
    save_indices,
)
from .fgvc import FGVC_SETS, FgvcDataset, FgvcSpec
from .folder import FolderDataset
from .general import GENERAL_SETS, GeneralDataset
from .prepare import PREPARE_TASKS, TASK_GROUPS, PreparedTask, prepare_tasks
from .transforms import IMAGENET_MEAN, IMAGENET_STD, ImagePipeline, build_transform, load_image
from .vtab import VTAB_TASKS, VtabDataset

KINDS = ("vtab", "fgvc", "folder", "cifar100", "food101", "aircraft")

__all__ = [
    "DEFAULT_CACHE_MAX_BYTES",
    "FGVC_SETS",
    "GENERAL_SETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KINDS",
    "PREPARE_TASKS",
    "TASK_GROUPS",
    "VTAB_TASKS",
    "DataError",
    "FgvcDataset",
    "FgvcSpec",
    "FileImageDataset",
    "FolderDataset",
    "GeneralDataset",
    "ImageDataset",
    "ImagePipeline",
    "PreparedTask",
    "UInt8Cache",
    "VtabDataset",
    "build_dataset",
    "build_transform",
    "few_shot_indices",
    "few_shot_split",
    "holdout_split",
    "load_image",
    "load_indices",
    "prepare_tasks",
    "remaining_indices",
    "save_indices",
]


def build_dataset(
    kind: str,
    root: str | os.PathLike[str],
    task: str | None,
    split: str,
    *,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    cache: bool = True,
    interpolation: str | None = None,
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
) -> ImageDataset:
    """Build one split of a data set.

    kind:
      - ``vtab``: ``root/<task>/{train800,val200,train800val200,test}.txt``; split is one of
        those names or ``train``/``val``/``trainval`` (= train800/val200/train800val200).
        Resize to ``img_size``, no augmentation, whatever ``train`` says.
      - ``fgvc``: VPT layout; ``task`` one of FGVC_SETS (``cub``, ``nabirds``,
        ``oxford_flowers``, ``stanford_dogs``, ``stanford_cars``); root is the FGVC parent
        folder or the set folder; split train/val/trainval/test.
      - ``folder``: ``root[/task]/<split>/<class>/<images>``.
      - ``cifar100``, ``food101``, ``aircraft``: torchvision layout under root (task ignored).

    ``train`` picks the training augmentation (random crop + flip) for every kind but vtab.
    ``mean``/``std`` are the backbone's normalisation (its pretrained_cfg).
    """
    if kind not in KINDS:
        raise DataError(f"unknown data kind {kind!r}; choose from {', '.join(KINDS)}")
    policy = "vtab" if kind == "vtab" else "crop"
    pipeline = build_transform(
        policy, img_size, mean, std, train=train, interpolation=interpolation
    )
    common = {"cache": cache, "cache_max_bytes": cache_max_bytes}
    if kind == "vtab":
        if not task:
            raise DataError("kind 'vtab' needs a task name (the folder under root)")
        return VtabDataset(root, task, split, pipeline, **common)
    if kind == "fgvc":
        if not task:
            raise DataError(f"kind 'fgvc' needs a set name: one of {sorted(FGVC_SETS)}")
        return FgvcDataset(root, task, split, pipeline, **common)
    if kind == "folder":
        base = os.path.join(root, task) if task else root
        return FolderDataset(base, split, pipeline, **common)
    return GeneralDataset(kind, root, split, pipeline, **common)

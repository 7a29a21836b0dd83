"""General classification sets, never downloading: CIFAR-100 through torchvision, Food-101 and
FGVC-Aircraft from their annotation files (read as torchvision reads them, in the same order).

Splits: ``train``/``val``/``trainval``/``test``. FGVC-Aircraft has all four officially. CIFAR-100
and Food-101 only have train/test: there ``trainval`` is the official train set and
``train``/``val`` a fixed stratified hold-out of it (``val_fraction``, ``val_seed``), so that
model selection never touches the test set.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .base import ImageDataset
from .cache import DEFAULT_CACHE_MAX_BYTES
from .errors import DataError
from .fewshot import holdout_split
from .transforms import ImagePipeline, load_image


@dataclass(frozen=True)
class GeneralSpec:
    """torchvision class name, folder it expects under root, class count, archive hint."""

    title: str
    folder: str
    num_classes: int
    archive: str


GENERAL_SETS: dict[str, GeneralSpec] = {
    "cifar100": GeneralSpec("CIFAR-100", "cifar-100-python", 100, "cifar-100-python.tar.gz"),
    "food101": GeneralSpec("Food-101", "food-101", 101, "food-101.tar.gz"),
    "aircraft": GeneralSpec(
        "FGVC-Aircraft", "fgvc-aircraft-2013b", 100, "fgvc-aircraft-2013b.tar.gz"
    ),
}

GENERAL_SPLITS = ("train", "val", "trainval", "test")


def _tv_root(root: str | os.PathLike[str], spec: GeneralSpec) -> Path:
    """torchvision's ``root`` (the parent of ``spec.folder``); accepts the folder itself too."""
    r = Path(root).expanduser()
    if r.name == spec.folder:
        r = r.parent
    if not (r / spec.folder).is_dir():
        raise DataError(
            f"{spec.title} not found: expected the folder {r / spec.folder}. Data is never "
            f"downloaded here; extract {spec.archive} into {r} (or, on a machine with network, "
            f"download it with torchvision's download=True and copy the folder)."
        )
    return r


def _cifar100(tv_root: Path, train: bool) -> tuple[np.ndarray, list[int], list[str]]:
    """CIFAR-100's images (uint8 ``[N, 32, 32, 3]``, in memory), fine labels and class names,
    read by torchvision."""
    import torchvision.datasets as tvd  # heavy: only for the set that needs it

    ds = tvd.CIFAR100(str(tv_root), train=train, download=False)
    return ds.data, [int(t) for t in ds.targets], list(ds.classes)


def _food101(folder: Path, split: str) -> tuple[list[str], list[int], list[str]]:
    """Food-101's image paths, labels and classes from ``meta/<split>.json`` (class -> image
    names), in the order torchvision lists them: classes sorted, images as the file has them."""
    metadata = json.loads((folder / "meta" / f"{split}.json").read_text())
    classes = sorted(metadata)
    index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    for c, names in metadata.items():
        labels += [index[c]] * len(names)
        paths += [os.fspath(folder.joinpath("images", *f"{n}.jpg".split("/"))) for n in names]
    return paths, labels, classes


def _aircraft(folder: Path, split: str) -> tuple[list[str], list[int], list[str]]:
    """FGVC-Aircraft's image paths, variant labels and variant names from
    ``data/images_variant_<split>.txt`` (``<image> <variant>`` per line) and ``variants.txt``."""
    data = folder / "data"
    classes = [line.strip() for line in (data / "variants.txt").read_text().splitlines()]
    index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    for line in (data / f"images_variant_{split}.txt").read_text().splitlines():
        image, variant = line.strip().split(" ", 1)
        paths.append(os.path.join(data, "images", f"{image}.jpg"))
        labels.append(index[variant])
    return paths, labels, classes


class GeneralDataset(ImageDataset):
    """CIFAR-100, Food-101 or FGVC-Aircraft (variant level) with the mosa pipeline and cache."""

    def __init__(
        self,
        kind: str,
        root: str | os.PathLike[str],
        split: str,
        pipeline: ImagePipeline,
        *,
        val_fraction: float = 0.1,
        val_seed: int = 0,
        cache: bool = True,
        cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
    ) -> None:
        if kind not in GENERAL_SETS:
            raise DataError(f"unknown general set {kind!r}; choose from {sorted(GENERAL_SETS)}")
        if split not in GENERAL_SPLITS:
            raise DataError(f"unknown split {split!r} for {kind}; use one of {GENERAL_SPLITS}")
        spec = GENERAL_SETS[kind]
        tv_root = _tv_root(root, spec)
        native = split if kind == "aircraft" else ("test" if split == "test" else "train")
        try:
            if kind == "cifar100":
                self._array, targets, classes = _cifar100(tv_root, native == "train")
                self._paths: list[str] | None = None
            else:
                read = _food101 if kind == "food101" else _aircraft
                self._array = None
                self._paths, targets, classes = read(tv_root / spec.folder, native)
        except (RuntimeError, OSError, KeyError, ValueError) as e:
            raise DataError(
                f"{spec.title} in {tv_root / spec.folder} is incomplete or corrupt ({e}); "
                f"re-extract {spec.archive} there"
            ) from e
        for p in self._paths or ():
            if not os.path.exists(p):
                raise DataError(
                    f"{spec.title}: image {p} listed in the split annotations is missing; "
                    f"re-extract {spec.archive}"
                )
        if kind != "aircraft" and split in ("train", "val"):
            tr, va = holdout_split(targets, val_fraction, val_seed)
            keep = tr if split == "train" else va
        else:
            keep = list(range(len(targets)))
        self._keep = keep
        self.kind = kind
        self.root = tv_root / spec.folder
        super().__init__(
            targets=[targets[i] for i in keep],
            classes=classes,
            pipeline=pipeline,
            cache=cache,
            cache_max_bytes=cache_max_bytes,
            name=kind,
            split=split,
        )

    def _decode(self, index: int) -> Image.Image:
        j = self._keep[index]
        if self._array is not None:
            return Image.fromarray(self._array[j])
        assert self._paths is not None
        return load_image(self._paths[j], f"{self.name} {self.split} split")

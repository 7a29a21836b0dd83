"""ImageFolder-style directories: ``<root>/<split>/<class>/<image>``.

File discovery reuses torchvision's ``make_dataset`` and extension list. The class list is the
sorted union of class folders over all split folders, so a class missing from one split does
not shift the labels of the others.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from .base import FileImageDataset
from .cache import DEFAULT_CACHE_MAX_BYTES
from .errors import DataError
from .transforms import ImagePipeline

#: split folder names looked for, with the alternatives tried in order
FOLDER_SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "trainval": ("trainval",),
    "test": ("test", "testing"),
}


def _split_dir(base: Path, split: str) -> Path:
    for name in FOLDER_SPLIT_NAMES.get(split, (split,)):
        if (base / name).is_dir():
            return base / name
    have = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    raise DataError(
        f"split folder not found: {base / split} (sub-folders of {base}: "
        f"{', '.join(have) or 'none'}); expected <root>/<split>/<class>/<image files>"
    )


def _class_folders(d: Path) -> set[str]:
    return {p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")}


class FolderDataset(FileImageDataset):
    """One split of an ImageFolder-style directory tree."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        pipeline: ImagePipeline,
        *,
        cache: bool = True,
        cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
    ) -> None:
        base = Path(root).expanduser()
        if not base.is_dir():
            raise DataError(
                f"image folder root not found: {base}; expected <root>/<split>/<class>/<images>"
            )
        sdir = _split_dir(base, split)
        classes = set(_class_folders(sdir))
        if not classes:
            raise DataError(
                f"{sdir} has no class sub-folders; expected {sdir}/<class name>/<image files>"
            )
        for names in FOLDER_SPLIT_NAMES.values():
            for name in names:
                other = base / name
                if other.is_dir() and other != sdir:
                    classes |= _class_folders(other)
        ordered = sorted(classes)
        class_to_idx = {c: i for i, c in enumerate(ordered)}
        samples = make_dataset(str(sdir), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not samples:
            raise DataError(f"no image files under {sdir} (looked for {', '.join(IMG_EXTENSIONS)})")
        self.root = base
        self.split_dir = sdir
        self.class_to_idx = class_to_idx
        super().__init__(
            paths=[p for p, _ in samples],
            targets=[t for _, t in samples],
            classes=ordered,
            pipeline=pipeline,
            cache=cache,
            cache_max_bytes=cache_max_bytes,
            name=base.name,
            split=split,
        )

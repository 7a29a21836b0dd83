"""VTAB-1k in the common NOAH/FacT/V-PETL on-disk layout, and project-made tasks in that layout.

Layout::

    <root>/<task>/train800.txt         lines "<image path relative to <root>/<task>> <label>"
    <root>/<task>/val200.txt
    <root>/<task>/train800val200.txt
    <root>/<task>/test.txt
    <root>/<task>/classes.txt          optional, one class name per line
    <root>/<task>/meta.json            optional, written by ``mosa data prepare``
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .base import FileImageDataset
from .cache import DEFAULT_CACHE_MAX_BYTES
from .errors import DataError, where
from .transforms import ImagePipeline

#: task -> (group, number of classes), for the 19 VTAB-1k tasks.
VTAB_TASKS: dict[str, tuple[str, int]] = {
    "cifar": ("natural", 100),
    "caltech101": ("natural", 102),
    "dtd": ("natural", 47),
    "oxford_flowers102": ("natural", 102),
    "oxford_iiit_pet": ("natural", 37),
    "svhn": ("natural", 10),
    "sun397": ("natural", 397),
    "patch_camelyon": ("specialized", 2),
    "eurosat": ("specialized", 10),
    "resisc45": ("specialized", 45),
    "diabetic_retinopathy": ("specialized", 5),
    "clevr_count": ("structured", 8),
    "clevr_dist": ("structured", 6),
    "dmlab": ("structured", 6),
    "kitti": ("structured", 4),
    "dsprites_loc": ("structured", 16),
    "dsprites_ori": ("structured", 16),
    "smallnorb_azi": ("structured", 18),
    "smallnorb_ele": ("structured", 9),
}

#: canonical split name -> file name
SPLIT_FILES: dict[str, str] = {
    "train800": "train800.txt",
    "val200": "val200.txt",
    "train800val200": "train800val200.txt",
    "test": "test.txt",
}

#: generic names accepted by every data kind -> VTAB split
SPLIT_ALIASES: dict[str, str] = {"train": "train800", "val": "val200", "trainval": "train800val200"}


@dataclass(frozen=True)
class SplitLine:
    """One parsed split-file line."""

    rel_path: str
    label: int
    line: int


def canonical_split(split: str) -> str:
    """Map ``train``/``val``/``trainval``/``test`` or a file stem to a VTAB split name."""
    s = SPLIT_ALIASES.get(split, split)
    if s not in SPLIT_FILES:
        raise DataError(
            f"unknown VTAB split {split!r}; use one of {sorted(SPLIT_FILES)} "
            f"or the aliases {sorted(SPLIT_ALIASES)}"
        )
    return s


def parse_split_file(path: Path) -> list[SplitLine]:
    """Parse ``<rel path> <label>`` lines; blank lines are skipped, anything else malformed raises.

    The label is the last whitespace-separated field, so image paths may contain spaces.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"split file not found: {path}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read split file {path}: {e}") from e
    out: list[SplitLine] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DataError(
                f"{where(path, n)}: malformed line {raw!r}; expected '<image path> <label>' "
                "such as 'images/train800val200/000000.jpg 3'"
            )
        rel, lab = parts
        try:
            label = int(lab)
        except ValueError:
            raise DataError(
                f"{where(path, n)}: label {lab!r} is not an integer; expected "
                "'<image path> <integer label>'"
            ) from None
        if label < 0:
            raise DataError(f"{where(path, n)}: negative label {label}; labels start at 0")
        out.append(SplitLine(rel, label, n))
    return out


def read_classes_file(path: Path) -> list[str]:
    """One class name per line; trailing blank lines ignored; duplicates are an error."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read class list {path}: {e}") from e
    while lines and not lines[-1].strip():
        lines.pop()
    names = [s.strip() for s in lines]
    for n, name in enumerate(names, start=1):
        if not name:
            raise DataError(f"{where(path, n)}: empty class name; write one name per line")
    seen: dict[str, int] = {}
    for n, name in enumerate(names, start=1):
        if name in seen:
            raise DataError(
                f"{where(path, n)}: class name {name!r} repeats line {seen[name]}; names must be unique"
            )
        seen[name] = n
    if not names:
        raise DataError(f"{path}: class list is empty; write one class name per line")
    return names


def task_dir(root: str | os.PathLike[str], task: str) -> Path:
    """``<root>/<task>``, checked to exist."""
    rootp = Path(root).expanduser()
    if not rootp.is_dir():
        raise DataError(
            f"VTAB root folder not found: {rootp}. Point it at the folder holding one sub-folder "
            "per task (e.g. vtab-1k/), or create project tasks with 'mosa data prepare'."
        )
    d = rootp / task
    if not d.is_dir():
        have = sorted(p.name for p in rootp.iterdir() if p.is_dir() and not p.name.startswith("."))
        listing = ", ".join(have[:30]) + (" ..." if len(have) > 30 else "") if have else "none"
        raise DataError(
            f"VTAB task folder not found: {d} (task folders in {rootp}: {listing}). "
            "Download/extract the task there or run 'mosa data prepare'."
        )
    return d


def read_task_meta(tdir: Path) -> dict:
    """Contents of ``meta.json`` (written by ``prepare``) or ``{}``."""
    p = tdir / "meta.json"
    if not p.is_file():
        return {}
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {p}: {e}. Fix or delete the file.") from e
    if not isinstance(meta, dict):
        raise DataError(f"{p}: expected a JSON object")
    return meta


def task_classes(tdir: Path, task: str) -> list[str]:
    """Class names of a task: VTAB table, else classes.txt, else 0..max label over all splits."""
    cfile = tdir / "classes.txt"
    if task in VTAB_TASKS:
        n = VTAB_TASKS[task][1]
        if cfile.is_file():
            names = read_classes_file(cfile)
            if len(names) != n:
                raise DataError(
                    f"{cfile} lists {len(names)} classes but VTAB task {task!r} has {n}; "
                    "fix the file or delete it"
                )
            return names
        return [str(i) for i in range(n)]
    if cfile.is_file():
        return read_classes_file(cfile)
    top = -1
    found = False
    for fname in SPLIT_FILES.values():
        p = tdir / fname
        if p.is_file():
            found = True
            for ln in parse_split_file(p):
                top = max(top, ln.label)
    if not found:
        raise DataError(f"no split files in {tdir}; expected {', '.join(SPLIT_FILES.values())}")
    if top < 0:
        raise DataError(f"split files in {tdir} hold no labelled lines")
    return [str(i) for i in range(top + 1)]


class VtabDataset(FileImageDataset):
    """One split of a VTAB-1k (or project-made) task in the NOAH layout.

    Attributes beyond the base: ``task``, ``group`` (natural/specialized/structured or None for
    an unknown user task without meta.json), ``root`` (the task folder), ``split_file``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        task: str,
        split: str,
        pipeline: ImagePipeline,
        *,
        cache: bool = True,
        cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
    ) -> None:
        tdir = task_dir(root, task)
        canon = canonical_split(split)
        split_file = tdir / SPLIT_FILES[canon]
        if not split_file.is_file():
            present = [f for f in SPLIT_FILES.values() if (tdir / f).is_file()]
            raise DataError(
                f"split file not found: {split_file} (present: {', '.join(present) or 'none'}). "
                "A VTAB-1k task needs train800.txt, val200.txt, train800val200.txt and test.txt."
            )
        classes = task_classes(tdir, task)
        lines = parse_split_file(split_file)
        if not lines:
            raise DataError(f"{split_file}: no image lines; the split is empty")
        n_cls = len(classes)
        paths: list[str] = []
        origins: list[str] = []
        for ln in lines:
            loc = where(split_file, ln.line)
            if ln.label >= n_cls:
                what = (
                    f"VTAB task {task!r} has {n_cls} classes"
                    if task in VTAB_TASKS
                    else f"{tdir / 'classes.txt'} lists {n_cls} classes"
                )
                raise DataError(
                    f"{loc}: label {ln.label} is outside 0..{n_cls - 1} ({what}); fix the label"
                )
            p = os.path.join(tdir, ln.rel_path)
            if not os.path.exists(p):
                raise DataError(
                    f"{loc}: image {ln.rel_path!r} not found (looked for {p}); restore the file "
                    "or remove the line"
                )
            paths.append(p)
            origins.append(loc)
        meta = read_task_meta(tdir)
        self.task = task
        self.group: str | None = VTAB_TASKS[task][0] if task in VTAB_TASKS else meta.get("group")
        self.root = tdir
        self.split_file = split_file
        self.meta = meta
        super().__init__(
            paths=paths,
            origins=origins,
            targets=[ln.label for ln in lines],
            classes=classes,
            pipeline=pipeline,
            cache=cache,
            cache_max_bytes=cache_max_bytes,
            name=task,
            split=canon,
        )

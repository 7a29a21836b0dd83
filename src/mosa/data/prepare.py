"""Backends of ``mosa data prepare``: real offline data written in the VTAB-1k layout.

Sources are scikit-learn's digits and the Fashion-MNIST **test** split only: the Fashion-MNIST
train split pretrains the project's own backbone, so no target task may contain its images.
Every task has 800 train + 200 val (``train800val200`` = their union, train first) and a test
split, drawn from disjoint source images, written as 32x32 grayscale PNGs::

    <out>/<task>/images/train800val200/000000.png ...   images/test/000000.png ...
    <out>/<task>/{train800,val200,train800val200,test}.txt, classes.txt, meta.json

Generation is deterministic given ``seed`` (each task gets its own stream derived from the seed
and its name, so the set of tasks requested does not change any task's content).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from . import sources
from .errors import DataError
from .vtab import SPLIT_FILES

GENERATOR_VERSION = 1
CANVAS = 32
N_TRAIN, N_VAL, N_TEST = 800, 200, 1000

FMNIST_SOURCE = "Fashion-MNIST test split (t10k, 10,000 images); the train split is never used"
DIGITS_SOURCE = "scikit-learn digits (1,797 8x8 images)"


@dataclass(frozen=True)
class PrepTask:
    """A project task: its VTAB group, classes and what it is made of."""

    name: str
    group: str
    classes: tuple[str, ...]
    source: str
    description: str
    max_test: int = N_TEST

    @property
    def num_classes(self) -> int:
        return len(self.classes)


_GARMENTS = tuple(sources.FASHION_MNIST_CLASSES)

PREPARE_TASKS: dict[str, PrepTask] = {
    t.name: t
    for t in (
        PrepTask(
            "digits",
            "natural",
            tuple(str(i) for i in range(10)),
            DIGITS_SOURCE,
            "handwritten digit 0-9, upscaled from 8x8 to 32x32 (bicubic)",
            max_test=797,
        ),
        PrepTask(
            "digits_noisy",
            "specialized",
            tuple(str(i) for i in range(10)),
            DIGITS_SOURCE,
            "digit 0-9 under a sensor-like corruption: low contrast, blur, Gaussian noise",
            max_test=797,
        ),
        PrepTask(
            "fmnist_noisy",
            "specialized",
            _GARMENTS,
            FMNIST_SOURCE,
            "garment class under a sensor-like corruption: low contrast, blur, Gaussian noise",
        ),
        PrepTask(
            "fmnist_rot",
            "structured",
            ("rot0", "rot90", "rot180", "rot270"),
            FMNIST_SOURCE,
            "one garment rotated counter-clockwise by 0/90/180/270 degrees; label = rotation",
        ),
        PrepTask(
            "fmnist_loc",
            "structured",
            tuple(f"row{r}_col{c}" for r in range(3) for c in range(3)),
            FMNIST_SOURCE,
            "one garment shrunk to 8-10 px on a black 32x32 canvas in one of 3x3 cells; "
            "label = cell (row-major)",
        ),
        PrepTask(
            "fmnist_count",
            "structured",
            tuple(str(k) for k in range(1, 6)),
            FMNIST_SOURCE,
            "1-5 distinct garments of 8-10 px in distinct 3x3 cells, never overlapping; "
            "label = count - 1",
        ),
        PrepTask(
            "fmnist_scale",
            "structured",
            ("size8", "size14", "size20", "size26"),
            FMNIST_SOURCE,
            "one garment at a random position, side 8/14/20/26 px (+-1); label = size bin",
        ),
    )
}

#: project task -> VTAB group
TASK_GROUPS: dict[str, str] = {name: t.group for name, t in PREPARE_TASKS.items()}


@dataclass
class Split:
    """Generated images of one split and, for provenance checks, the source ids used."""

    images: np.ndarray  # uint8 [N, CANVAS, CANVAS]
    labels: np.ndarray  # int64 [N]
    source_ids: list[np.ndarray] = field(default_factory=list)  # per image: source indices


@dataclass(frozen=True)
class PreparedTask:
    """Outcome of ``prepare_tasks`` for one task."""

    task: str
    path: Path
    status: str  # "written" or "skipped"
    counts: dict[str, int]


# ---------------------------------------------------------------- image helpers


def _resize(img: np.ndarray, size: int, resample=Image.Resampling.BICUBIC) -> np.ndarray:
    out = Image.fromarray(img, mode="L").resize((size, size), resample)
    return np.asarray(out, dtype=np.uint8)


def _pad_to_canvas(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    top, left = (CANVAS - h) // 2, (CANVAS - w) // 2
    out = np.zeros((CANVAS, CANVAS), np.uint8)
    out[top : top + h, left : left + w] = img
    return out


def _paste(canvas: np.ndarray, item: np.ndarray, top: int, left: int) -> None:
    h, w = item.shape
    region = canvas[top : top + h, left : left + w]
    np.maximum(region, item, out=region)  # max-blend: black background stays transparent


def _corrupt(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor-like degradation: contrast loss toward a grey level, blur, strong Gaussian noise."""
    contrast = rng.uniform(0.3, 0.55)
    level = rng.uniform(70, 140)
    x = level + contrast * (img.astype(np.float64) - level)
    radius = rng.uniform(0.6, 1.2)
    blurred = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8), mode="L").filter(
        ImageFilter.GaussianBlur(radius)
    )
    x = np.asarray(blurred, dtype=np.float64)
    x = x + rng.normal(0.0, rng.uniform(25, 40), size=x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _balanced_labels(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % k).astype(np.int64)


def _cell_origin(cell: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a ``size`` item inside 3x3 cell ``cell``, jittered within the cell."""
    r, c = divmod(cell, 3)
    lo_r, hi_r = (r * CANVAS) // 3, ((r + 1) * CANVAS) // 3
    lo_c, hi_c = (c * CANVAS) // 3, ((c + 1) * CANVAS) // 3
    top = lo_r + int(rng.integers(0, max(hi_r - lo_r - size, 0) + 1))
    left = lo_c + int(rng.integers(0, max(hi_c - lo_c - size, 0) + 1))
    return top, left


# ---------------------------------------------------------------- generators

SplitSizes = tuple[int, int, int]
Generator = Callable[[np.random.Generator, SplitSizes], dict[str, Split]]


def _partition(n_source: int, sizes: SplitSizes, rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint random source-id arrays of the given sizes."""
    if sum(sizes) > n_source:
        raise DataError(f"need {sum(sizes)} source images, only {n_source} exist")
    perm = rng.permutation(n_source)
    a, b, _ = sizes
    return [perm[:a], perm[a : a + b], perm[a + b : sum(sizes)]]


def _per_image_task(
    src: tuple[np.ndarray, np.ndarray],
    sizes: SplitSizes,
    rng: np.random.Generator,
    make: Callable[[np.ndarray, int, np.random.Generator], np.ndarray],
    drawn_classes: int | None = None,
) -> dict[str, Split]:
    """One source image per output image, rendered by ``make(image, label, rng)``.

    The label is the source label, or with ``drawn_classes=K`` a balanced draw from 0..K-1
    (the rendered property, e.g. a rotation).
    """
    images, labels = src
    parts = _partition(len(images), sizes, rng)
    out: dict[str, Split] = {}
    for name, ids in zip(("train", "val", "test"), parts, strict=True):
        if drawn_classes is None:
            labs = labels[ids].astype(np.int64)
        else:
            labs = _balanced_labels(len(ids), drawn_classes, rng)
        imgs = np.stack([make(images[i], int(lab), rng) for i, lab in zip(ids, labs, strict=True)])
        out[name] = Split(imgs, labs, [np.array([i]) for i in ids])
    return out


def _digits_up(img: np.ndarray) -> np.ndarray:
    return _resize(img, CANVAS, Image.Resampling.BICUBIC)


def _gen_digits(rng: np.random.Generator, sizes: SplitSizes) -> dict[str, Split]:
    return _per_image_task(sources.load_digits(), sizes, rng, lambda x, _, __: _digits_up(x))


def _gen_digits_noisy(rng: np.random.Generator, sizes: SplitSizes) -> dict[str, Split]:
    return _per_image_task(
        sources.load_digits(), sizes, rng, lambda x, _, r: _corrupt(_digits_up(x), r)
    )


@functools.lru_cache(maxsize=1)
def _fmnist_test() -> tuple[np.ndarray, np.ndarray]:
    # Cached: several tasks draw from the same 10k images; the arrays are never written to.
    try:
        return sources.load_fashion_mnist("test")
    except FileNotFoundError as e:
        raise DataError(str(e)) from e


def _gen_fmnist_noisy(rng: np.random.Generator, sizes: SplitSizes) -> dict[str, Split]:
    return _per_image_task(
        _fmnist_test(), sizes, rng, lambda x, _, r: _corrupt(_pad_to_canvas(x), r)
    )


def _gen_fmnist_rot(rng: np.random.Generator, sizes: SplitSizes) -> dict[str, Split]:
    # np.rot90 is exact (no interpolation, no corner loss), so the rotation is the only cue.
    return _per_image_task(
        _fmnist_test(),
        sizes,
        rng,
        lambda x, lab, _: np.ascontiguousarray(np.rot90(_pad_to_canvas(x), k=lab)),
        drawn_classes=4,
    )


def _loc_image(x: np.ndarray, cell: int, rng: np.random.Generator) -> np.ndarray:
    size = int(rng.integers(8, 11))
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    _paste(canvas, _resize(x, size), *_cell_origin(cell, size, rng))
    return canvas


def _gen_fmnist_loc(rng: np.random.Generator, sizes: SplitSizes) -> dict[str, Split]:
    return _per_image_task(_fmnist_test(), sizes, rng, _loc_image, drawn_classes=9)


_SCALE_SIZES = (8, 14, 20, 26)


def _scale_image(x: np.ndarray, b: int, rng: np.random.Generator) -> np.ndarray:
    size = _SCALE_SIZES[b] + int(rng.integers(-1, 2))
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    top, left = (int(v) for v in rng.integers(0, CANVAS - size + 1, size=2))
    _paste(canvas, _resize(x, size), top, left)
    return canvas


def _gen_fmnist_scale(rng: np.random.Generator, sizes: SplitSizes) -> dict[str, Split]:
    return _per_image_task(_fmnist_test(), sizes, rng, _scale_image, drawn_classes=4)


MAX_COUNT = 5


def _gen_fmnist_count(rng: np.random.Generator, sizes: SplitSizes) -> dict[str, Split]:
    images, _ = _fmnist_test()
    # Source pools sized for the worst case (every image holding MAX_COUNT items), so the
    # train/val/test pools stay disjoint and no source image is used twice.
    pool_sizes = tuple(MAX_COUNT * s for s in sizes)
    if sum(pool_sizes) > len(images):
        raise DataError(f"fmnist_count needs {sum(pool_sizes)} source images, have {len(images)}")
    parts = _partition(len(images), pool_sizes, rng)  # type: ignore[arg-type]
    out: dict[str, Split] = {}
    for name, pool, n in zip(("train", "val", "test"), parts, sizes, strict=True):
        labs = _balanced_labels(n, MAX_COUNT, rng)
        imgs = np.zeros((n, CANVAS, CANVAS), np.uint8)
        used: list[np.ndarray] = []
        cursor = 0
        for j, lab in enumerate(labs):
            count = int(lab) + 1
            ids = pool[cursor : cursor + count]
            cursor += count
            # Distinct cells + items no larger than a cell => items never overlap.
            cells = rng.choice(9, size=count, replace=False)
            for i, cell in zip(ids, cells, strict=True):
                size = int(rng.integers(8, 11))
                _paste(imgs[j], _resize(images[i], size), *_cell_origin(int(cell), size, rng))
            used.append(ids.copy())
        out[name] = Split(imgs, labs, used)
    return out


GENERATORS: dict[str, Generator] = {
    "digits": _gen_digits,
    "digits_noisy": _gen_digits_noisy,
    "fmnist_noisy": _gen_fmnist_noisy,
    "fmnist_rot": _gen_fmnist_rot,
    "fmnist_loc": _gen_fmnist_loc,
    "fmnist_count": _gen_fmnist_count,
    "fmnist_scale": _gen_fmnist_scale,
}


def task_rng(task: str, seed: int) -> np.random.Generator:
    """The task's own random stream: depends on the seed and the task name only."""
    return np.random.default_rng([int(seed), zlib.crc32(task.encode("utf-8"))])


def split_sizes(task: str, limit: int | None = None) -> SplitSizes:
    """(train, val, test) sizes of a task, each capped at ``limit`` when given."""
    t = PREPARE_TASKS[task]
    sizes = (N_TRAIN, N_VAL, t.max_test)
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be >= 1, got {limit}")
        sizes = tuple(min(s, limit) for s in sizes)  # type: ignore[assignment]
    return sizes


def generate_task(task: str, seed: int = 0, limit: int | None = None) -> dict[str, Split]:
    """In-memory images/labels of a task's ``train``/``val``/``test`` splits."""
    if task not in GENERATORS:
        raise DataError(f"unknown project task {task!r}; choose from {', '.join(PREPARE_TASKS)}")
    return GENERATORS[task](task_rng(task, seed), split_sizes(task, limit))


# ---------------------------------------------------------------- writing


def _meta(task: str, seed: int, limit: int | None, counts: dict[str, int]) -> dict:
    t = PREPARE_TASKS[task]
    return {
        "task": task,
        "group": t.group,
        "num_classes": t.num_classes,
        "classes": list(t.classes),
        "description": t.description,
        "source": t.source,
        "seed": int(seed),
        "limit": limit,
        "image_size": CANVAS,
        "counts": counts,
        "generator": "mosa.data.prepare",
        "generator_version": GENERATOR_VERSION,
    }


def _is_complete(tdir: Path, task: str, seed: int, limit: int | None) -> bool | None:
    """True: same task/seed/limit already there; False: absent; None: there but different."""
    if not tdir.exists():
        return False
    try:
        meta = json.loads((tdir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = (
        isinstance(meta, dict)
        and meta.get("task") == task
        and meta.get("seed") == seed
        and meta.get("limit") == limit
        and meta.get("generator_version") == GENERATOR_VERSION
    )
    files_ok = all((tdir / f).is_file() for f in (*SPLIT_FILES.values(), "classes.txt"))
    return True if same and files_ok else None


def write_task(
    tdir: Path, task: str, splits: dict[str, Split], seed: int, limit: int | None
) -> dict[str, int]:
    """Write one task's files into ``tdir`` (which must be a fresh, empty folder)."""
    trainval_dir = tdir / "images" / "train800val200"
    test_dir = tdir / "images" / "test"
    trainval_dir.mkdir(parents=True)
    test_dir.mkdir(parents=True)
    lines: dict[str, list[str]] = {k: [] for k in SPLIT_FILES}
    k = 0
    for name in ("train", "val"):
        sp = splits[name]
        for img, lab in zip(sp.images, sp.labels, strict=True):
            rel = f"images/train800val200/{k:06d}.png"
            Image.fromarray(img, mode="L").save(tdir / rel)
            lines["train800" if name == "train" else "val200"].append(f"{rel} {int(lab)}")
            lines["train800val200"].append(f"{rel} {int(lab)}")
            k += 1
    sp = splits["test"]
    for j, (img, lab) in enumerate(zip(sp.images, sp.labels, strict=True)):
        rel = f"images/test/{j:06d}.png"
        Image.fromarray(img, mode="L").save(tdir / rel)
        lines["test"].append(f"{rel} {int(lab)}")
    for split, fname in SPLIT_FILES.items():
        (tdir / fname).write_text("\n".join(lines[split]) + "\n", encoding="utf-8")
    (tdir / "classes.txt").write_text(
        "\n".join(PREPARE_TASKS[task].classes) + "\n", encoding="utf-8"
    )
    counts = {s: len(v) for s, v in lines.items()}
    meta = _meta(task, seed, limit, counts)
    (tdir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return counts


def prepare_tasks(
    out_dir: str | os.PathLike[str],
    tasks: Iterable[str] | None = None,
    seed: int = 0,
    *,
    limit: int | None = None,
    overwrite: bool = False,
    progress: Callable[[str, str], None] | None = None,
) -> list[PreparedTask]:
    """Write project tasks (default: all of PREPARE_TASKS) under ``out_dir`` in VTAB-1k layout.

    A task folder already written with the same seed/limit is skipped. A folder that exists but
    differs (other seed, other limit, foreign files) raises DataError unless ``overwrite``.
    Each task is written to a temporary folder inside ``out_dir`` and renamed into place, so an
    interrupted run never leaves a half-written task. ``limit`` caps every split (for tests).
    ``progress(task, status)`` is called per task.
    """
    if isinstance(tasks, str):
        tasks = [tasks]  # a single name, not its characters
    names = list(PREPARE_TASKS) if tasks is None else list(dict.fromkeys(tasks))
    unknown = [t for t in names if t not in PREPARE_TASKS]
    if unknown:
        raise DataError(
            f"unknown project task(s) {', '.join(unknown)}; choose from {', '.join(PREPARE_TASKS)}"
        )
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    results: list[PreparedTask] = []
    for task in names:
        tdir = out / task
        state = _is_complete(tdir, task, seed, limit)
        if state is True:
            meta = json.loads((tdir / "meta.json").read_text(encoding="utf-8"))
            results.append(PreparedTask(task, tdir, "skipped", dict(meta.get("counts", {}))))
            if progress:
                progress(task, "skipped")
            continue
        if state is None and not overwrite:
            raise DataError(
                f"{tdir} exists but was not written by this prepare with seed={seed}, "
                f"limit={limit}; delete it or pass overwrite=True"
            )
        splits = generate_task(task, seed, limit)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{task}-", dir=out))
        try:
            counts = write_task(tmp / "task", task, splits, seed, limit)
            if tdir.exists():
                old = tmp / "old"
                os.replace(tdir, old)  # move aside first: rename cannot replace a non-empty dir
            os.replace(tmp / "task", tdir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        results.append(PreparedTask(task, tdir, "written", counts))
        if progress:
            progress(task, "written")
    return results

"""The five FGVC sets in the VPT layout.

Each set folder holds ``train.json``, ``val.json`` and ``test.json`` (VPT's splits, with val
carved out of the official train set), each mapping an image path relative to the set's image
folder to a class id. The image folder inside the set folder follows VPT's loaders:
CUB ``images/``, NABirds ``images/``, Stanford Dogs ``Images/``, Oxford Flowers and Stanford
Cars the set folder itself.

Class ids: VPT's loader does not assume 0-based ids; it maps the sorted distinct ids of a split
file to 0..K-1 (NABirds' official ids are sparse, up to ~1000). Here the mapping is taken over
the union of all split files present so that train/val/test agree even if one split misses a
class; ids that already lie in 0..num_classes-1 are kept as they are.
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


@dataclass(frozen=True)
class FgvcSpec:
    """Where a set lives: ``folder`` under the FGVC root, ``image_dir`` inside it."""

    title: str
    num_classes: int
    folder: str
    image_dir: str


#: set name -> spec. Folder names follow the usual VPT/MoSA data roots; override per call.
FGVC_SETS: dict[str, FgvcSpec] = {
    "cub": FgvcSpec("CUB-200-2011", 200, "CUB_200_2011", "images"),
    "nabirds": FgvcSpec("NABirds", 555, "nabirds", "images"),
    "oxford_flowers": FgvcSpec("Oxford Flowers", 102, "OxfordFlower", ""),
    "stanford_dogs": FgvcSpec("Stanford Dogs", 120, "Stanford-dogs", "Images"),
    "stanford_cars": FgvcSpec("Stanford Cars", 196, "Stanford-cars", ""),
}

FGVC_ALIASES: dict[str, str] = {
    "cub200": "cub",
    "cub_200_2011": "cub",
    "cub-200-2011": "cub",
    "flowers": "oxford_flowers",
    "oxfordflower": "oxford_flowers",
    "dogs": "stanford_dogs",
    "cars": "stanford_cars",
}

FGVC_SPLITS = ("train", "val", "trainval", "test")


def fgvc_spec(name: str) -> tuple[str, FgvcSpec]:
    """Canonical name and spec for a set name or alias (case-insensitive)."""
    key = name.lower()
    key = FGVC_ALIASES.get(key, key)
    if key not in FGVC_SETS:
        raise DataError(
            f"unknown FGVC set {name!r}; choose from {sorted(FGVC_SETS)} "
            f"(aliases {sorted(FGVC_ALIASES)})"
        )
    return key, FGVC_SETS[key]


def _json_line(text: str, key: str) -> int | None:
    """1-based line of ``key`` in the JSON text, for error messages (None if not found)."""
    pos = text.find(json.dumps(key))
    return text.count("\n", 0, pos) + 1 if pos >= 0 else None


def read_split_json(path: Path) -> tuple[dict[str, int], str]:
    """Parse a VPT split file into ``{relative image path: class id}``; also return its text."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"FGVC split file not found: {path}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read FGVC split file {path}: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where(path, e.lineno)}: invalid JSON ({e.msg}); fix the file") from e
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: expected a JSON object mapping image path -> class id, "
            f"got {type(data).__name__}"
        )
    for k, v in data.items():
        # bool is an int subclass in Python; true/false are never class ids
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise DataError(
                f"{where(path, _json_line(text, k))}: class id of {k!r} is {v!r}; "
                "expected a non-negative integer"
            )
    if not data:
        raise DataError(f"{path}: no images listed")
    return data, text


def resolve_set_dir(root: str | os.PathLike[str], spec: FgvcSpec, folder: str | None) -> Path:
    """The set folder: ``root`` itself when it holds split files, else ``root/<folder>``."""
    rootp = Path(root).expanduser()
    if not rootp.is_dir():
        raise DataError(f"FGVC root folder not found: {rootp}")
    if any((rootp / f"{s}.json").is_file() for s in ("train", "val", "test")):
        return rootp
    d = rootp / (folder if folder is not None else spec.folder)
    if not d.is_dir():
        raise DataError(
            f"{spec.title} folder not found: {d}. Put the extracted set there with VPT's "
            f"train.json/val.json/test.json, or pass the set folder itself as root."
        )
    return d


class FgvcDataset(FileImageDataset):
    """One split (train/val/trainval/test) of an FGVC set in the VPT layout.

    ``folder`` and ``image_dir`` override the spec's set folder name and image folder.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        name: str,
        split: str,
        pipeline: ImagePipeline,
        *,
        folder: str | None = None,
        image_dir: str | None = None,
        cache: bool = True,
        cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
    ) -> None:
        key, spec = fgvc_spec(name)
        if split not in FGVC_SPLITS:
            raise DataError(f"unknown FGVC split {split!r}; use one of {FGVC_SPLITS}")
        set_dir = resolve_set_dir(root, spec, folder)
        img_dir = set_dir / (image_dir if image_dir is not None else spec.image_dir)
        if not img_dir.is_dir():
            raise DataError(
                f"{spec.title} image folder not found: {img_dir}; pass image_dir= if your copy "
                "keeps images elsewhere"
            )
        wanted = ("train", "val") if split == "trainval" else (split,)
        for s in wanted:
            if not (set_dir / f"{s}.json").is_file():
                raise DataError(
                    f"FGVC split file not found: {set_dir / f'{s}.json'}. Get VPT's split files "
                    "(train.json, val.json, test.json) and put them in the set folder."
                )
        # Read every split present so that the id -> index mapping is the same for all splits.
        splits: dict[str, tuple[dict[str, int], str, Path]] = {}
        for s in ("train", "val", "test"):
            p = set_dir / f"{s}.json"
            if p.is_file():
                data, text = read_split_json(p)
                splits[s] = (data, text, p)
        ids = sorted({v for data, _, _ in splits.values() for v in data.values()})
        n = spec.num_classes
        if len(ids) > n:
            raise DataError(
                f"{set_dir}: split files use {len(ids)} distinct class ids but {spec.title} has "
                f"{n} classes; check that the folder holds the right set"
            )
        # Ids already inside 0..n-1 are kept (0-based files); others (1-based, sparse) remapped.
        id_map = {i: i for i in ids} if ids[-1] < n else {v: i for i, v in enumerate(ids)}

        paths: list[str] = []
        origins: list[str] = []
        targets: list[int] = []
        for s in wanted:
            data, text, p = splits[s]
            for rel, cid in data.items():
                full = os.path.join(img_dir, rel)
                if not os.path.exists(full):
                    raise DataError(
                        f"{where(p, _json_line(text, rel))}: image {rel!r} not found (looked for "
                        f"{full}); restore it or check image_dir"
                    )
                paths.append(full)
                origins.append(where(p, None) + f" entry {rel!r}")
                targets.append(id_map[cid])

        self.set_name = key
        self.spec = spec
        self.root = set_dir
        self.image_dir = img_dir
        self.class_ids = ids  # original ids, in index order when remapped
        super().__init__(
            paths=paths,
            origins=origins,
            targets=targets,
            classes=_class_names(splits, id_map, n),
            pipeline=pipeline,
            cache=cache,
            cache_max_bytes=cache_max_bytes,
            name=key,
            split=split,
        )


def _class_names(
    splits: dict[str, tuple[dict[str, int], str, Path]], id_map: dict[int, int], n: int
) -> list[str]:
    """Use the image sub-folder as class name when each class has exactly one distinct folder
    (CUB's ``001.Black_footed_Albatross/...``); otherwise the original id as a string."""
    dirs: dict[int, set[str]] = {}
    for data, _, _ in splits.values():
        for rel, cid in data.items():
            dirs.setdefault(id_map[cid], set()).add(os.path.dirname(rel))
    inv = {i: v for v, i in id_map.items()}
    names = [str(inv.get(i, i)) for i in range(n)]
    folder_names = {i: next(iter(d)) for i, d in dirs.items() if len(d) == 1}
    if (
        len(folder_names) == len(dirs)
        and all(folder_names.values())
        and len(set(folder_names.values())) == len(folder_names)
    ):
        for i, d in folder_names.items():
            names[i] = d
    return names

"""Class-balanced, seeded subsets: few-shot draws, their remainder, and validation hold-outs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .errors import DataError

FORMAT_VERSION = 1


def _by_class(
    targets: Sequence[int], allowed: Iterable[int] | None = None
) -> dict[int, np.ndarray]:
    t = np.asarray(targets, dtype=np.int64)
    idx = np.arange(len(t)) if allowed is None else np.asarray(sorted(set(allowed)), dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(t)):
        raise DataError(f"indices must lie in 0..{len(t) - 1}")
    sub = t[idx]
    return {int(c): idx[sub == c] for c in np.unique(t)}


def few_shot_indices(
    targets: Sequence[int],
    shots: int,
    seed: int,
    *,
    num_classes: int | None = None,
    exclude: Iterable[int] | None = None,
) -> list[int]:
    """``shots`` indices per class, drawn without replacement; sorted; same seed -> same draw.

    Classes are those occurring in ``targets`` (or ``0..num_classes-1`` when given, so a class
    with no images at all is caught). ``exclude`` removes indices from the pool first, e.g. a
    training draw when drawing validation. Raises DataError if a class has fewer than ``shots``.
    """
    if shots < 1:
        raise DataError(f"shots must be >= 1, got {shots}")
    n = len(targets)
    excluded = set() if exclude is None else {int(i) for i in exclude}
    pool = [i for i in range(n) if i not in excluded] if excluded else None
    groups = _by_class(targets, pool)
    if num_classes is not None:
        present = {c for c in groups}
        outside = sorted(c for c in present if not 0 <= c < num_classes)
        if outside:
            raise DataError(f"labels {outside[:5]} lie outside 0..{num_classes - 1}")
        for c in range(num_classes):
            groups.setdefault(c, np.empty(0, dtype=np.int64))
    rng = np.random.default_rng(seed)
    short = {c: len(ix) for c, ix in groups.items() if len(ix) < shots}
    if short:
        detail = ", ".join(f"class {c}: {k}" for c, k in sorted(short.items())[:10])
        raise DataError(
            f"{shots}-shot draw impossible: {len(short)} class(es) have fewer than {shots} "
            f"available images ({detail}); lower shots"
        )
    out: list[int] = []
    # Iterate classes in sorted order so the RNG stream, and thus the draw, depends only on seed.
    for c in sorted(groups):
        out.extend(int(i) for i in rng.choice(groups[c], size=shots, replace=False))
    return sorted(out)


def remaining_indices(n_or_targets: int | Sequence[int], drawn: Iterable[int]) -> list[int]:
    """Sorted indices of ``range(n)`` not in ``drawn`` (``n`` may be given as the targets list)."""
    n = n_or_targets if isinstance(n_or_targets, int) else len(n_or_targets)
    taken = {int(i) for i in drawn}
    bad = [i for i in taken if not 0 <= i < n]
    if bad:
        raise DataError(f"drawn indices {sorted(bad)[:5]} lie outside 0..{n - 1}")
    return [i for i in range(n) if i not in taken]


def few_shot_split(
    targets: Sequence[int], shots: int, val_shots: int, seed: int
) -> tuple[list[int], list[int]]:
    """Disjoint ``(train, val)`` draws: ``shots`` then ``val_shots`` per class from the rest."""
    train = few_shot_indices(targets, shots, seed)
    val = few_shot_indices(targets, val_shots, seed + 1, exclude=train)
    return train, val


def holdout_split(
    targets: Sequence[int], fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Stratified ``(train, val)`` split with ~``fraction`` of each class in val.

    Every class with at least two images keeps at least one in each part.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for _, ix in sorted(_by_class(targets).items()):
        ix = rng.permutation(ix)
        k = int(round(fraction * len(ix)))
        if len(ix) >= 2:
            k = min(max(k, 1), len(ix) - 1)
        val.extend(int(i) for i in ix[:k])
        train.extend(int(i) for i in ix[k:])
    return sorted(train), sorted(val)


def targets_fingerprint(targets: Sequence[int]) -> str:
    """Short hash of the label list, stored with saved indices to catch a changed data set."""
    t = np.asarray(targets, dtype=np.int64)
    return hashlib.sha256(t.tobytes()).hexdigest()[:16]


def save_indices(
    path: str | os.PathLike[str],
    indices: Sequence[int],
    *,
    targets: Sequence[int] | None = None,
    **meta: object,
) -> None:
    """Write drawn indices (plus e.g. ``shots=``, ``seed=``) as JSON; atomic replace."""
    p = Path(path)
    doc: dict[str, object] = {
        "version": FORMAT_VERSION,
        **meta,
        "indices": [int(i) for i in indices],
    }
    if targets is not None:
        doc["num_items"] = len(targets)
        doc["targets_sha256"] = targets_fingerprint(targets)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, p)


def load_indices(
    path: str | os.PathLike[str], *, targets: Sequence[int] | None = None
) -> list[int]:
    """Read indices saved by ``save_indices``; with ``targets``, check they fit that data set."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"index file not found: {p}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read index file {p}: {e}") from e
    raw = doc.get("indices") if isinstance(doc, dict) else doc
    if not isinstance(raw, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in raw
    ):
        raise DataError(f"{p}: expected {{'indices': [non-negative integers, ...]}}")
    if targets is not None and isinstance(doc, dict):
        fp = doc.get("targets_sha256")
        if fp is not None and fp != targets_fingerprint(targets):
            raise DataError(
                f"{p} was drawn from a different data set (labels differ); draw the subset again"
            )
        if raw and max(raw) >= len(targets):
            raise DataError(f"{p}: index {max(raw)} exceeds the data set size {len(targets)}")
    return list(raw)

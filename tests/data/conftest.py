"""Fixtures that build tiny on-disk layouts for the data tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mosa.data import sources


def _write_image(
    path: Path, value: int, size: tuple[int, int] = (12, 10), mode: str = "RGB"
) -> None:
    """A small random image seeded by ``value`` (so tests can tell images apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(value)
    shape = (h, w) if mode == "L" else (h, w, 3)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(path)


@pytest.fixture
def write_image() -> Callable[..., None]:
    """write_image(path, value, size=(w, h), mode='RGB'|'L')."""
    return _write_image


@pytest.fixture
def fmnist(data_missing: Callable[[str], None]) -> None:
    """Skip the test when the Debian Fashion-MNIST package is absent (fail in CI)."""
    try:
        sources.fashion_mnist_dir()
    except FileNotFoundError:
        data_missing("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture
def vtab_root(tmp_path: Path) -> Path:
    return tmp_path / "vtab-1k"


@pytest.fixture
def make_vtab(vtab_root: Path) -> Callable[..., Path]:
    """make_vtab(task, train=[labels], val=[...], test=[...], classes=[names]) -> task folder.

    Writes the NOAH layout: train800 and val200 images in images/train800val200 (that split
    file is their union), test images in images/test.
    """

    def build(
        task: str = "mytask",
        train: list[int] | None = None,
        val: list[int] | None = None,
        test: list[int] | None = None,
        classes: list[str] | None = None,
    ) -> Path:
        train = [0, 1, 2, 0, 1, 2] if train is None else train
        val = [0, 1, 2] if val is None else val
        test = [2, 1, 0, 0] if test is None else test
        tdir = vtab_root / task
        lines: dict[str, list[str]] = {
            "train800": [],
            "val200": [],
            "train800val200": [],
            "test": [],
        }
        k = 0
        for name, labels in (("train800", train), ("val200", val)):
            for lab in labels:
                rel = f"images/train800val200/{k:06d}.png"
                _write_image(tdir / rel, 100 + k)
                lines[name].append(f"{rel} {lab}")
                lines["train800val200"].append(f"{rel} {lab}")
                k += 1
        for j, lab in enumerate(test):
            rel = f"images/test/{j:06d}.png"
            _write_image(tdir / rel, 500 + j)
            lines["test"].append(f"{rel} {lab}")
        for name, ls in lines.items():
            (tdir / f"{name}.txt").write_text("\n".join(ls) + "\n")
        if classes is not None:
            (tdir / "classes.txt").write_text("\n".join(classes) + "\n")
        return tdir

    return build

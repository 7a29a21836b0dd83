"""Raw image sources that exist offline: Fashion-MNIST (Debian package) and scikit-learn's digits."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

FASHION_MNIST_DIRS = (
    os.environ.get("MOSA_FASHION_MNIST", ""),
    "/usr/share/datasets/fashion-mnist",
)

FASHION_MNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)


def fashion_mnist_dir() -> Path:
    """Folder holding the four Fashion-MNIST idx files; raises with an install hint if absent."""
    for d in FASHION_MNIST_DIRS:
        if d and (Path(d) / "t10k-labels-idx1-ubyte.gz").is_file():
            return Path(d)
    raise FileNotFoundError(
        "Fashion-MNIST not found in /usr/share/datasets/fashion-mnist. Install it with "
        "'apt-get install dataset-fashion-mnist' or set MOSA_FASHION_MNIST to a folder "
        "holding the *-ubyte.gz files."
    )


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if (magic >> 8) != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    arr = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated idx file ({arr.size} values, header says {dims})")
    return arr.reshape(dims)


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N, 28, 28], labels int64 [N]) for split 'train' (60k) or 'test' (10k)."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    root = fashion_mnist_dir()
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: (images uint8 [1797, 8, 8] scaled to 0..255, labels int64)."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data set needs scikit-learn: pip install 'mosa[data]'") from e
    d = _load()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64)

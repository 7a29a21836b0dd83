"""Shared dataset machinery: labelled images, the image pipeline and the prepared-image cache."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image
from torch.utils.data import Dataset

from .cache import DEFAULT_CACHE_MAX_BYTES, UInt8Cache
from .transforms import ImagePipeline, load_image


class ImageDataset(Dataset):
    """Base class: ``(image float [3, S, S], label int)`` items.

    Subclasses fill ``targets``/``classes`` and implement ``_decode``. With ``cache=True`` the
    output of ``pipeline.prepare`` (uint8) is kept after the first access, so later epochs only
    run the random ``augment`` (if any) and ``normalize``. The cache lives in the process that
    reads the items: call ``preload()`` before building a DataLoader with worker processes, or
    use ``num_workers=0`` (cached items are cheap), or the workers' copies are lost each epoch.
    """

    def __init__(
        self,
        *,
        targets: Sequence[int],
        classes: Sequence[str],
        pipeline: ImagePipeline,
        cache: bool = True,
        cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
        name: str = "",
        split: str = "",
    ) -> None:
        self.targets: list[int] = [int(t) for t in targets]
        self.classes: list[str] = [str(c) for c in classes]
        self.num_classes: int = len(self.classes)
        self.pipeline = pipeline
        self.name = name
        self.split = split
        self._cache = (
            UInt8Cache(len(self.targets), cache_max_bytes, name=f"{name}/{split}")
            if cache
            else None
        )

    def __len__(self) -> int:
        return len(self.targets)

    def _decode(self, index: int) -> Image.Image:
        """Load item ``index`` as a PIL image (any mode); raise DataError when unreadable."""
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        n = len(self.targets)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {self.name}/{self.split} of size {n}")
        return index % n

    def prepared(self, index: int) -> torch.Tensor:
        """uint8 [3, H, W] output of the deterministic pipeline part, from the cache if present."""
        index = self._check_index(index)
        if self._cache is not None:
            hit = self._cache.get(index)
            if hit is not None:
                return hit
        x = self.pipeline.prepare(self._decode(index))
        if self._cache is not None:
            self._cache.put(index, x)
        return x

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.pipeline.augment(self.prepared(index))
        return self.pipeline.normalize(x), self.targets[index]

    @property
    def cached(self) -> int:
        """How many items are in the cache (0 when caching is off)."""
        return 0 if self._cache is None else self._cache.filled

    def preload(self, num_threads: int | None = None) -> int:
        """Decode and cache every item now (threads overlap file I/O and PIL decoding).

        Returns the number of cached items. Raises the first DataError met. No-op without cache.
        """
        if self._cache is None:
            return 0
        todo = [i for i in range(len(self)) if self._cache.get(i) is None]
        threads = num_threads or min(4, os.cpu_count() or 1)
        if threads <= 1 or len(todo) < 64:
            for i in todo:
                self.prepared(i)
        else:
            with ThreadPoolExecutor(threads) as pool:
                # list() re-raises the first exception from a worker thread
                list(pool.map(self.prepared, todo))
        return self._cache.filled

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, size={len(self)}, "
            f"num_classes={self.num_classes}, img_size={self.pipeline.img_size})"
        )


class FileImageDataset(ImageDataset):
    """Items are image files; ``origins[i]`` says where item i was listed (for error messages)."""

    def __init__(
        self, *, paths: Sequence[str], origins: Sequence[str] | None = None, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.paths: list[str] = list(paths)
        if len(self.paths) != len(self.targets):
            raise ValueError("paths and targets differ in length")
        self.origins: list[str] | None = list(origins) if origins is not None else None

    def _decode(self, index: int) -> Image.Image:
        origin = self.origins[index] if self.origins is not None else None
        return load_image(self.paths[index], origin)

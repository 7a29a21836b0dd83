"""In-memory store of prepared (decoded + resized) uint8 images.

VTAB-1k trains 100 epochs on 1000 images; decoding and resizing a JPEG costs far more than the
float conversion, so each image is prepared once and kept as a uint8 CHW tensor (a quarter of
the float32 size). A byte budget keeps large sets (a 20k-image test split at 224 px is 3 GB)
from exhausting memory: past the budget, items are simply not stored and are re-decoded.
"""

from __future__ import annotations

import os
import threading
import warnings

import torch

DEFAULT_CACHE_MAX_BYTES = int(float(os.environ.get("MOSA_CACHE_MAX_GB", "4")) * 2**30)


class UInt8Cache:
    """Fixed-length slot store for uint8 tensors with a total byte budget."""

    def __init__(
        self, length: int, max_bytes: int = DEFAULT_CACHE_MAX_BYTES, name: str = ""
    ) -> None:
        self._slots: list[torch.Tensor | None] = [None] * length
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.name = name
        self._warned = False
        self._lock = threading.Lock()  # preload() fills from several threads

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, index: int) -> torch.Tensor | None:
        """The stored tensor or None."""
        return self._slots[index]

    def put(self, index: int, x: torch.Tensor) -> bool:
        """Store ``x`` at ``index`` unless the budget is spent; return whether it was stored."""
        if x.dtype != torch.uint8:
            raise TypeError(f"UInt8Cache stores uint8 tensors, got {x.dtype}")
        with self._lock:
            return self._put_locked(index, x)

    def _put_locked(self, index: int, x: torch.Tensor) -> bool:
        if self._slots[index] is not None:
            return True
        size = x.numel()
        if self.nbytes + size > self.max_bytes:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"image cache{' of ' + self.name if self.name else ''} reached its budget of "
                    f"{self.max_bytes / 2**30:.1f} GiB; remaining images are decoded on every "
                    "access (raise MOSA_CACHE_MAX_GB or lower the image size)",
                    stacklevel=4,
                )
            return False
        self._slots[index] = x
        self.nbytes += size
        return True

    @property
    def filled(self) -> int:
        """Number of stored items."""
        return sum(s is not None for s in self._slots)

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._slots = [None] * len(self._slots)
            self.nbytes = 0

    def __getstate__(self) -> dict:
        # Locks cannot be pickled (DataLoader workers with the spawn start method pickle us).
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

"""A failed write or an exhausted memory during a run, turned into one clear error that says
what failed, where the last good checkpoint stands and what to change."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError

from mosa.engine.errors import OutOfMemoryError, ResumeError, WriteFailedError
from mosa.engine.state import find_last, read_state


def last_good(out: Path) -> str | None:
    """``out/last`` with where it stands (None when no readable checkpoint exists)."""
    last = find_last(out)
    if last is None:
        return None
    try:
        doc = read_state(last)
    except ResumeError:
        return None
    part = doc.get("partial")
    where = f"epoch {doc['epoch']}" if not part else f"epoch {part['epoch']}, step {part['step']}"
    return f"{last} ({where})"


@contextlib.contextmanager
def writing(what: str, path: Path, out: Path) -> Iterator[None]:
    """Turn a failed write (no space, permission, I/O error) into one clear error that names
    the last good checkpoint of the run in ``out``; the atomic writes left earlier files
    intact."""
    try:
        yield
    except (OSError, SafetensorError) as e:
        reason = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
        raise WriteFailedError(what, str(path), reason, last_good(out), str(out)) from e


def memory_of(device: torch.device) -> str:
    """The device's total memory, in words."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return f"{total / 2**30:.1f} GiB, {torch.cuda.max_memory_allocated(device) / 2**30:.1f} used at peak"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "host memory"
    return f"{total / 2**30:.1f} GiB host memory"


@contextlib.contextmanager
def out_of_memory(
    batch: int, device: torch.device, out: Path, accumulate: int, optimizer: torch.optim.Optimizer
) -> Iterator[None]:
    """A step that runs out of memory (CUDA's error, or the CPU allocator's) becomes one clear
    error with the batch, the device's memory and what to change."""
    try:
        yield
    except RuntimeError as e:
        cpu_oom = "DefaultCPUAllocator: can't allocate memory" in str(e)
        if not (isinstance(e, torch.OutOfMemoryError) or cpu_oom):
            raise
        optimizer.zero_grad(set_to_none=True)  # frees the gradients before reporting
        raise OutOfMemoryError(
            batch, str(device), memory_of(device), last_good(out), accumulate
        ) from e

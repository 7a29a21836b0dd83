"""Memory of a training step: bytes resident between steps and the step's peak above them.

On CUDA the peak comes from ``torch.cuda``'s allocator statistics. On the CPU torch has no
public peak statistic (``torch.accelerator.memory_stats`` is empty for the CPU, and the
profiler's public tables give each op's net allocation, not the running total), so
:func:`cpu_step_peak` reads the allocator's running total from the allocation events of
``torch.profiler``'s event tree, a private interface: when it changes, the CPU peak is None.
Why not RSS or tracemalloc: docs/bench-notes.md.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

__all__ = [
    "MEMORY_METHOD_CPU",
    "MEMORY_METHOD_CUDA",
    "cpu_step_peak",
    "measure_step_memory",
    "optimizer_state_bytes",
    "resident_bytes",
]

_RESIDENT = (
    "peak_mem_bytes = bytes resident before the step (parameters, buffers, AdamW state, input "
    "batch; gradients freed by zero_grad(set_to_none=True)) + the step's peak allocation above "
    "that"
)
MEMORY_METHOD_CUDA = (
    f"{_RESIDENT}: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus "
    "memory_allocated() before the step (allocated, not reserved, bytes)"
)
MEMORY_METHOD_CPU = (
    f"{_RESIDENT}, read from torch's CPU allocator: one step run under torch.profiler with "
    "profile_memory=True, whose allocation events carry the allocator's running total of live "
    "bytes; the peak of that total minus its value before the step (see docs/bench-notes.md)"
)


def _storage_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared storage counted once)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if t is None:
            continue
        st = t.untyped_storage()
        seen[(str(st.device), st.data_ptr())] = st.nbytes()
    return sum(seen.values())


def _optimizer_tensors(opt: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                yield v


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (AdamW: exp_avg, exp_avg_sq, step)."""
    return _storage_bytes(_optimizer_tensors(opt))


def resident_bytes(model: nn.Module, opt: torch.optim.Optimizer, *extra: torch.Tensor) -> int:
    """Bytes live between steps: parameters, buffers, gradients, optimizer state, ``extra``."""
    return _storage_bytes(
        [
            *model.parameters(),
            *model.buffers(),
            *(p.grad for p in model.parameters()),
            *_optimizer_tensors(opt),
            *extra,
        ]
    )


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null (C++ logging bypasses ``sys.stderr``)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _allocations(prof: profile) -> list[tuple[int, int, int]] | None:
    """(time, bytes, allocator's running total) of every CPU allocation event, or None when
    torch's private event tree is not there (the interface changed)."""
    try:
        from torch._C._profiler import _EventType  # private: see the module docstring

        stack = list(prof.profiler.kineto_results.experimental_event_tree())
    except (ImportError, AttributeError, RuntimeError):
        return None
    events: list[tuple[int, int, int]] = []
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            f = e.extra_fields
            events.append((e.start_time_ns, int(f.alloc_size), int(f.total_allocated)))
    return events


def cpu_step_peak(fn: Callable[[], None]) -> int | None:
    """Peak bytes allocated by ``fn`` above what was live before it, from torch's CPU allocator
    (its running total, reported to the profiler with every allocation and free)."""
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    # the native profiler logs a few lines to fd 2 when it starts and stops: silence only those
    with _native_stderr_silenced():
        prof.start()
    try:
        fn()
    finally:
        with _native_stderr_silenced():
            prof.stop()
    events = _allocations(prof)
    if events is None:
        return None
    if not events:
        return 0
    events.sort()
    # the total counts only allocations made while some profiler ran; what matters is its rise
    before = events[0][2] - events[0][1]
    return max(0, max(e[2] for e in events) - before)


def measure_step_memory(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    step: Callable[[], None],
    device: torch.device,
    *extra: torch.Tensor,
) -> tuple[int, int | None]:
    """(resident bytes before the step, the step's peak allocation above them)."""
    opt.zero_grad(set_to_none=True)
    resident = resident_bytes(model, opt, *extra)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return resident, torch.cuda.max_memory_allocated(device) - base
    return resident, cpu_step_peak(step)

"""Wall-clock timing of several functions against each other, and summaries of the times."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["median", "quartiles", "sync", "time_interleaved"]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU does not)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], None]],
    rounds: int,
    warmup: int,
    device: torch.device,
    rng: random.Random,
    log: Callable[[str], None] | None = None,
    after_first: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Per-call times of every function, interleaved: each round calls every function once, in
    a freshly shuffled order, so drift in machine load or clocks spreads over all variants
    instead of favouring the ones measured first or last. The first ``warmup`` rounds are not
    recorded; ``after_first`` runs once, after the first round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(warmup + rounds):
        rng.shuffle(order)
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
        if r == 0 and after_first is not None:
            after_first()
        if log is not None and (r + 1) % max(1, (warmup + rounds) // 5) == 0:
            log(f"  round {r + 1}/{warmup + rounds}")
    return times


def median(xs: list[float]) -> float | None:
    """The median, or None for no samples."""
    return statistics.median(xs) if xs else None


def quartiles(xs: list[float]) -> tuple[float | None, float | None]:
    """First and third quartiles (inclusive method); a single sample is both."""
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (None, None)
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]

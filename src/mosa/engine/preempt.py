"""Preemption: SIGTERM / SIGUSR1 stop a run at the next step boundary, resumably.

Slurm, Kubernetes and Ray send SIGTERM before they kill a job (Slurm's ``--signal`` can send
SIGUSR1 earlier). The run finishes the step it is in, writes ``last/`` with its place inside
the epoch, and raises :class:`RunPreempted`; ``mosa train`` then exits with
:data:`PREEMPTED_EXIT_CODE` and ``--resume`` continues from that step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

import torch

from mosa.engine.distributed import DistInfo

# EX_TEMPFAIL of sysexits.h: "try again later", which is what a requeued job does
PREEMPTED_EXIT_CODE = 75
STOP_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s
)


class RunPreempted(Exception):
    """A stop signal ended the run after a step; ``checkpoint`` resumes it exactly."""

    def __init__(self, signame: str, epoch: int, step: int, steps: int, checkpoint: str) -> None:
        self.signame, self.epoch, self.step, self.checkpoint = signame, epoch, step, checkpoint
        where = f"epoch {epoch}" if step >= steps else f"epoch {epoch}, step {step} of {steps}"
        super().__init__(
            f"stopped by {signame} after {where}; resumable checkpoint {checkpoint} "
            "(continue with --resume)"
        )


class StopSignals:
    """While active, SIGTERM / SIGUSR1 only set :attr:`received` (the previous handlers
    come back on exit). Outside the main thread, signals cannot be caught: nothing changes."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def requested(self, info: DistInfo) -> bool:
        """Whether any rank got a stop signal: every rank stops after the same step."""
        flag = self.received is not None
        if not info.distributed:
            return flag
        t = torch.tensor([float(flag)], device=info.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "a stop signal"

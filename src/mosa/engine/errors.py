"""Errors raised by the training engine; each message says what went wrong and what to do."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Base class of the engine's errors."""


class ClassCountError(TrainingError, ValueError):
    """The data's class count does not fit the model's classifier head."""


class ResumeError(TrainingError):
    """A run cannot be resumed: no checkpoint, a corrupt one, or a changed configuration."""


class TrainingDivergedError(TrainingError):
    """The loss, gradient or weights became NaN or infinite; the last good checkpoint in
    ``<run>/last`` is left intact."""

    def __init__(
        self,
        epoch: int,
        step: int,
        global_step: int,
        value: float,
        lr: float,
        quantity: str = "loss",
        run: str = "out",
    ) -> None:
        self.epoch, self.step, self.global_step = epoch, step, global_step
        self.value, self.lr, self.quantity = value, lr, quantity
        super().__init__(
            f"training diverged: non-finite {quantity} ({value}) at epoch {epoch}, step {step} of "
            f"the epoch (global step {global_step}, lr {lr:.3g}). The last good checkpoint in "
            f"{run}/last is untouched; lower optim.lr (e.g. by 10x), set optim.grad_clip, or use "
            "optim.amp=off, then start again in a new --out (a resume would repeat the same steps)."
        )


class WriteFailedError(TrainingError):
    """A file of the run could not be written (no space, permission, I/O error); what was
    written before is intact, and ``last`` names the checkpoint to resume from."""

    def __init__(self, what: str, path: str, reason: str, last: str | None, out: str) -> None:
        self.what, self.path, self.reason, self.last = what, path, reason, last
        then = (
            f"the last good checkpoint is {last}: free space or fix the folder, then "
            f"`mosa train --resume {out}` (Python: resume=True)"
            if last
            else "no checkpoint was written yet: free space or fix the folder and start again"
        )
        super().__init__(f"cannot write the {what} to {path}: {reason}; {then}")


class OutOfMemoryError(TrainingError):
    """A training step ran out of device (or host) memory; ``OUT/last`` is kept."""

    def __init__(
        self, batch: int, device: str, memory: str, last: str | None, accumulate: int = 1
    ) -> None:
        self.batch, self.device = batch, device
        kept = f"the last checkpoint {last} is kept" if last else "no checkpoint was written yet"
        micro = -(-batch // accumulate)
        split = f" as {accumulate} micro-batches of {micro}" if accumulate > 1 else ""
        super().__init__(
            f"out of memory in a training step: batch {batch} per process{split} on {device} "
            f"({memory}); {kept}. Raise optim.accumulate (now {accumulate}) to run each batch "
            "as that many micro-batches (the same updates in less memory), or use "
            "optim.amp=bf16 on CUDA, a smaller optim.batch_size (the lr may need scaling with "
            "it), or a smaller backbone or img_size"
        )

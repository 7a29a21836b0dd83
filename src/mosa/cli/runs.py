"""The command line's view of a checkpoint: one-line errors and warnings around :mod:`mosa.runs`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from mosa.engine.config import TrainConfig
from mosa.runs import Checkpoint, find_checkpoint, load_for_eval, read_run_config

if TYPE_CHECKING:
    from mosa.heads import TaskView

__all__ = [
    "CliError",
    "Checkpoint",
    "build_task_view",
    "find_checkpoint",
    "read_run_config",
    "warn_if_random_backbone",
]


class CliError(ValueError):
    """Bad command-line input that is not a config, data or checkpoint problem."""


def warn_if_random_backbone(
    ckpt: Checkpoint, *, weights: str | None = None, config: TrainConfig | None = None
) -> None:
    """Warn when the checkpoint's backbone is rebuilt with random weights: no ``weights``
    file, and a run config (``config`` or the run's) with neither weights nor pretrained."""
    run = config or ckpt.run_config
    if weights is None and run is not None and not run.weights and not run.pretrained:
        # without the backbone's weights an adapter is meaningless; make that visible
        name = ckpt.meta.get("backbone") or run.backbone
        print(
            f"mosa: warning: backbone {name!r} built with random weights (pretrained=False): "
            "results match the trained run only if it used the same random backbone; pass "
            "the backbone's weights with --weights",
            file=sys.stderr,
        )


def build_task_view(
    ckpt: Checkpoint,
    task: str | None,
    *,
    weights: str | None = None,
    config: TrainConfig | None = None,
) -> TaskView:
    """The checkpoint rebuilt and merged by ``mosa.runs.load_for_eval``, seen through
    ``task``'s head (multi-task adapters; ``view.model`` holds every head; None for a
    single-task adapter), with a warning when its backbone gets random weights."""
    warn_if_random_backbone(ckpt, weights=weights, config=config)
    return load_for_eval(ckpt, task, config=config, weights=weights)

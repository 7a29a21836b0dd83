"""The command line's view of a checkpoint: one-line errors and warnings around
:mod:`mosa.evaluation`, in the command line's terms (options, not Python arguments)."""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING

from mosa.engine.config import TrainConfig
from mosa.evaluation import Arg, Checkpoint, UsageError, load_for_eval

if TYPE_CHECKING:
    from mosa.heads import TaskView

__all__ = ["CliError", "build_task_view", "option", "usage_message", "warn_if_random_backbone"]


class CliError(ValueError):
    """Bad command-line input that is not a config, data or checkpoint problem."""


def option(arg: Arg) -> str:
    """An argument of a :class:`UsageError` as the command line's option (``--task digits``,
    ``--split``; leaving it out: ``drop --task``)."""
    if arg.value is None and not arg.bare:
        return f"drop --{arg.name}"
    if arg.bare or arg.value is ...:
        return f"--{arg.name}"
    return f"--{arg.name} {shlex.quote(str(arg.value))}"


def usage_message(e: UsageError) -> str:
    """``e`` with its arguments spelled as options."""
    return "".join(p if isinstance(p, str) else option(p) for p in e.parts)


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
    """The checkpoint rebuilt and merged by ``mosa.evaluation.load_for_eval``, seen through
    ``task``'s head (multi-task adapters; ``view.model`` holds every head; None for a
    single-task adapter), with a warning when its backbone gets random weights."""
    warn_if_random_backbone(ckpt, weights=weights, config=config)
    return load_for_eval(ckpt, task, config=config, weights=weights)

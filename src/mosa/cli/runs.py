"""The command line's view of a checkpoint: one-line errors and warnings around :mod:`mosa.runs`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from torch import nn

from mosa.backbones.zoo import load_backbone  # registers mosa_vit_fmnist with timm
from mosa.checkpoint import CheckpointError, load_adapter
from mosa.engine.config import TrainConfig
from mosa.runs import Checkpoint, find_checkpoint, load_for_eval, read_run_config

if TYPE_CHECKING:
    from mosa.engine.multitask import TaskView

__all__ = [
    "CliError",
    "Checkpoint",
    "build_model",
    "build_task_view",
    "find_checkpoint",
    "read_run_config",
    "warn_if_random_backbone",
]


class CliError(ValueError):
    """Bad command-line input that is not a config, data or checkpoint problem."""


def build_model(
    ckpt: Checkpoint,
    *,
    weights: str | None = None,
    pretrained: bool | None = None,
    config: TrainConfig | None = None,
) -> nn.Module:
    """The checkpoint's backbone with its weights (a local file, or timm's pretrained ones) and
    the adapter loaded into it (not merged).

    Backbone weights come from, in order: ``weights``; the given or the run's config
    (``weights``, ``pretrained``, ``backbone_kwargs``); timm's pretrained weights.
    """
    run = config or ckpt.run_config
    name = ckpt.meta.get("backbone") or (run.backbone if run else None)
    if not name:
        raise CheckpointError(f"{ckpt.adapter_dir}: adapter_config.json names no backbone")
    classes = ckpt.meta.get("num_classes")
    if not isinstance(classes, int):
        raise CheckpointError(
            f"{ckpt.adapter_dir}: num_classes={classes!r} in adapter_config.json; only "
            "single-head adapters can be rebuilt here"
        )
    w = weights if weights is not None else (run.weights if run else None)
    pre = pretrained if pretrained is not None else (run.pretrained if run else True)
    kwargs = dict(run.backbone_kwargs) if run else {}
    if w is not None and not pre:
        pre = True  # an explicit weights file is a pretrained backbone
    try:
        model = load_backbone(name, pretrained=pre, num_classes=classes, weights=w, **kwargs)
    except RuntimeError as e:  # no network, weights that do not fit: say so in one line
        raise CheckpointError(f"cannot build backbone {name!r}: {e}") from e
    if not pre:
        _warn_random_backbone(name)
    load_adapter(model, ckpt.adapter_dir)
    return model


def _warn_random_backbone(name: str) -> None:
    # without the backbone's weights an adapter is meaningless; make that visible
    print(
        f"mosa: warning: backbone {name!r} built with random weights (pretrained=False): "
        "results match the trained run only if it used the same random backbone; pass the "
        "backbone's weights with --weights",
        file=sys.stderr,
    )


def warn_if_random_backbone(
    ckpt: Checkpoint, *, weights: str | None = None, config: TrainConfig | None = None
) -> None:
    """Warn when the checkpoint's backbone is rebuilt with random weights: no ``weights``
    file, and a run config (``config`` or the run's) with neither weights nor pretrained."""
    run = config or ckpt.run_config
    if weights is None and run is not None and not run.weights and not run.pretrained:
        _warn_random_backbone(str(ckpt.meta.get("backbone") or run.backbone))


def build_task_view(
    ckpt: Checkpoint,
    task: str | None,
    *,
    weights: str | None = None,
    config: TrainConfig | None = None,
) -> TaskView:
    """The checkpoint rebuilt and merged through ``mosa.runs.load_for_eval``, seen through
    ``task``'s head (multi-task adapters; ``view.model`` holds every head).

    Backbone weights come from the same places as in :func:`build_model`.
    """
    run = config or ckpt.run_config
    name = ckpt.meta.get("backbone") or (run.backbone if run else None)
    warn_if_random_backbone(ckpt, weights=weights, config=config)
    try:
        return load_for_eval(ckpt.adapter_dir, task, config=run, weights=weights)
    except RuntimeError as e:  # no network, weights that do not fit: say so in one line
        raise CheckpointError(f"cannot build backbone {name!r}: {e}") from e

"""Finding what a run / adapter folder holds and rebuilding its model (for eval and merge)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from mosa.checkpoint import CONFIG_NAME, CheckpointError, load_adapter, read_adapter_config
from mosa.config import ConfigError
from mosa.engine.config import TrainConfig

if TYPE_CHECKING:
    from mosa.engine.multitask import TaskView

__all__ = [
    "CliError",
    "Checkpoint",
    "build_model",
    "build_task_view",
    "check_single_task",
    "check_task",
    "find_checkpoint",
    "read_run_config",
]


class CliError(ValueError):
    """Bad command-line input that is not a config, data or checkpoint problem."""


@dataclass
class Checkpoint:
    """An adapter folder, its parsed adapter_config.json and the run config next to it."""

    adapter_dir: Path
    meta: dict[str, Any]
    run_config: TrainConfig | None
    run_dir: Path | None


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """``run_dir/config.json`` as a TrainConfig (keys it does not know are ignored)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a mosa run folder")
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig.from_dict({k: v for k, v in raw.items() if k in known})
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path} does not hold a valid run config: {e}") from e


def find_checkpoint(path: str | Path) -> Checkpoint:
    """Accept an adapter folder (``adapter_config.json``) or a run folder (``adapter/``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if (p / CONFIG_NAME).is_file():
        adapter_dir = p
        run_dir = p.parent if (p.parent / "config.json").is_file() else None
    elif (p / "adapter" / CONFIG_NAME).is_file():
        adapter_dir, run_dir = p / "adapter", p
    else:
        raise CheckpointError(
            f"{p} is neither an adapter folder (with {CONFIG_NAME}) nor a finished run folder "
            "(with adapter/); a run writes adapter/ when it ends"
        )
    meta = read_adapter_config(adapter_dir)
    run_config = None
    if run_dir is not None:
        try:
            run_config = read_run_config(run_dir)
        except CheckpointError:
            run_config = None  # the adapter alone still says backbone and classes
    return Checkpoint(adapter_dir, meta, run_config, run_dir)


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
    from mosa.backbones.zoo import load_backbone  # registers mosa_vit_fmnist with timm

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


def check_task(task: str, tasks: list[str], where: Path) -> None:
    """A CliError naming the heads (and the closest one) unless ``task`` is one of ``tasks``."""
    if task in tasks:
        return
    hint = difflib.get_close_matches(task, tasks, n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise CliError(f"{where} has no head for task {task!r}{extra}; tasks: {', '.join(tasks)}")


def check_single_task(ckpt: Checkpoint, task: str) -> None:
    """A CliError unless ``task`` is what the single-task adapter was trained on (accepted
    when no run config says)."""
    labels = [d.label for d in ckpt.run_config.data] if ckpt.run_config else []
    if labels and task != labels[0]:
        raise CliError(
            f"{ckpt.adapter_dir} is a single-task adapter trained on {labels[0]!r}, not "
            f"{task!r}: drop --task"
        )


def build_task_view(
    ckpt: Checkpoint,
    task: str | None,
    *,
    weights: str | None = None,
    config: TrainConfig | None = None,
) -> TaskView:
    """The checkpoint rebuilt and merged through ``mosa.engine.load_for_eval``, seen through
    ``task``'s head (multi-task adapters; ``view.model`` holds every head).

    Backbone weights come from the same places as in :func:`build_model`.
    """
    from mosa.engine.multitask import load_for_eval

    run = config or ckpt.run_config
    name = ckpt.meta.get("backbone") or (run.backbone if run else None)
    if weights is None and run is not None and not run.weights and not run.pretrained:
        _warn_random_backbone(str(name))
    try:
        return load_for_eval(ckpt.adapter_dir, task, config=run, weights=weights)
    except RuntimeError as e:  # no network, weights that do not fit: say so in one line
        raise CheckpointError(f"cannot build backbone {name!r}: {e}") from e

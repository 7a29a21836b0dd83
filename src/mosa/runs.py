"""A trained run's one home: find its checkpoint, read its config, rebuild its backbone and
load it for evaluation. Used by the engine and the command line alike.

A checkpoint is an adapter folder (``adapter_config.json`` + ``adapter.safetensors``) or a
finished run folder holding one under ``adapter/`` next to the run's ``config.json``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import nn

from mosa.backbones.zoo import load_backbone
from mosa.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_adapter,
    read_adapter_config,
)
from mosa.config import ConfigError, MethodConfig
from mosa.engine.config import TrainConfig
from mosa.engine.multitask import (
    HEADS,
    JOINT_HEAD,
    TaskView,
    attach_task_heads,
    has_task_heads,
)
from mosa.model import inject
from mosa.model import merge as merge_model

RUN_CONFIG = "config.json"


@dataclass
class Checkpoint:
    """An adapter folder, its parsed adapter_config.json and the run config next to it."""

    adapter_dir: Path
    meta: dict[str, Any]
    run_config: TrainConfig | None
    run_dir: Path | None


def _adapter_paths(path: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """(adapter folder, run folder or None) of an adapter folder or a finished run folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if (p / CONFIG_NAME).is_file():
        return p, (p.parent if (p.parent / RUN_CONFIG).is_file() else None)
    if (p / "adapter" / CONFIG_NAME).is_file():
        return p / "adapter", p
    raise CheckpointError(
        f"{p} is neither an adapter folder (with {CONFIG_NAME}) nor a finished run folder "
        "(with adapter/); a run writes adapter/ when it ends"
    )


def find_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Accept an adapter folder (``adapter_config.json``) or a run folder (``adapter/``)."""
    adapter_dir, run_dir = _adapter_paths(path)
    meta = read_adapter_config(adapter_dir)
    run_config = None
    if run_dir is not None:
        try:
            run_config = read_run_config(run_dir)
        except CheckpointError:
            run_config = None  # the adapter alone still says backbone and classes
    return Checkpoint(adapter_dir, meta, run_config, run_dir)


def read_run_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    """``run_dir/config.json`` as a TrainConfig (keys it does not know are ignored)."""
    path = Path(run_dir) / RUN_CONFIG
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


@dataclass
class HeadLayout:
    """The task heads an adapter checkpoint holds: task -> classes (head order) and whether
    they are slices of one joint head."""

    classes: dict[str, int]
    joint: bool

    @property
    def tasks(self) -> list[str]:
        return list(self.classes)


def read_head_layout(path: str | os.PathLike[str]) -> HeadLayout | None:
    """The task heads stored in an adapter (folder or run folder); None for a single-task one."""
    adapter, _ = _adapter_paths(path)
    weights = adapter / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found: the checkpoint folder is incomplete")
    prefix = HEADS + "."
    spans: dict[str, tuple[int, int]] = {}
    sizes: dict[str, int] = {}
    joint = False
    try:
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key.startswith(JOINT_HEAD + "."):
                    joint = True
                if not key.startswith(prefix):
                    continue
                name, _, leaf = key[len(prefix) :].rpartition(".")
                if leaf == "span":
                    span = f.get_tensor(key).tolist()
                    spans[name] = (int(span[0]), int(span[1]))
                elif leaf == "weight":
                    sizes[name] = int(f.get_slice(key).get_shape()[0])
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{weights} could not be read ({e}); the file is corrupt") from e
    if joint:
        ordered = sorted(spans.items(), key=lambda kv: kv[1][0])
        return HeadLayout({name: count for name, (_, count) in ordered}, True)
    if not sizes:
        return None
    return HeadLayout(sizes, False)


def adapter_tasks(path: str | os.PathLike[str]) -> list[str] | None:
    """Task names of a multi-task adapter (folder or run folder), in the run's task order when
    its config.json is there; None for a single-task adapter."""
    layout = read_head_layout(path)
    if layout is None:
        return None
    _, run_dir = _adapter_paths(path)
    run = read_run_config(run_dir) if run_dir is not None else None
    order = [d.label for d in run.data] if run is not None else []
    return sorted(layout.tasks, key=lambda t: (order.index(t) if t in order else len(order), t))


def load_for_eval(
    path: str | os.PathLike[str],
    task: str | None = None,
    *,
    config: Any = None,
    weights: str | None = None,
    merge: bool = True,
    model: nn.Module | None = None,
) -> TaskView:
    """Rebuild a trained model from an adapter folder (or a run folder) for evaluation.

    Multi-task adapters are evaluated through one task's head: ``task`` names it (it may be
    omitted when the adapter has a single head). For a single-task adapter ``task`` may be
    None or the run's task name. The backbone comes from the adapter's backbone name with the
    run config's ``weights`` / ``pretrained`` / ``backbone_kwargs`` (``config`` replaces the
    run config found next to the adapter; ``weights`` replaces its weights file). With
    ``merge`` (default) MoSA experts are merged and LoRA folded, as deployed. ``model``: a
    fresh (un-injected) backbone to load into instead of building one. Returns a
    :class:`TaskView` in eval mode whose ``forward(x)`` gives the task's logits over its own
    classes; ``.model`` is the underlying timm model.
    """
    adapter, run_dir = _adapter_paths(path)
    meta = read_adapter_config(adapter)
    if config is None and run_dir is not None:
        config = read_run_config(run_dir)
    run = config
    layout = read_head_layout(adapter)
    backbone = meta.get("backbone") or (run.backbone if run is not None else None)
    if not backbone:
        raise CheckpointError(f"{adapter}: adapter_config.json names no backbone")
    base = run if run is not None else TrainConfig(backbone=backbone)
    bcfg = dataclasses.replace(base, backbone=backbone)
    if weights is not None:
        bcfg = dataclasses.replace(bcfg, weights=weights, pretrained=True)
    if layout is None:
        labels = [d.label for d in run.data] if run is not None else []
        if task is not None and labels and task not in labels:
            raise CheckpointError(
                f"{adapter} is a single-task adapter trained on {labels[0]!r}, not {task!r}"
            )
        classes = meta.get("num_classes")
        if not isinstance(classes, int) or classes < 1:
            raise CheckpointError(f"{adapter}: num_classes={classes!r} in adapter_config.json")
        if model is None:
            model = load_backbone(num_classes=classes, **bcfg.backbone_args())
        load_adapter(model, adapter)
        view = TaskView(model, None)
    else:
        if task is None:
            if len(layout.tasks) != 1:
                raise CheckpointError(
                    f"{adapter} holds heads for {len(layout.tasks)} tasks "
                    f"({', '.join(layout.tasks)}): choose one with task=..."
                )
            task = layout.tasks[0]
        if task not in layout.classes:
            hint = difflib.get_close_matches(task, layout.tasks, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise CheckpointError(
                f"{adapter} has no head for task {task!r}{extra}; tasks: {', '.join(layout.tasks)}"
            )
        # build with a real class count (a local weights file's head is then dropped as in
        # single-task runs), then replace the classifier by the task heads
        if model is None:
            first = next(iter(layout.classes.values()))
            model = load_backbone(num_classes=first, **bcfg.backbone_args())
        elif has_task_heads(model) or getattr(model, "mosa_config", None) is not None:
            raise ValueError("load_for_eval needs a fresh backbone (no mosa method, no heads)")
        inject(model, MethodConfig.from_dict(meta["method"]))
        attach_task_heads(model, layout.classes, layout.joint)
        load_adapter(model, adapter)
        view = TaskView(model, task)
    if merge and not getattr(view.model, "mosa_merged", False):
        merge_model(view.model)
    return view.eval()

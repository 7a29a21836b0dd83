"""Plain-timm export: a merged model written as an ordinary timm ``state_dict``.

After :func:`mosa.merge`, LoRA and MoSA-LoRA are folded into the backbone's weights and linear
or full tuning never added a module, so nothing of mosa is left: :func:`export_timm` writes
``model.safetensors`` (and ``model_config.json``) that
``timm.create_model(backbone, num_classes=K).load_state_dict(...)`` takes with
``strict=True``. Methods that keep an adapter module after merging (adapter, mosa) cannot be
written this way; save those with :func:`mosa.save_adapter` and load them with
:func:`mosa.load_adapter`.

A multi-task model (one head per task, see :mod:`mosa.heads`) is exported for one
task: that task's head (its rows of a joint head) becomes the timm classifier.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mosa.checkpoint import backbone_name
from mosa.heads import (
    HEADS,
    JOINT_HEAD,
    has_task_heads,
    is_joint,
    label_offset,
    task_classes,
    task_names,
)
from mosa.io import atomic_save_safetensors, atomic_write_json
from mosa.model import head_module_name, is_mosa_name
from mosa.state import find_state

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "ExportError", "export_timm", "plain_state_dict"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"


class ExportError(ValueError):
    """The model cannot be written as a plain timm ``state_dict``.

    Attributes:
        reason: ``"unmerged"`` (call :func:`mosa.merge` first), ``"adapter"`` (the method keeps
            adapter modules after merging), ``"task"`` (a multi-task model needs ``task``) or
            ``"classifier"`` (the model has no timm classifier to hold the task's head).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _check_no_adapter(
    model: nn.Module, weights: dict[str, torch.Tensor], head_names: tuple[str, ...]
) -> None:
    """An ExportError when the model is unmerged or still holds mosa modules (task heads aside)."""
    state = find_state(model)
    if state is not None and not state.merged:
        raise ExportError("the model is not merged: call mosa.merge(model) first", "unmerged")
    leftover = [k for k in weights if k.split(".")[0] not in head_names and is_mosa_name(k)]
    if leftover:
        method = state.config.method if state is not None else "the model"
        raise ExportError(
            f"{method} keeps its adapter modules after merging (e.g. {leftover[0]}): "
            "save it with mosa.save_adapter and load it with mosa.load_adapter",
            "adapter",
        )


def _with_head(
    state: dict[str, torch.Tensor],
    head_names: tuple[str, ...],
    head: str,
    linear: nn.Module,
    rows: slice,
) -> dict[str, torch.Tensor]:
    """``state`` without the task heads and with ``linear``'s ``rows`` as the timm classifier."""
    plain = {k: v for k, v in state.items() if k.split(".")[0] not in head_names}
    plain[f"{head}.weight"] = linear.weight.detach()[rows].clone()
    plain[f"{head}.bias"] = linear.bias.detach()[rows].clone()
    return plain


def _plain(model: nn.Module, task: str | None) -> tuple[dict[str, torch.Tensor], int | None]:
    """The plain timm state_dict of a merged model and its class count."""
    state = model.state_dict()
    head_names = (HEADS, JOINT_HEAD)
    _check_no_adapter(model, state, head_names)
    if not has_task_heads(model):
        if task is not None:
            raise ValueError(f"task={task!r}, but the model has no task heads: pass task=None")
        return state, getattr(model, "num_classes", None)
    if task is None:
        names = task_names(model)
        raise ExportError(
            f"a plain timm model has one classifier and this model has {len(names)} task heads "
            f"({', '.join(names)}): pass task=NAME to export one task's model",
            "task",
        )
    head = head_module_name(model)
    if not head:
        raise ExportError(
            f"{type(model).__name__} has no timm classifier to hold task {task!r}'s head",
            "classifier",
        )
    # the task's own head, or its rows of the joint head over every task's classes
    joint = is_joint(model)
    linear = getattr(model, JOINT_HEAD) if joint else getattr(model, HEADS)[task]
    offset, count = label_offset(model, task), task_classes(model, task)
    return _with_head(state, head_names, head, linear, slice(offset, offset + count)), count


def plain_state_dict(model: nn.Module, task: str | None = None) -> dict[str, torch.Tensor]:
    """A merged model's weights as a plain timm ``state_dict`` (no mosa keys).

    ``task`` (multi-task models only, where it is required) names the head that becomes the
    timm classifier. Raises :class:`ExportError` when the model cannot be exported.
    """
    return _plain(model, task)[0]


def export_timm(
    model: nn.Module,
    out: str | os.PathLike[str],
    task: str | None = None,
    *,
    source: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a merged model as a plain timm checkpoint.

    ``out/model.safetensors`` holds :func:`plain_state_dict` (metadata: backbone, num_classes
    and task); ``out/model_config.json`` says backbone, num_classes, task (when given) and
    ``source``. Load it with
    ``timm.create_model(backbone, num_classes=K).load_state_dict(load_file(path))``.

    Args:
        model: a merged model whose method leaves no modules behind (LoRA, MoSA-LoRA, linear,
            full).
        out: the folder to write into.
        task: for a multi-task model, the task whose head becomes the classifier.
        source: recorded in ``model_config.json`` (e.g. the adapter folder).

    Returns:
        The weights file.

    Raises:
        ExportError: the model cannot be exported (nothing is written); ``reason`` says why.

    Examples:
        >>> import tempfile, timm, mosa
        >>> from safetensors.torch import load_file
        >>> model = timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=10)
        >>> model = mosa.merge(mosa.inject(model, mosa.MethodConfig(method="lora", rank=4)))
        >>> path = mosa.export_timm(model, tempfile.mkdtemp())
        >>> plain = timm.create_model("mosa_vit_fmnist", num_classes=10)
        >>> plain.load_state_dict(load_file(path))
        <All keys matched successfully>
    """
    state, classes = _plain(model, task)
    folder = Path(out)
    backbone = backbone_name(model)
    metadata = {"format": "pt", "backbone": str(backbone), "num_classes": str(classes)}
    config: dict[str, Any] = {"backbone": backbone, "num_classes": classes}
    if task is not None:
        metadata["task"] = config["task"] = task
    if source is not None:
        config["source"] = str(source)
    atomic_save_safetensors(state, folder / WEIGHTS_FILE, metadata=metadata)
    atomic_write_json(folder / CONFIG_FILE, config)
    return folder / WEIGHTS_FILE

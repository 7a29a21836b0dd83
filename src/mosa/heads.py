"""Task heads: one backbone and one adapter shared by several tasks, a head per task.

The heads live on the timm model itself, under ``mosa_heads`` (an ``nn.ModuleDict`` keyed by
task name), so ``mosa.save_adapter`` stores every head with its task name and
``mosa.load_adapter`` restores them. The timm classifier is reset to ``Identity``; a task's
logits are ``mosa_heads[task](forward_head(forward_features(x), pre_logits=True))``.

With ``joint=True`` there is instead ONE linear head ``mosa_joint_head`` over the union of
all tasks' classes (task i's classes follow those of tasks 0..i-1, as in the reference code),
trained with cross-entropy over the whole union on offset labels; ``mosa_heads[task]`` then
holds a parameter-free :class:`TaskSpan` whose ``span`` buffer (first class, class count) says
where the task's classes sit, so the checkpoint still names every task. Training several
tasks is :mod:`mosa.engine.multitask`'s.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

import torch
from torch import nn

HEADS = "mosa_heads"
JOINT_HEAD = "mosa_joint_head"


class TaskSpan(nn.Module):
    """A task's slice of the joint head: buffer ``span`` = (first class, number of classes)."""

    def __init__(self, offset: int, count: int) -> None:
        super().__init__()
        self.offset = int(offset)
        self.count = int(count)
        self.register_buffer("span", torch.tensor([self.offset, self.count], dtype=torch.int64))

    def extra_repr(self) -> str:
        return f"offset={self.offset}, count={self.count}"


def feature_dim(model: nn.Module) -> int:
    """Width of ``forward_head(..., pre_logits=True)``: timm's ``head_hidden_size`` or
    ``num_features``."""
    dim = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if not dim:
        raise TypeError(f"{type(model).__name__} states no feature width (num_features)")
    return int(dim)


def _new_linear(dim: int, n: int, like: torch.Tensor) -> nn.Linear:
    # timm's ViT head init: truncated normal (std 0.02), zero bias
    lin = nn.Linear(dim, n)
    nn.init.trunc_normal_(lin.weight, std=0.02)
    nn.init.zeros_(lin.bias)
    return lin.to(device=like.device, dtype=like.dtype)


def attach_task_heads(model: nn.Module, classes: Mapping[str, int], joint: bool = False) -> None:
    """Reset the timm classifier to Identity and add one head per task (or the joint head).

    ``classes`` maps task name -> class count, in task order (the joint head's class order).
    The new heads are trainable; call this after ``mosa.inject`` (which freezes the backbone).
    """
    if hasattr(model, HEADS):
        raise ValueError(f"the model already has task heads ({', '.join(task_names(model))})")
    bad = [n for n in classes if not n or "." in n]
    if bad:
        raise ValueError(f"task names may not be empty or contain '.': {bad}")
    if not classes or any(int(k) < 1 for k in classes.values()):
        raise ValueError(f"every task needs at least one class, got {dict(classes)}")
    if not hasattr(model, "forward_head") or not hasattr(model, "reset_classifier"):
        raise TypeError(f"{type(model).__name__} is not a timm classifier (no forward_head)")
    model.reset_classifier(0)
    dim = feature_dim(model)
    like = next(model.parameters())
    if joint:
        spans: dict[str, nn.Module] = {}
        offset = 0
        for name, k in classes.items():
            spans[name] = TaskSpan(offset, int(k)).to(like.device)
            offset += int(k)
        model.add_module(JOINT_HEAD, _new_linear(dim, offset, like))
        model.add_module(HEADS, nn.ModuleDict(spans))
    else:
        heads = {name: _new_linear(dim, int(k), like) for name, k in classes.items()}
        model.add_module(HEADS, nn.ModuleDict(heads))


def has_task_heads(model: nn.Module) -> bool:
    return isinstance(getattr(model, HEADS, None), nn.ModuleDict)


def head_parameters(model: nn.Module) -> int:
    """Number of parameters of the task heads (0 without them)."""
    return sum(
        p.numel() for n, p in model.named_parameters() if n.split(".")[0] in (HEADS, JOINT_HEAD)
    )


def task_names(model: nn.Module) -> list[str]:
    """Task names of a model's heads, in head order."""
    heads = getattr(model, HEADS, None)
    return list(heads.keys()) if isinstance(heads, nn.ModuleDict) else []


def is_joint(model: nn.Module) -> bool:
    """Whether the model has one joint head over the union of its tasks' classes."""
    return isinstance(getattr(model, JOINT_HEAD, None), nn.Linear)


def _head(model: nn.Module, task: str) -> nn.Module:
    heads = getattr(model, HEADS, None)
    if not isinstance(heads, nn.ModuleDict):
        raise ValueError("this model has no task heads (attach_task_heads was not called)")
    if task not in heads:
        hint = difflib.get_close_matches(task, list(heads.keys()), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise KeyError(f"no head for task {task!r}{extra}; tasks: {', '.join(heads.keys())}")
    return heads[task]


def task_classes(model: nn.Module, task: str) -> int:
    """Number of classes of ``task``."""
    head = _head(model, task)
    return head.count if isinstance(head, TaskSpan) else int(head.out_features)


def label_offset(model: nn.Module, task: str) -> int:
    """Where ``task``'s class 0 sits among the joint head's outputs (0 for separate heads)."""
    head = _head(model, task)
    return head.offset if isinstance(head, TaskSpan) else 0


def task_logits(model: nn.Module, x: torch.Tensor, task: str, union: bool = False) -> torch.Tensor:
    """Logits of ``task`` for images ``x``: the task's own classes, or with a joint head and
    ``union=True`` the whole union (then labels need :func:`label_offset` added)."""
    head = _head(model, task)
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    if isinstance(head, TaskSpan):
        logits = getattr(model, JOINT_HEAD)(feats)
        return logits if union else logits[:, head.offset : head.offset + head.count]
    return head(feats)


class TaskView(nn.Module):
    """A model seen through one task's head: ``forward(x)`` gives that task's logits over its
    own classes (labels 0..num_classes-1), so ``mosa.engine.evaluate.evaluate`` applies as
    is. ``model`` is the underlying timm model (merge or save that one). ``task`` is None for
    a single-task model, whose own timm head is used."""

    def __init__(self, model: nn.Module, task: str | None) -> None:
        super().__init__()
        self.model = model
        self.task = task
        if task is None:
            self.num_classes = int(getattr(model, "num_classes", 0) or 0)
            self.label_offset = 0
        else:
            self.num_classes = task_classes(model, task)
            self.label_offset = label_offset(model, task)

    @property
    def joint(self) -> bool:
        return self.task is not None and is_joint(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task is None:
            return self.model(x)
        return task_logits(self.model, x, self.task)

    def union_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Joint head only: logits over every task's classes (targets + ``label_offset``)."""
        if not self.joint:
            raise ValueError("union_logits needs a multi-task model with a joint head")
        return task_logits(self.model, x, str(self.task), union=True)

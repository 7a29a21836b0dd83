"""A model's method state in one typed place: what :func:`mosa.inject` added to a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from torch import nn
from torch.utils.hooks import RemovableHandle

from mosa.config import MethodConfig


class Layer(Protocol):
    """What a method's layer (:class:`~mosa.adapters.adapter.Adapter`,
    :class:`~mosa.adapters.lora.LoRA`) does for :func:`mosa.merge` / :func:`mosa.unmerge`,
    which only walk the layers. ``parent`` is the module the layer is attached to."""

    folds: bool  # whether merging folds it into ``parent`` and removes it

    @property
    def restorable(self) -> bool: ...

    def check_mergeable(self) -> None: ...

    def merge(self, parent: nn.Module) -> None: ...

    def unmerge(self, parent: nn.Module) -> None: ...

    def forget_merge(self) -> None: ...

    def detach(self) -> None: ...


@dataclass(eq=False)
class MethodState:
    """The method a model was injected with and everything that goes with it.

    ``layers`` maps the dotted name each layer was attached under (an adapter in a block, a
    LoRA under its Linear) to the layer, in injection order; a merged LoRA stays here while
    its weights are folded into the Linear, so :func:`mosa.unmerge` can re-attach it.
    ``folded`` names the Linear layers merging folded LoRA into (their weights are part of an
    adapter checkpoint); ``hooks`` are the forward hooks put on the model itself.
    """

    config: MethodConfig
    layers: dict[str, Layer] = field(default_factory=dict)
    merged: bool = False
    folded: list[str] = field(default_factory=list)
    hooks: list[RemovableHandle] = field(default_factory=list)


def find_state(model: nn.Module) -> MethodState | None:
    """The model's :class:`MethodState`, or None if no method was injected: the one place that
    reads it."""
    return getattr(model, "mosa_state", None)


def state_of(model: nn.Module) -> MethodState:
    """The model's :class:`MethodState` (``ValueError`` if no method was injected)."""
    state = find_state(model)
    if state is None:
        raise ValueError("this model has no mosa method: call mosa.inject(model, config) first")
    return state


def set_state(model: nn.Module, state: MethodState) -> None:
    """Give ``model`` its state: a plain attribute, neither a submodule nor in state_dict()."""
    model.mosa_state = state


def clear_state(model: nn.Module) -> None:
    """Take the model's state away (nothing if it has none)."""
    if find_state(model) is not None:
        del model.mosa_state

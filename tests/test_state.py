"""One MethodState per injected model: config, layers, merged / folded, model hooks."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
from torch import nn

import mosa
from mosa.adapters.adapter import Adapter
from mosa.adapters.lora import LoRA
from mosa.state import find_state, state_of

MakeModel = Callable[..., nn.Module]


def test_a_fresh_model_has_no_state(make_model: MakeModel) -> None:
    model = make_model("vit")
    assert find_state(model) is None
    with pytest.raises(ValueError, match="mosa.inject"):
        state_of(model)


def test_the_state_names_every_layer_where_it_is_attached(make_model: MakeModel) -> None:
    cfg = mosa.MethodConfig(method="mosa_lora", rank=2, routing="sample")
    model = mosa.inject(make_model("vit"), cfg)
    state = state_of(model)
    assert state.config is cfg and not state.merged and state.folded == []
    modules = dict(model.named_modules())
    assert state.layers and all(modules[n] is layer for n, layer in state.layers.items())
    assert all(isinstance(layer, LoRA) for layer in state.layers.values())
    assert len(state.hooks) == 1  # sample routing: the model's batch-size hook
    assert "mosa_state" not in str(list(model.state_dict()))


def test_merge_and_unmerge_walk_the_layers(make_model: MakeModel) -> None:
    model = mosa.inject(make_model("vit"), mosa.MethodConfig(method="lora", rank=2))
    state = state_of(model)
    names = list(state.layers)
    mosa.merge(model)
    assert state.merged and state.folded == [n.rpartition(".")[0] for n in names]
    assert not any(isinstance(m, LoRA) for m in model.modules())
    assert all(layer.merged and not layer.hooks for layer in state.layers.values())
    mosa.unmerge(model)
    assert not state.merged and state.folded == []
    assert all(dict(model.named_modules())[n] is state.layers[n] for n in names)


def test_a_copied_model_has_its_own_state(make_model: MakeModel) -> None:
    model = mosa.inject(make_model("vit"), mosa.MethodConfig(method="mosa", bottleneck=4))
    twin = copy.deepcopy(model)
    mosa.merge(twin)
    assert state_of(twin).merged and not state_of(model).merged
    twin_modules = set(twin.modules())
    assert all(layer in twin_modules for layer in state_of(twin).layers.values())
    assert all(isinstance(layer, Adapter) for layer in state_of(model).layers.values())

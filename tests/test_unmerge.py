"""mosa.unmerge undoes mosa.merge: training goes on exactly as if the model was never merged."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import torch

import mosa
from mosa import MethodConfig
from mosa.state import find_state, state_of

METHODS = {
    "adapter": MethodConfig(method="adapter", bottleneck=4),
    "lora": MethodConfig(method="lora", rank=2),
    # share none: both projections split, one of them with a stored initial weight W0
    "mosa": MethodConfig(method="mosa", bottleneck=4, share="none"),
    "mosa_lora": MethodConfig(method="mosa_lora", rank=2),
}


@pytest.fixture
def model_of(make_model: Callable[..., torch.nn.Module]) -> Callable[[str], torch.nn.Module]:
    return lambda name: mosa.inject(make_model("vit"), METHODS[name])


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(METHODS))
def test_merge_then_unmerge_trains_on_exactly_as_before(
    name: str, model_of: Any, train: Any, toy_data: Any
) -> None:
    straight, detour = model_of(name), model_of(name)
    first = train(straight, 3) + train(straight, 3)
    losses = train(detour, 3)
    mosa.merge(detour)
    merged_logits = detour.eval()(toy_data[0])
    mosa.unmerge(detour)
    losses += train(detour, 3)
    assert losses == first
    a, b = _state(straight), _state(detour)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(
        torch.cat([s.flatten() for s in mosa.get_rng_state(straight).values()] or [torch.zeros(0)]),
        torch.cat([s.flatten() for s in mosa.get_rng_state(detour).values()] or [torch.zeros(0)]),
    )
    assert not state_of(detour).merged
    assert torch.isfinite(merged_logits).all()


def test_merge_refuses_nan_and_leaves_the_model_unchanged(model_of: Any, train: Any) -> None:
    model = model_of("mosa_lora")
    train(model, 2)
    before = _state(model)
    lora = next(m for m in model.modules() if type(m).__name__ == "LoRA")
    with torch.no_grad():
        next(iter(lora.branches.values())).B.weight.fill_(float("nan"))
    poisoned = _state(model)
    with pytest.raises(ValueError, match="NaN or inf"):
        mosa.merge(model)
    assert not state_of(model).merged
    after = _state(model)
    assert after.keys() == before.keys()
    for k in after:
        torch.testing.assert_close(after[k], poisoned[k], rtol=0, atol=0, equal_nan=True, msg=k)


def test_a_model_loaded_merged_cannot_be_unmerged(
    tmp_path: Any, model_of: Any, train: Any, make_model: Any
) -> None:
    model = model_of("mosa")
    train(model, 2)
    mosa.merge(model)
    mosa.save_adapter(model, tmp_path / "merged")
    loaded = mosa.load_adapter(make_model("vit"), tmp_path / "merged")
    with pytest.raises(ValueError, match="cannot be unmerged"):
        mosa.unmerge(loaded)


def test_unmerge_of_an_unmerged_model_changes_nothing(model_of: Any) -> None:
    model = model_of("mosa")
    before = _state(model)
    assert mosa.unmerge(model) is model
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", ["mosa", "mosa_lora"])
def test_unmerge_follows_dtype_and_mode_changes_made_while_merged(
    name: str, model_of: Any, train: Any, toy_data: Any
) -> None:
    model = model_of(name)
    train(model, 2)
    mosa.merge(model.eval())
    model.double().train()
    mosa.unmerge(model)
    x = toy_data[0].double()
    assert model(x).dtype == torch.float64  # every restored layer is float64 now
    split = next(mosa.model.mosa_modules(model))
    assert split.training and split.weight.dtype == torch.float64


def test_eject_forgets_what_unmerge_would_restore(model_of: Any) -> None:
    model = model_of("lora")
    mosa.merge(model)
    kept = [weakref.ref(layer) for layer in state_of(model).layers.values()]
    assert kept and all(ref() is not None for ref in kept)  # the folded LoRA, kept for unmerge
    mosa.model.eject(model)
    gc.collect()
    assert find_state(model) is None
    assert all(ref() is None for ref in kept)  # nothing holds them (or their weight copies)

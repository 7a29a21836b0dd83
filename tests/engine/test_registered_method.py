"""A method registered with one call trains, merges and round-trips like a built-in one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_helpers import make_config, tiny_model, toy_datasets

import mosa
from mosa import config as config_module
from mosa.config import ADAPTER_FIELDS, LORA_FIELDS, MethodSpec, register_method
from mosa.engine import train
from mosa.methods import ADAPTER, LORA
from mosa.model import adapter_state_dict
from mosa.state import state_of

METHOD = {"method": "adapter_lora", "bottleneck": 8, "rank": 4, "targets": ("q", "v", "mlp")}


@pytest.fixture(autouse=True)
def _registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # the method registered here is gone after the test
    monkeypatch.setattr(config_module, "_METHODS", dict(config_module._METHODS))


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_a_method_registered_with_one_call_trains_merges_and_round_trips(tmp_path: Path) -> None:
    # an adapter and LoRA in every block at once: no built-in method does both
    register_method(MethodSpec("adapter_lora", (ADAPTER, LORA), ADAPTER_FIELDS + LORA_FIELDS))

    model = tiny_model()
    init = {
        k: v.clone()
        for k, v in mosa.inject(tiny_model(), mosa.MethodConfig(**METHOD)).state_dict().items()
    }
    summary = train(
        make_config(tmp_path / "run", method=METHOD, epochs=2),
        model=model,
        datasets=toy_datasets(),
        progress=False,
    )
    assert summary["test_acc"] is not None
    layers = state_of(model).layers
    assert {type(m).__name__ for m in layers.values()} == {"Adapter", "LoRA"}
    trained = adapter_state_dict(model)
    assert any("mosa_adapter" in k for k in trained) and any("mosa_lora" in k for k in trained)
    assert any(not torch.equal(v, init[k]) for k, v in trained.items() if "mosa_lora" in k)

    x = toy_datasets()["test"].tensors[0][:8]
    before = _logits(model, x)
    mosa.save_adapter(model, tmp_path / "unmerged")
    mosa.merge(model)
    assert state_of(model).merged and state_of(model).folded
    assert not any(k.endswith("mosa_lora") for k, _ in model.named_modules())
    merged = _logits(model, x)
    torch.testing.assert_close(merged, before, rtol=1e-4, atol=1e-5)
    mosa.save_adapter(model, tmp_path / "merged")

    for folder, want in (("unmerged", before), ("merged", merged)):
        fresh = mosa.load_adapter(tiny_model(), tmp_path / folder)  # the frozen backbone
        assert state_of(fresh).config.method == "adapter_lora"
        assert torch.equal(_logits(fresh, x), want), folder

    mosa.unmerge(model)
    assert torch.equal(_logits(model, x), before)

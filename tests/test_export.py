"""``mosa.export_timm``: a merged model written as a plain timm state_dict that a fresh
``timm.create_model`` loads with ``strict=True`` and that gives the trained model's logits."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import mosa
from mosa.heads import TaskView, attach_task_heads

MakeModel = Callable[..., nn.Module]
NUM_CLASSES = 5  # conftest's tiny models


def lora_model(make_model: MakeModel, train: Callable[..., list[float]], method: str) -> nn.Module:
    """A tiny ViT with ``method`` injected and a few training steps taken (LoRA's B is no
    longer zero, so merging changes the backbone's weights)."""
    model = make_model("vit")
    mosa.inject(model, mosa.MethodConfig(method=method, rank=4, num_experts=2))
    train(model, steps=3)
    return model.eval()


@pytest.mark.parametrize("method", ["lora", "mosa_lora"])
def test_export_loads_into_plain_timm_with_equal_logits(
    make_model: MakeModel,
    train: Callable[..., list[float]],
    images: torch.Tensor,
    tmp_path: Path,
    method: str,
) -> None:
    model = lora_model(make_model, train, method)
    with torch.no_grad():
        want = model(images)
        before = make_model("vit").eval()(images)
    assert not torch.allclose(want, before, atol=1e-4)  # LoRA changed something
    mosa.merge(model)
    path = mosa.export_timm(model, tmp_path / "deploy", source="runs/x/adapter")
    assert path == tmp_path / "deploy" / "model.safetensors"

    plain = make_model("vit", seed=1)  # other weights: the file must replace all of them
    plain.load_state_dict(load_file(str(path)), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(images), want, atol=1e-5, rtol=1e-4)
    config = json.loads((path.parent / "model_config.json").read_text())
    assert config == {
        "backbone": "vit_tiny_patch16_224",
        "num_classes": NUM_CLASSES,
        "source": "runs/x/adapter",
    }
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {
            "format": "pt",
            "backbone": "vit_tiny_patch16_224",
            "num_classes": str(NUM_CLASSES),
        }


@pytest.mark.parametrize("joint", [False, True])
def test_multitask_export_makes_the_tasks_head_the_timm_head(
    make_model: MakeModel, images: torch.Tensor, tmp_path: Path, joint: bool
) -> None:
    model = make_model("vit")
    mosa.inject(model, mosa.MethodConfig(method="lora", rank=4))
    attach_task_heads(model, {"a": 3, "b": 2}, joint)
    mosa.merge(model)
    with pytest.raises(mosa.ExportError) as exc:
        mosa.export_timm(model, tmp_path / "none")
    assert exc.value.reason == "task" and not (tmp_path / "none").exists()

    path = mosa.export_timm(model, tmp_path, task="b")
    plain = make_model("vit", num_classes=2)
    plain.load_state_dict(load_file(str(path)), strict=True)
    with torch.no_grad():
        want = TaskView(model, "b").eval()(images)
        torch.testing.assert_close(plain.eval()(images), want, atol=1e-5, rtol=1e-4)
    config = json.loads((tmp_path / "model_config.json").read_text())
    assert (config["task"], config["num_classes"]) == ("b", 2)


def test_export_refuses_unmerged_models_and_adapter_modules(
    make_model: MakeModel, tmp_path: Path
) -> None:
    lora = make_model("vit")
    mosa.inject(lora, mosa.MethodConfig(method="lora", rank=4))
    with pytest.raises(mosa.ExportError) as exc:
        mosa.export_timm(lora, tmp_path / "lora")
    assert exc.value.reason == "unmerged"

    sparse = make_model("vit")
    mosa.inject(sparse, mosa.MethodConfig(method="mosa", bottleneck=8, num_experts=2))
    mosa.merge(sparse)  # one dense adapter, still a module of its own
    with pytest.raises(mosa.ExportError) as exc:
        mosa.export_timm(sparse, tmp_path / "mosa")
    assert exc.value.reason == "adapter"
    assert not (tmp_path / "lora").exists() and not (tmp_path / "mosa").exists()


def test_export_module_stays_below_the_engine_cli_and_bench() -> None:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(Path(mosa.export.__file__).read_text())):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
    banned = ("mosa.cli", "mosa.bench", "mosa.engine.trainer")
    assert sorted(m for m in imported if m.startswith(banned)) == []

"""The scale / architecture recipes' backbones take MoSA: ViT-L/16, ViT-H/14, Swin-B, ConvNeXt-B.

Each architecture is built from the same timm entrypoint as its recipe (``scales/*.yaml``),
shrunk (width, depth, image size) and with random weights, so the real classes run: MoSA is
injected where the paper puts it, the training engine takes one step, and the adapter
checkpoint restores the same outputs in a fresh model. No weights are downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from timm.models.convnext import ConvNeXt
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.data import TensorDataset

import mosa
from mosa.adapters.adapter import Adapter
from mosa.engine import DataConfig, OptimConfig, TrainConfig, train
from mosa.evaluation import load_for_eval
from mosa.heads import attach_task_heads, task_logits
from mosa.recipes import load_config

NUM_CLASSES = 5

# recipe -> (timm entrypoint, family, tiny overrides, image size)
ARCHS: dict[str, tuple[str, type[nn.Module], dict[str, Any], int]] = {
    "vit_l16": (
        "vit_large_patch16_224",
        VisionTransformer,
        {"img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2},
        32,
    ),
    "vit_h14": (
        "vit_huge_patch14_224",
        VisionTransformer,
        {"img_size": 28, "embed_dim": 32, "depth": 2, "num_heads": 2},
        28,
    ),
    "swin_b": (
        "swin_base_patch4_window7_224",
        SwinTransformer,
        {"img_size": 32, "embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2), "window_size": 4},
        32,
    ),
    # layer scale 1 like a trained model's: timm's from-scratch 1e-6 would mute every block
    "convnext_b": (
        "convnext_base",
        ConvNeXt,
        {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32), "ls_init_value": 1.0},
        32,
    ),
}
MOSA = {"method": "mosa", "bottleneck": 4, "num_experts": 2, "share": "none", "dropout": 0.0}


def _model(recipe: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    name, _, kwargs, _ = ARCHS[recipe]
    torch.manual_seed(0)
    return timm.create_model(
        name, pretrained=False, num_classes=num_classes, drop_path_rate=0.0, **kwargs
    )


def _data(recipe: str, n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    size = ARCHS[recipe][3]
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % NUM_CLASSES


@pytest.mark.parametrize("recipe", list(ARCHS))
def test_recipe_backbone_exists_in_timm(recipe: str) -> None:
    cfg = load_config(["fgvc/cub", f"scales/{recipe}"])
    arch, _, tag = cfg.backbone.partition(".")
    assert arch == ARCHS[recipe][0] and tag in ("orig_in21k", "ms_in22k", "fb_in22k")
    assert cfg.backbone in timm.list_pretrained(arch + ".*")
    # the mixin changes the backbone and the output folder, nothing of the task recipe
    cub = load_config("fgvc/cub")
    assert (cfg.optim, cfg.method, cfg.data) == (cub.optim, cub.method, cub.data)
    assert cfg.backbone.replace("/", "_") in cfg.out


@pytest.mark.parametrize("recipe", list(ARCHS))
def test_mosa_trains_one_step_and_round_trips(recipe: str, tmp_path: Path) -> None:
    _, family, kwargs, _ = ARCHS[recipe]
    model = _model(recipe)
    assert isinstance(model, family)
    if family is VisionTransformer:
        patch = 16 if recipe == "vit_l16" else 14
        assert tuple(model.patch_embed.patch_size) == (patch, patch)
    x, y = _data(recipe)
    mosa.inject(model, mosa.MethodConfig(**MOSA))  # the engine takes an injected model too
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(
        backbone=ARCHS[recipe][0],
        pretrained=False,
        method=MOSA,
        data=[DataConfig(kind="folder", root="unused", task="toy", train_split="train")],
        optim=OptimConfig(lr=1e-2, epochs=1, warmup_epochs=0, batch_size=len(x)),
        seed=0,
        out=str(tmp_path / "run"),
        device="cpu",
    )
    ds = TensorDataset(x, y)
    summary = train(cfg, model=model, datasets={"train": ds, "val": None, "test": ds})
    assert summary["global_steps"] == 1

    # placement (paper): one adapter per block, in parallel to the MLP: it reads the MLP's
    # input (ViT: x' before norm2; Swin, ConvNeXt: the MLP's own, channels-last input)
    adapters = [m for m in model.modules() if isinstance(m, Adapter)]
    blocks = len(model.blocks) if family is VisionTransformer else sum(kwargs["depths"])
    assert len(adapters) == blocks
    for block in [m for m in model.modules() if hasattr(m, "mosa_adapter")]:
        reads = block.norm2 if family is VisionTransformer else block.mlp
        hooks = [*reads._forward_pre_hooks.values(), *reads._forward_hooks.values()]
        assert any(getattr(h, "__self__", None) is block.mosa_adapter for h in hooks)
        assert not block.mosa_adapter.channels_first
    # one step moved the adapters and the head, and nothing of the frozen backbone
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(".mosa_adapter." in n for n in moved)
    assert all(".mosa_adapter." in n or n.startswith("head") for n in moved), moved

    fresh = mosa.load_adapter(_model(recipe), tmp_path / "run" / "adapter")
    model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(mosa.merge(fresh)(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("recipe", list(ARCHS))
def test_task_heads_on_every_architecture(recipe: str, tmp_path: Path) -> None:
    model = _model(recipe)
    mosa.inject(model, mosa.MethodConfig(**MOSA))
    attach_task_heads(model, {"a": 3, "b": 2})
    x, _ = _data(recipe, 4)
    model.eval()
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        a = task_logits(model, x, "a")
        torch.testing.assert_close(a, model.mosa_heads["a"](feats))
        assert task_logits(model, x, "b").shape == (4, 2)
    mosa.save_adapter(model, tmp_path / "adapter")
    view = load_for_eval(tmp_path / "adapter", "a", model=_model(recipe), merge=False)
    with torch.no_grad():
        torch.testing.assert_close(view(x), a, rtol=0, atol=1e-5)

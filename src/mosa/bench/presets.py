"""What ``mosa bench speed`` measures: its variants, its presets and the adapter settings they
share. How long each preset runs is in docs/bench-notes.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

TRAIN_VARIANTS: dict[str, str] = {
    "linear": "head only; frozen backbone (its inference row is the backbone alone)",
    "adapter": "AdaptFormer parallel adapter",
    "mosa": "MoSA adapter (one tensor + owner index), consistency off",
    "mosa_consistency": "MoSA, 2 passes (one doubled-batch forward) + symmetric KL, CE on pass 1",
    "mosa_sparse_adamw": "MoSA with the engine's expert-local AdamW (optim.expert_updates=local)",
    "lora": "LoRA on q and v",
    "mosa_lora": "MoSA-LoRA on q and v",
    "mosa_reference": "reference-style MoSA: N expert copies + merge copy, grads masked",
}
# methods that --compile adds a compiled row for (named "<method>_compiled")
COMPILED_VARIANTS = ("adapter", "mosa", "mosa_consistency", "lora", "mosa_lora")
COMPILED_SUFFIX = "_compiled"
# inference variant -> what is timed
INFER_VARIANTS: dict[str, str] = {
    "linear": "backbone",
    "adapter": "adapter",
    "mosa": "merged",
    "lora": "merged",
    "mosa_lora": "merged",
}
LR, WEIGHT_DECAY = 1e-3, 0.01
# shared biases: the single-tensor layout at exactly the adapter's trainable parameters
# (the paper's per-expert biases add (N-1)·out per split projection; see mosa.summary)
METHOD: dict[str, Any] = {
    "bottleneck": 16,
    "rank": 16,
    "num_experts": 4,
    "share": "down",
    "seed": 3407,
    "bias": "shared",
}


@dataclass(frozen=True)
class Preset:
    """Backbone and run lengths for one kind of run."""

    model: str
    model_kwargs: dict[str, Any]
    img_size: int
    batch_size: int
    steps: int  # timed training rounds (one step per variant per round)
    warmup: int  # untimed rounds before them
    infer_steps: int
    num_classes: int
    amp_dtype: torch.dtype | None  # autocast dtype; None = the parameters' float32
    matmul_n: int
    matmul_iters: int
    method: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    # ViT-B/16 at 224 with the paper's batch, bf16 autocast
    "cuda": Preset(
        model="vit_base_patch16_224",
        model_kwargs={},
        img_size=224,
        batch_size=128,
        steps=60,
        warmup=8,
        infer_steps=50,
        num_classes=100,
        amp_dtype=torch.bfloat16,
        matmul_n=8192,
        matmul_iters=50,
    ),
    # ViT-Ti-like (width 192, 3 heads, depth 6) at 32 px, patch 8 (17 tokens)
    "cpu": Preset(
        model="vit_tiny_patch16_224",
        model_kwargs={"patch_size": 8, "depth": 6},
        img_size=32,
        batch_size=32,
        steps=60,
        warmup=3,
        infer_steps=30,
        num_classes=100,
        amp_dtype=None,
        matmul_n=1024,
        matmul_iters=20,
    ),
    # plumbing checks
    "quick": Preset(
        model="vit_tiny_patch16_224",
        model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
        img_size=32,
        batch_size=4,
        steps=3,
        warmup=1,
        infer_steps=3,
        num_classes=10,
        amp_dtype=None,
        matmul_n=128,
        matmul_iters=2,
        method={"bottleneck": 8, "rank": 4},
    ),
}


def preset_name(device: torch.device, quick: bool) -> str:
    """The preset a run on ``device`` uses: ``quick`` when asked, else the device's own."""
    return "quick" if quick else ("cuda" if device.type == "cuda" else "cpu")


def method_settings(preset: Preset) -> dict[str, Any]:
    """The adapter settings every variant of a run shares (:data:`METHOD` + the preset's)."""
    return {**METHOD, **preset.method}

"""Tiny models, toy data and configs shared by the engine tests and the DDP worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch.utils.data import TensorDataset

from mosa.engine import DataConfig, OptimConfig, TrainConfig

NUM_CLASSES = 4
IMG = 32


def tiny_model(num_classes: int = NUM_CLASSES, seed: int = 0) -> torch.nn.Module:
    """A 2-block ViT on 32x32 inputs with a seeded random init (no pretrained weights)."""
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=IMG,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=3,
        num_classes=num_classes,
    )


class ToyImages(TensorDataset):
    """Learnable toy task: noise images tinted by class (c < 3: colour channel c is brighter,
    c = 3: every channel is darker), so even a random frozen backbone separates the classes."""

    def __init__(self, n: int, seed: int, num_classes: int = NUM_CLASSES) -> None:
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % num_classes
        x = torch.randn(n, 3, IMG, IMG, generator=g)
        for i, c in enumerate(y.tolist()):
            if c % 4 < 3:
                x[i, c % 4] += 1.0
            else:
                x[i] -= 1.0
        super().__init__(x, y)
        self.targets = y.tolist()
        self.num_classes = num_classes
        self.classes = [f"c{i}" for i in range(num_classes)]
        self.paths = [f"toy/{seed}/{i}.png" for i in range(n)]


def toy_datasets(n_train: int = 64, n_val: int = 32, n_test: int = 32) -> dict[str, Any]:
    return {
        "train": ToyImages(n_train, seed=1),
        "val": ToyImages(n_val, seed=2) if n_val else None,
        "test": ToyImages(n_test, seed=3) if n_test else None,
    }


def make_config(
    out: str | Path,
    *,
    method: dict[str, Any] | None = None,
    seed: int = 7,
    checkpoint_every: int = 1,
    **optim: Any,
) -> TrainConfig:
    """A run of the tiny ViT on the toy data: 3 epochs of 4 steps unless ``optim`` says else."""
    settings: dict[str, Any] = {
        "lr": 1e-2,
        "epochs": 3,
        "warmup_epochs": 1,
        "batch_size": 16,
        "weight_decay": 0.01,
    }
    settings.update(optim)
    return TrainConfig(
        backbone="vit_tiny_patch16_224",
        pretrained=False,
        backbone_kwargs={"img_size": IMG, "patch_size": 8, "embed_dim": 48, "depth": 2},
        method=method or {"method": "mosa", "bottleneck": 8, "num_experts": 4},
        # the engine gets pre-built data sets; the data config still names the splits
        data=[DataConfig(kind="folder", root="unused", task="toy", train_split="train")],
        optim=OptimConfig(**settings),
        seed=seed,
        out=str(out),
        device="cpu",
        checkpoint_every=checkpoint_every,
    )


def ddp_config(out: str | Path) -> TrainConfig:
    """The DDP-vs-single comparison run: no dropout (each rank would draw other masks than
    the single process), consistency on (both passes' expert picks must agree across ranks)."""
    return make_config(
        out,
        method={"method": "mosa", "bottleneck": 8, "num_experts": 4, "dropout": 0.0},
        epochs=2,
        warmup_epochs=1,
        batch_size=16,
        grad_clip=1.0,
    )

"""Shared tiny-backbone fixtures: random-weight timm ViT, Swin and ConvNeXt at 32x32 pixels.

Every model is small enough that a forward and backward pass takes milliseconds on a CPU, so
the library's properties can be checked on real timm classes rather than on mocks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 5
IMG = 32

# name -> (timm entrypoint, overrides that make it tiny). ConvNeXt uses conv_mlp=False like
# convnext_base, so its MLP is made of Linear layers (LoRA's "mlp" target exists), and a
# layer scale of 1 like a trained model's (timm's from-scratch 1e-6 mutes every block's MLP
# branch, and with it LoRA on fc1/fc2).
ARCHS: dict[str, tuple[str, dict[str, object]]] = {
    "vit": (
        "vit_tiny_patch16_224",
        dict(img_size=IMG, patch_size=8, embed_dim=48, depth=2, num_heads=3),
    ),
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(
            img_size=IMG, patch_size=2, window_size=4, embed_dim=24, depths=(1, 1), num_heads=(1, 2)
        ),
    ),
    "convnext": (
        "convnext_atto",
        dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), conv_mlp=False, ls_init_value=1.0),
    ),
}


def build_model(arch: str = "vit", seed: int = 0, **overrides: object) -> nn.Module:
    """A fresh random-weight tiny model; the same ``seed`` gives the same weights."""
    name, kwargs = ARCHS[arch]
    torch.manual_seed(seed)
    # no stochastic depth (timm's Swin defaults to 0.1): training forwards are then random
    # only through what mosa adds
    kw = {**kwargs, "num_classes": NUM_CLASSES, "drop_path_rate": 0.0, **overrides}
    return timm.create_model(name, pretrained=False, **kw)


def colour_data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable toy problem: the class is the colour of the (noisy) image."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(NUM_CLASSES, 3, 1, 1, generator=g) * 2 - 1
    y = torch.arange(n) % NUM_CLASSES
    x = colours[y] + 0.3 * torch.randn(n, 3, IMG, IMG, generator=g)
    return x, y


def train_steps(
    model: nn.Module,
    steps: int,
    lr: float = 1e-2,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int = 0,
) -> list[float]:
    """``steps`` AdamW steps on the colour problem (trainable parameters only); the losses."""
    x, y = data if data is not None else colour_data()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    torch.manual_seed(seed)  # dropout
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def eval_loss(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    x, y = data if data is not None else colour_data()
    model.eval()
    return float(F.cross_entropy(model(x), y))


def missing_data(reason: str) -> None:
    """Skip a test whose real data is not installed, except where ``MOSA_REQUIRE_DATA=1``
    (CI installs the data, so a missing data set must fail there, not pass silently)."""
    if os.environ.get("MOSA_REQUIRE_DATA") == "1":
        pytest.fail(f"{reason}, but MOSA_REQUIRE_DATA=1 requires it", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def data_missing() -> Callable[[str], None]:
    """``data_missing(reason)``: skip, or fail under ``MOSA_REQUIRE_DATA=1`` (see
    :func:`missing_data`)."""
    return missing_data


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny models gain nothing from intra-op threads, and on the shared 2-core machine OpenMP
    # threads waiting on each other against other processes make tests many times slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_model() -> Callable[..., nn.Module]:
    return build_model


@pytest.fixture
def images() -> torch.Tensor:
    """A fixed batch of four random 32x32 images."""
    return torch.randn(4, 3, IMG, IMG, generator=torch.Generator().manual_seed(1234))


@pytest.fixture
def toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    return colour_data()


@pytest.fixture
def train() -> Callable[..., list[float]]:
    return train_steps


@pytest.fixture
def evaluate() -> Callable[..., float]:
    return eval_loss

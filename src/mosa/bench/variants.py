"""The models ``mosa bench speed`` trains: a random-weight timm backbone, one copy of it per
variant with its method injected, and the engine's training step run on each."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn

import mosa
from mosa.bench.flops import ViTShape
from mosa.bench.presets import COMPILED_SUFFIX, COMPILED_VARIANTS, LR, TRAIN_VARIANTS, WEIGHT_DECAY
from mosa.bench.reference import inject_reference, reference_state_dict
from mosa.engine.config import OptimConfig
from mosa.engine.optim import ExpertTracker, build_optimizer
from mosa.engine.step import Objective, train_step
from mosa.model import adapter_state_dict

__all__ = [
    "Variant",
    "build_backbone",
    "build_variants",
    "count_params",
    "describe",
    "embed_dim",
    "input_size",
    "model_info",
    "stepper",
    "stored_counts",
    "tokens_per_image",
]


@dataclass
class Variant:
    """One trained configuration: its model, optimizer and step settings."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    consistency: bool = False
    tracker: ExpertTracker | None = None  # feeds the expert-local AdamW its expert masks
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # e.g. torch.compile(model)


def stepper(
    v: Variant, x: torch.Tensor, y: torch.Tensor, amp: torch.dtype | None
) -> Callable[[], None]:
    """One call = one engine training step of ``v`` on ``(x, y)``: forward (both consistency
    passes as one doubled-batch forward), loss, backward and the optimizer step."""
    objective = Objective(consistency=1.0 if v.consistency else 0.0, amp=amp)

    def step() -> None:
        train_step(v.model, v.optimizer, x, y, objective, forward=v.forward, tracker=v.tracker)

    return step


def build_backbone(
    name: str, kwargs: dict[str, Any], img_size: int | None, num_classes: int
) -> nn.Module:
    """A timm model with random weights (``img_size`` None: the model's own)."""
    kw = dict(kwargs)
    if img_size is not None:
        kw["img_size"] = img_size
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)


def _build_variant(
    name: str, base: nn.Module, method: dict[str, Any], device: torch.device
) -> Variant:
    model = copy.deepcopy(base)
    if name == "mosa_reference":
        inject_reference(
            model,
            bottleneck=method["bottleneck"],
            num_experts=method["num_experts"],
            share=method["share"],
            seed=method["seed"],
        )
    else:
        m = "mosa" if name in ("mosa_consistency", "mosa_sparse_adamw") else name
        mosa.inject(model, mosa.MethodConfig(method=m, **method))
    model.to(device).train()
    if name == "mosa_sparse_adamw":
        ocfg = OptimConfig(lr=LR, weight_decay=WEIGHT_DECAY, expert_updates="local")
        opt = build_optimizer(model, ocfg)
        return Variant(name, model, opt, tracker=ExpertTracker(model))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    return Variant(name, model, opt, consistency=name == "mosa_consistency")


def build_variants(
    base: nn.Module, method: dict[str, Any], dev: torch.device, compile: bool
) -> dict[str, Variant]:
    """Every training variant on a copy of ``base``; with ``compile`` also the compiled rows."""
    variants = {n: _build_variant(n, base, method, dev) for n in TRAIN_VARIANTS}
    if compile:
        for n in COMPILED_VARIANTS:
            v = _build_variant(n, base, method, dev)
            v.name, v.forward = n + COMPILED_SUFFIX, torch.compile(v.model)
            variants[v.name] = v
    return variants


def describe(name: str) -> str:
    """A row's description: its method's, marked when compiled."""
    method = name.removesuffix(COMPILED_SUFFIX)
    return TRAIN_VARIANTS[method] + ("; torch.compile" if method != name else "")


def count_params(m: nn.Module, trainable_only: bool = False) -> int:
    """Parameter elements of ``m`` (only those that train, with ``trainable_only``)."""
    return sum(p.numel() for p in m.parameters() if p.requires_grad or not trainable_only)


def stored_counts(name: str, model: nn.Module) -> tuple[int, int]:
    """(elements, bytes) an adapter checkpoint of this variant holds (index buffers included)."""
    sd = reference_state_dict(model) if name == "mosa_reference" else adapter_state_dict(model)
    return sum(t.numel() for t in sd.values()), sum(t.nbytes for t in sd.values())


def model_info(base: nn.Module, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The backbone's name, overrides, size and, for a ViT, its shape (for the JSON)."""
    info: dict[str, Any] = {"name": name, "overrides": kwargs, "params": count_params(base)}
    pe = getattr(base, "patch_embed", None)
    if pe is not None and hasattr(pe, "img_size"):
        info["img_size"] = list(pe.img_size)
        info["patch_size"] = list(pe.patch_size)
    for attr in ("embed_dim", "num_classes", "num_prefix_tokens"):
        if hasattr(base, attr):
            info[attr] = int(getattr(base, attr))
    blocks = getattr(base, "blocks", None)
    if blocks is not None:
        info["depth"] = len(blocks)
        attn = getattr(blocks[0], "attn", None)
        if attn is not None and hasattr(attn, "num_heads"):
            info["num_heads"] = int(attn.num_heads)
    return info


def input_size(base: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) of the images ``base`` takes."""
    cfg = getattr(base, "pretrained_cfg", {}) or {}
    pe = getattr(base, "patch_embed", None)
    if pe is not None and getattr(pe, "img_size", None) is not None:
        return int(pe.proj.in_channels), int(pe.img_size[0]), int(pe.img_size[1])
    c, h, w = cfg.get("input_size", (3, 224, 224))
    return int(c), int(h), int(w)


def tokens_per_image(base: nn.Module) -> int | None:
    """Tokens a ViT sees per image (None for other backbones)."""
    try:
        return ViTShape.from_model(base).tokens
    except (TypeError, AttributeError):
        return None


def embed_dim(base: nn.Module) -> int:
    """The backbone's feature width."""
    return int(getattr(base, "embed_dim", None) or getattr(base, "num_features", 768))

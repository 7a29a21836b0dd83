"""Where methods attach inside each supported timm architecture (a small registry, timm-style).

Each architecture says which blocks it has, where an adapter of each style goes, and which
Linear layers LoRA may target. Attachment is by forward hooks plus new ``mosa_*`` submodules,
so timm's classes are neither subclassed nor replaced and backbone parameter names stay put.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn


@dataclass
class AdapterSite:
    """One adapter placement inside a block."""

    name: str  # submodule name the adapter is registered under, on ``block``
    dim: int
    hooked: nn.Module  # module whose output receives the adapter
    # "parallel" | "parallel_tap" | "sequential" | "residual": the adapter reads the residual
    # stream s at ``tap``'s input and makes it s + A(s) (``tap`` then sees s + A(s), and A(s)
    # is added to ``hooked``'s output, the branch that timm adds back onto s)
    mode: str
    tap: nn.Module | None = None  # module whose input feeds a "parallel_tap"/"residual" adapter
    channels_first: bool = False
    to_nchw: bool = False


@dataclass
class LoRATarget:
    """A Linear layer LoRA may update, and which output rows each named part covers."""

    path: str  # attribute path inside the block, e.g. "attn.qkv"
    parts: dict[str, slice]


@dataclass
class Architecture:
    name: str
    matches: Callable[[nn.Module], bool]
    blocks: Callable[[nn.Module], Iterator[tuple[str, nn.Module]]]
    adapter_sites: Callable[[nn.Module, str], list[AdapterSite]]
    lora_targets: Callable[[nn.Module], dict[str, list[LoRATarget]]]


_REGISTRY: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    """Add an architecture; later registrations are tried first (so users can override)."""
    _REGISTRY[arch.name] = arch
    return arch


def supported_architectures() -> list[str]:
    return list(_REGISTRY)


def find_architecture(model: nn.Module) -> Architecture:
    """The registered architecture of ``model``, or a clear error listing what is supported."""
    for arch in reversed(list(_REGISTRY.values())):
        if arch.matches(model):
            return arch
    raise TypeError(
        f"mosa does not support {type(model).__name__}; supported timm architectures: "
        + ", ".join(supported_architectures())
        + " (ViT/DeiT/DINO-style models built on timm's Block, Swin, ConvNeXt)"
    )


def _linear_in(module: nn.Module) -> int:
    fc1 = module.fc1
    return fc1.in_features if isinstance(fc1, nn.Linear) else fc1.in_channels


def _whole(path: str, layer: nn.Linear) -> LoRATarget:
    return LoRATarget(path, {"w": slice(0, layer.out_features)})


def _attn_mlp_targets(block: nn.Module) -> dict[str, list[LoRATarget]]:
    """q/k/v as row slices of the fused ``attn.qkv`` (timm orders its output q, k, v),
    o as ``attn.proj``, mlp as both ``mlp.fc1`` and ``mlp.fc2`` (when they are Linear)."""
    targets: dict[str, list[LoRATarget]] = {}
    attn = getattr(block, "attn", None)
    qkv = getattr(attn, "qkv", None)
    if isinstance(qkv, nn.Linear):
        d = qkv.out_features // 3
        for i, t in enumerate("qkv"):
            targets[t] = [LoRATarget("attn.qkv", {t: slice(i * d, (i + 1) * d)})]
    proj = getattr(attn, "proj", None)
    if isinstance(proj, nn.Linear):
        targets["o"] = [_whole("attn.proj", proj)]
    mlp = getattr(block, "mlp", None)
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear):
        targets["mlp"] = [_whole("mlp.fc1", fc1), _whole("mlp.fc2", fc2)]
    return targets


# ---------------------------------------------------------------------------- ViT


def _vit_matches(model: nn.Module) -> bool:
    from timm.models.vision_transformer import Block, VisionTransformer

    return isinstance(model, VisionTransformer) and all(isinstance(b, Block) for b in model.blocks)


def _vit_blocks(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for i, b in enumerate(model.blocks):
        yield f"blocks.{i}", b


def _vit_sites(block: nn.Module, style: str) -> list[AdapterSite]:
    dim = _linear_in(block.mlp)
    if style == "adaptformer":
        # parallel to the MLP sub-layer: reads x' (before norm2), adds after ls2
        return [AdapterSite("mosa_adapter", dim, block.ls2, "parallel_tap", tap=block.norm2)]
    if style == "pfeiffer":
        return [AdapterSite("mosa_adapter", dim, block.mlp, "sequential")]
    return _houlsby_sites(block, dim, block.ls2)


def _houlsby_sites(block: nn.Module, dim: int, mlp_branch: nn.Module) -> list[AdapterSite]:
    # as in the reference code, both adapters read the post-residual stream: after the
    # attention sub-layer's residual add (the input of norm2) and after the block
    return [
        AdapterSite("mosa_adapter_attn", dim, mlp_branch, "residual", tap=block.norm2),
        AdapterSite("mosa_adapter", dim, block, "sequential"),
    ]


register_architecture(Architecture("vit", _vit_matches, _vit_blocks, _vit_sites, _attn_mlp_targets))

# ---------------------------------------------------------------------------- Swin


def _swin_matches(model: nn.Module) -> bool:
    from timm.models.swin_transformer import SwinTransformer

    return isinstance(model, SwinTransformer)


def _swin_blocks(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for i, layer in enumerate(model.layers):
        for j, b in enumerate(layer.blocks):
            yield f"layers.{i}.blocks.{j}", b


def _swin_sites(block: nn.Module, style: str) -> list[AdapterSite]:
    dim = _linear_in(block.mlp)
    if style == "adaptformer":
        # the paper's Swin placement: in parallel inside the block's MLP
        return [AdapterSite("mosa_adapter", dim, block.mlp, "parallel")]
    if style == "pfeiffer":
        return [AdapterSite("mosa_adapter", dim, block.mlp, "sequential")]
    return _houlsby_sites(block, dim, block.mlp)


register_architecture(
    Architecture("swin", _swin_matches, _swin_blocks, _swin_sites, _attn_mlp_targets)
)

# ---------------------------------------------------------------------------- ConvNeXt


def _convnext_matches(model: nn.Module) -> bool:
    from timm.models.convnext import ConvNeXt

    return isinstance(model, ConvNeXt)


def _convnext_blocks(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for i, stage in enumerate(model.stages):
        for j, b in enumerate(stage.blocks):
            yield f"stages.{i}.blocks.{j}", b


def _convnext_sites(block: nn.Module, style: str) -> list[AdapterSite]:
    dim = _linear_in(block.mlp)
    cf = bool(getattr(block, "use_conv_mlp", False))
    if style == "adaptformer":
        # reads the MLP's (channels-last) input and adds to the block output, outside the
        # frozen layer scale gamma, which would otherwise rescale (or, at 1e-6, mute) it
        return [
            AdapterSite(
                "mosa_adapter",
                dim,
                block,
                "parallel_tap",
                tap=block.mlp,
                channels_first=cf,
                to_nchw=not cf,
            )
        ]
    if style == "pfeiffer":
        return [AdapterSite("mosa_adapter", dim, block.mlp, "sequential", channels_first=cf)]
    raise ValueError(
        "style='houlsby' places an adapter after attention, which ConvNeXt blocks do not have; "
        "use style='adaptformer' or 'pfeiffer'"
    )


register_architecture(
    Architecture(
        "convnext", _convnext_matches, _convnext_blocks, _convnext_sites, _attn_mlp_targets
    )
)

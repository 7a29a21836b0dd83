"""Analytic matmul FLOP count of a timm ViT, and a measured matmul rate to compare it against.

Only matrix multiplications are counted (patch embedding, qkv, attention scores, attention times
values, output projection, fc1, fc2, adapter projections, head); LayerNorm, GELU, softmax and
element-wise work are left out, as is usual for "model FLOPs utilisation". One multiply-add is
two FLOPs.

Backward with a frozen backbone computes activation gradients only (no weight gradients for the
backbone), so a weight matmul costs as much backward as forward, while the two attention matmuls
(both operands are activations) cost twice their forward. Autograd skips every op whose inputs
need no gradient: the patch embedding never runs backward, and with a parallel adapter in every
block the backbone ops of block 0 do not either (their input is the frozen embedding); only the
adapter of block 0 does. The unit tests check these counts against ``torch.utils.flop_counter``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ViTShape:
    """The sizes of a ViT that its matmul FLOPs depend on."""

    grid: tuple[int, int]  # patches per column and per row
    patch: tuple[int, int]
    in_chans: int
    embed_dim: int
    depth: int
    mlp_hidden: int
    num_prefix_tokens: int  # class token plus register tokens
    num_classes: int

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def tokens(self) -> int:
        return self.num_patches + self.num_prefix_tokens

    @classmethod
    def from_model(cls, model: nn.Module) -> ViTShape:
        """Read the shape from a timm ``VisionTransformer`` (with or without mosa injected)."""
        pe = getattr(model, "patch_embed", None)
        blocks = getattr(model, "blocks", None)
        if pe is None or blocks is None or not hasattr(pe, "grid_size"):
            raise TypeError(f"{type(model).__name__} is not a timm VisionTransformer")
        head = model.get_classifier()
        return cls(
            grid=(int(pe.grid_size[0]), int(pe.grid_size[1])),
            patch=(int(pe.patch_size[0]), int(pe.patch_size[1])),
            in_chans=int(pe.proj.in_channels),
            embed_dim=int(model.embed_dim),
            depth=len(blocks),
            mlp_hidden=int(blocks[0].mlp.fc1.out_features),
            num_prefix_tokens=int(model.num_prefix_tokens),
            num_classes=int(head.out_features) if isinstance(head, nn.Linear) else 0,
        )


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one training step (or one forward), split by component."""

    forward: dict[str, int]
    backward: dict[str, int]

    @property
    def forward_total(self) -> int:
        return sum(self.forward.values())

    @property
    def backward_total(self) -> int:
        return sum(self.backward.values())

    @property
    def total(self) -> int:
        return self.forward_total + self.backward_total

    def scaled(self, factor: int) -> FlopCount:
        """The count for ``factor`` times the work (a larger batch, repeated passes)."""
        return FlopCount(
            {k: v * factor for k, v in self.forward.items()},
            {k: v * factor for k, v in self.backward.items()},
        )

    def to_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "forward_total": self.forward_total,
            "backward_total": self.backward_total,
            "total": self.total,
        }


def vit_forward_flops(shape: ViTShape, bottleneck: int | None = None) -> dict[str, int]:
    """Forward matmul FLOPs for ONE image, by component (summed over blocks).

    ``bottleneck``: rank of a parallel adapter (Down d->r, Up r->d) in every block, or None.
    """
    t, d, h, depth = shape.tokens, shape.embed_dim, shape.mlp_hidden, shape.depth
    patch_in = shape.in_chans * shape.patch[0] * shape.patch[1]
    out = {
        "patch_embed": 2 * shape.num_patches * patch_in * d,
        "qkv": depth * 2 * t * d * 3 * d,
        # summed over heads: heads * T * T * head_dim = T * T * d multiply-adds
        "attn_scores": depth * 2 * t * t * d,
        "attn_values": depth * 2 * t * t * d,
        "proj": depth * 2 * t * d * d,
        "fc1": depth * 2 * t * d * h,
        "fc2": depth * 2 * t * h * d,
        "head": 2 * d * shape.num_classes,  # on the pooled token only
    }
    if bottleneck:
        out["adapter"] = depth * 2 * (2 * t * d * bottleneck)
    return out


def vit_train_flops(
    shape: ViTShape, batch: int, bottleneck: int | None = None, passes: int = 1
) -> FlopCount:
    """Matmul FLOPs of one training step with a frozen backbone and a trainable head.

    ``bottleneck`` given: a trainable AdaptFormer-style parallel adapter (with its own trainable
    LayerNorm) in every block, so gradients flow through the backbone of blocks 1..depth-1.
    ``bottleneck=None``: a linear probe, whose backward is the head's weight gradient only.
    ``passes``: forward+backward passes per step (2 for consistency regularisation).
    """
    fwd = vit_forward_flops(shape, bottleneck)
    d, c = shape.embed_dim, shape.num_classes
    if not bottleneck:
        bwd = {"head": 2 * d * c}
    else:
        # backbone blocks whose input requires grad: all but block 0
        grad_blocks = shape.depth - 1
        per_block = {k: fwd[k] // shape.depth for k in ("qkv", "attn_scores", "attn_values")}
        per_block.update({k: fwd[k] // shape.depth for k in ("proj", "fc1", "fc2")})
        bwd = {"patch_embed": 0}
        for k, v in per_block.items():
            # attention matmuls need the gradient of both operands; weight matmuls only of input
            factor = 2 if k in ("attn_scores", "attn_values") else 1
            bwd[k] = grad_blocks * factor * v
        bwd["head"] = 2 * (2 * d * c)  # weight gradient + input gradient
        # Down and Up: weight and input gradients in every block (the adapter LayerNorm is
        # trainable, so Down's input gradient is needed even in block 0)
        bwd["adapter"] = 2 * fwd["adapter"]
    return FlopCount(fwd, bwd).scaled(batch * passes)


def measure_matmul_rate(
    device: torch.device | str,
    dtype: torch.dtype,
    n: int = 8192,
    iters: int = 20,
    warmup: int = 3,
) -> float:
    """Achieved FLOP/s of an ``n x n @ n x n`` matmul in ``dtype`` (the device's practical peak).

    CUDA timing uses events around ``iters`` back-to-back matmuls after ``warmup`` untimed ones;
    CPU timing takes the best of ``iters`` single matmuls (the least disturbed by other work).
    """
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    flops = 2.0 * n**3
    for _ in range(warmup):
        torch.mm(a, b)
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(dev)
        start.record()
        for _ in range(iters):
            torch.mm(a, b)
        end.record()
        torch.cuda.synchronize(dev)
        return flops * iters / (start.elapsed_time(end) / 1e3)
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return flops / best

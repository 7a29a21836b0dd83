"""LoRA branches (optionally MoSA-split) attached to a backbone's Linear layers by forward hooks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mosa.adapters.adapter import make_projection
from mosa.adapters.sparse import MoSALinear
from mosa.config import MethodConfig


def projection_weight(proj: nn.Module) -> torch.Tensor:
    """The dense weight a projection applies in eval: merged for a MoSA split, plain otherwise."""
    return proj.merged_weight() if isinstance(proj, MoSALinear) else proj.weight


class LoRABranch(nn.Module):
    """``scaling * B(A(x))`` with A: in -> rank (Kaiming), B: rank -> out (zero), no biases."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: MethodConfig,
        generator: torch.Generator,
        route_seed: int,
    ) -> None:
        super().__init__()
        self.scaling = config.lora_scaling
        common: dict[str, Any] = dict(config=config, generator=generator, bias=False)
        self.A = make_projection(
            in_features,
            config.rank,
            split=config.split_down,
            init="kaiming",
            route_seed=route_seed,
            **common,
        )
        self.B = make_projection(
            config.rank,
            out_features,
            split=config.split_up,
            init="zero",
            route_seed=route_seed + 1,
            **common,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(x)) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The dense weight update ``scaling * B @ A`` that folding adds to the base layer."""
        return (projection_weight(self.B) @ projection_weight(self.A)) * self.scaling


class LoRA(nn.Module):
    """LoRA on one Linear layer, or on slices of a fused ``qkv`` Linear (q, k, v separately).

    ``parts`` maps a branch name to the row slice of the base layer's output it updates
    (a plain layer has the single part ``"w"`` covering every row).
    """

    def __init__(
        self,
        base: nn.Linear,
        parts: dict[str, slice],
        config: MethodConfig,
        generator: torch.Generator,
        route_seed: int,
    ) -> None:
        super().__init__()
        self.slices = parts
        self.out_features = base.out_features
        self.branches = nn.ModuleDict(
            {
                name: LoRABranch(
                    base.in_features, s.stop - s.start, config, generator, route_seed + 2 * i
                )
                for i, (name, s) in enumerate(parts.items())
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The additive update to the base layer's output."""
        if len(self.slices) == 1:
            ((name, s),) = self.slices.items()
            if s.start == 0 and s.stop == self.out_features:
                return self.branches[name](x)
        pieces: list[torch.Tensor] = []
        pos = 0
        for name, s in sorted(self.slices.items(), key=lambda kv: kv[1].start):
            if s.start > pos:
                pieces.append(x.new_zeros(*x.shape[:-1], s.start - pos))
            pieces.append(self.branches[name](x))
            pos = s.stop
        if pos < self.out_features:
            pieces.append(x.new_zeros(*x.shape[:-1], self.out_features - pos))
        return torch.cat(pieces, dim=-1)

    def hook(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output + self(args[0])

    @torch.no_grad()
    def fold_into(self, base: nn.Linear) -> None:
        """Add every branch's dense update into ``base.weight`` (the layer then needs no LoRA)."""
        for name, s in self.slices.items():
            delta = self.branches[name].delta_weight()
            base.weight[s] += delta.to(base.weight.dtype)

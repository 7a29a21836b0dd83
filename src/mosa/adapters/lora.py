"""LoRA branches (optionally MoSA-split) attached to a backbone's Linear layers by forward hooks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from mosa.adapters.adapter import make_projection, split_options
from mosa.adapters.sparse import ExpertOptions, MoSALinear
from mosa.config import MethodConfig

ATTACH_NAME = "mosa_lora"  # the child name of a LoRA under its Linear (mosa's "mosa_" prefix)


def projection_weight(proj: nn.Module) -> torch.Tensor:
    """The dense weight a projection applies in eval: merged for a MoSA split, plain otherwise."""
    return proj.merged_weight() if isinstance(proj, MoSALinear) else proj.weight


def lora_options(config: MethodConfig) -> dict[str, Any]:
    """:class:`LoRABranch`'s options from a :class:`MethodConfig`."""
    a, b = split_options(config)
    return {"rank": config.rank, "scaling": config.lora_scaling, "a_experts": a, "b_experts": b}


class LoRABranch(nn.Module):
    """``scaling * B(A(x))`` with A: in -> rank (Kaiming), B: rank -> out (zero), no biases."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rank: int,
        scaling: float = 1.0,
        a_experts: ExpertOptions | None = None,
        b_experts: ExpertOptions | None = None,
        generator: torch.Generator,
        route_seed: int = 0,
    ) -> None:
        super().__init__()
        self.scaling = scaling
        self.A = make_projection(
            in_features,
            rank,
            experts=a_experts,
            init="kaiming",
            generator=generator,
            route_seed=route_seed,
            bias=False,
        )
        self.B = make_projection(
            rank,
            out_features,
            experts=b_experts,
            init="zero",
            generator=generator,
            route_seed=route_seed + 1,
            bias=False,
        )

    @classmethod
    def from_config(
        cls,
        in_features: int,
        out_features: int,
        config: MethodConfig,
        generator: torch.Generator,
        route_seed: int,
    ) -> LoRABranch:
        """The branch a :class:`MethodConfig` describes."""
        return cls(
            in_features,
            out_features,
            **lora_options(config),
            generator=generator,
            route_seed=route_seed,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.B(self.A(x)) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The dense weight update ``scaling * B @ A`` that folding adds to the base layer."""
        return (projection_weight(self.B) @ projection_weight(self.A)) * self.scaling


class LoRA(nn.Module):
    """LoRA on one Linear layer, or on slices of a fused ``qkv`` Linear (q, k, v separately).

    ``parts`` maps a branch name to the row slice of the base layer's output it updates
    (a plain layer has the single part ``"w"`` covering every row). Like a PEFT tuner layer it
    merges itself: :meth:`merge` folds it into its base layer and :meth:`unmerge` undoes that.
    """

    def __init__(
        self,
        base: nn.Linear,
        parts: dict[str, slice],
        *,
        generator: torch.Generator,
        route_seed: int = 0,
        **branch: Any,
    ) -> None:
        """``branch``: :class:`LoRABranch`'s options (rank, scaling, a_experts, b_experts)."""
        super().__init__()
        self.slices = parts
        self.out_features = base.out_features
        self.branches = nn.ModuleDict(
            {
                name: LoRABranch(
                    base.in_features,
                    s.stop - s.start,
                    generator=generator,
                    route_seed=route_seed + 2 * i,
                    **branch,
                )
                for i, (name, s) in enumerate(parts.items())
            }
        )
        self.hooks: list[RemovableHandle] = []
        self.folds = True  # merging folds it into its base layer and removes it
        self.merged = False
        # base.weight as it was before the merge (None: not merged, or forgotten)
        self.base_weight: torch.Tensor | None = None

    @classmethod
    def from_config(
        cls,
        base: nn.Linear,
        parts: dict[str, slice],
        config: MethodConfig,
        generator: torch.Generator,
        route_seed: int,
    ) -> LoRA:
        """LoRA on ``base`` as a :class:`MethodConfig` describes it."""
        return cls(base, parts, generator=generator, route_seed=route_seed, **lora_options(config))

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

    def attach(self, base: nn.Linear) -> None:
        """Register under ``base`` (as ``mosa_lora``) and add to its output by a forward hook."""
        base.add_module(ATTACH_NAME, self)
        self.hooks.append(base.register_forward_hook(self.hook))

    def detach(self, base: nn.Linear | None = None) -> None:
        """Remove the hook (and, given ``base``, the registration under it)."""
        for handle in self.hooks:
            handle.remove()
        self.hooks.clear()
        if base is not None and getattr(base, ATTACH_NAME, None) is self:
            delattr(base, ATTACH_NAME)

    @torch.no_grad()
    def fold_into(self, base: nn.Linear) -> None:
        """Add every branch's dense update into ``base.weight`` (the layer then needs no LoRA)."""
        for name, s in self.slices.items():
            delta = self.branches[name].delta_weight()
            base.weight[s] += delta.to(base.weight.dtype)

    @torch.no_grad()
    def check_mergeable(self) -> None:
        """``ValueError`` when a branch's dense update holds NaN or inf."""
        for name, branch in self.branches.items():
            if not torch.isfinite(branch.delta_weight()).all():
                raise ValueError(f"LoRA branch {name!r} holds NaN or inf: refusing to merge")

    @torch.no_grad()
    def merge(self, base: nn.Linear) -> None:
        """Fold into ``base`` (refusing a non-finite update) and leave it: ``base`` is then a
        plain Linear. Its weight as it was is kept, so :meth:`unmerge` restores it bit for bit
        (subtracting again would round)."""
        if self.merged:
            return
        self.check_mergeable()
        self.base_weight = base.weight.detach().clone()
        self.fold_into(base)
        self.detach(base)
        self.merged = True

    @torch.no_grad()
    def unmerge(self, base: nn.Linear) -> None:
        """Undo :meth:`merge` on ``base`` and attach again, following the dtype, device and mode
        ``base`` was given since (``.to()`` and ``.train()`` did not reach a detached LoRA)."""
        if not self.merged:
            return
        if self.base_weight is None:
            raise ValueError("this LoRA was not merged in this process: nothing to undo")
        base.weight.copy_(self.base_weight)
        self.base_weight = None
        self.to(device=base.weight.device, dtype=base.weight.dtype).train(base.training)
        self.attach(base)
        self.merged = False

    def forget_merge(self) -> None:
        """Drop the kept weight (after loading merged weights it would be untrained)."""
        self.base_weight = None

    @property
    def restorable(self) -> bool:
        """Whether :meth:`unmerge` can undo a merge."""
        return not self.merged or self.base_weight is not None

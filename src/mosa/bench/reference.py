"""Reference-style MoSA: N full copies of each split projection, for cost and parity checks.

This mirrors how the paper's code implements MoSA, so the benchmark can show what the library's
single-tensor :class:`mosa.adapters.sparse.MoSALinear` saves, and the parity tests can train
both side by side (:func:`to_reference` turns every ``MoSALinear`` of a model into its N-copy
twin, which trained with ``torch.optim.AdamW`` is the paper's optimizer: ``zero_grad`` leaving
zero gradients for the reference mode, ``None`` ones for the expert-local mode). Each split
projection is N separate
``nn.Linear`` experts (weight and bias, all trainable parameters, all with optimizer state once
picked) plus a frozen merge copy; expert ``i`` owns the entries where ``owner == i`` and a float
mask per expert (as the reference code keeps) zeroes every other entry of its weight gradient
after the gradient has been accumulated. Each training forward picks one expert per split
projection uniformly at random; eval uses the merge copy, which :func:`merge_reference` fills
with the mean of the experts (weights and biases).

Placement is the library's AdaptFormer placement (a parallel adapter per block, found through
the same architecture registry); ``share="down"`` gives a dense Down and a split Up.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from mosa.adapters.partition import make_partition
from mosa.adapters.sparse import MoSALinear
from mosa.backbones.arch import find_architecture
from mosa.model import head_module_name

REF_PREFIX = "refmosa_"  # submodule names; deliberately not "mosa_" so mosa's own API ignores them


class ReferenceSplitLinear(nn.Module):
    """One projection as N full ``nn.Linear`` experts plus a merge copy (the N-copy layout).

    ``bias``: ``"expert"`` (each copy owns a bias: the reference), ``"shared"`` (one dense bias
    outside the copies) or ``None``. Picks come from a seeded ``torch.Generator`` drawn exactly
    as :class:`MoSALinear` draws them, so twins built by :meth:`from_mosa` pick alike.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        num_experts: int,
        init: str,
        owner: torch.Tensor,
        seed: int,
        generator: torch.Generator | None = None,
        bias: str | None = "expert",
    ) -> None:
        super().__init__()
        if bias not in ("expert", "shared", None):
            raise ValueError(f"bias must be 'expert', 'shared' or None, got {bias!r}")
        base = nn.Linear(in_features, out_features, bias=bias == "expert")
        with torch.no_grad():
            if init == "kaiming":
                nn.init.kaiming_uniform_(base.weight, a=math.sqrt(5), generator=generator)
            else:
                base.weight.zero_()
            if base.bias is not None:
                base.bias.zero_()
        self.num_experts = num_experts
        self.experts = nn.ModuleList(copy.deepcopy(base) for _ in range(num_experts))
        self.merged = torch.nn.utils.skip_init(
            nn.Linear, in_features, out_features, bias=bias is not None
        ).requires_grad_(False)
        self.shared_bias = nn.Parameter(torch.zeros(out_features)) if bias == "shared" else None
        # one float mask per expert, resident but (like the reference's ``weight.mask``
        # attributes) not part of the checkpoint
        masks = torch.stack([(owner == i).to(base.weight.dtype) for i in range(num_experts)])
        self.register_buffer("masks", masks, persistent=False)
        for i, expert in enumerate(self.experts):
            expert.weight.register_post_accumulate_grad_hook(self._masker(i))
        self._gen = torch.Generator().manual_seed(int(seed))
        self.last_expert: int | None = None
        self.merge()

    @classmethod
    @torch.no_grad()
    def from_mosa(cls, m: MoSALinear) -> ReferenceSplitLinear:
        """The N-copy twin of ``m``: copy k holds expert k's weight and bias, and the routing
        generator continues from ``m``'s state."""
        if m.merge_rule != "mean" or m.routing != "batch":
            raise ValueError("the reference code merges by the mean and routes per batch")
        bias = None if m.bias is None else ("expert" if m.expert_bias else "shared")
        ref = cls(
            m.in_features,
            m.out_features,
            num_experts=m.num_experts,
            init="zero",
            owner=m.owner,
            seed=0,
            bias=bias,
        ).to(device=m.weight.device, dtype=m.weight.dtype)
        for k, expert in enumerate(ref.experts):
            expert.weight.copy_(m.expert_weight(k))
            if m.expert_bias:
                expert.bias.copy_(m.bias[k])
        if ref.shared_bias is not None:
            ref.shared_bias.copy_(m.bias)
        ref.set_rng_state(m.get_rng_state())
        ref.train(m.training)
        ref.merge()
        return ref

    def set_rng_state(self, state: torch.Tensor) -> None:
        """Continue routing from ``state`` (e.g. a :class:`MoSALinear`'s, to pick alike)."""
        self._gen.set_state(state)

    def _masker(self, i: int) -> Any:
        def hook(param: torch.Tensor) -> None:
            # runs once the gradient is fully accumulated: the "mask after backward" step
            if param.grad is not None:
                param.grad.mul_(self.masks[i].to(param.grad.dtype))

        return hook

    def forward_expert(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The output of expert ``k`` alone (training path, without a random pick)."""
        out = self.experts[k](x)
        return out if self.shared_bias is None else out + self.shared_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.merged(x)
        k = int(torch.randint(self.num_experts, (1,), generator=self._gen))
        self.last_expert = k
        return self.forward_expert(x, k)

    @torch.no_grad()
    def merge(self) -> None:
        """Merge copy := mean of the experts' weights and biases (or the shared bias)."""
        n = self.num_experts
        self.merged.weight.copy_(sum(e.weight for e in self.experts) / n)
        if self.shared_bias is not None:
            self.merged.bias.copy_(self.shared_bias)
        elif self.merged.bias is not None:
            self.merged.bias.copy_(sum(e.bias for e in self.experts) / n)


def to_reference(model: nn.Module) -> nn.Module:
    """Replace every :class:`MoSALinear` in ``model`` by its N-copy twin, in place (the
    surrounding adapter or LoRA modules stay), and return the model."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MoSALinear):
                setattr(parent, name, ReferenceSplitLinear.from_mosa(child))
    return model


class ReferenceMoSAAdapter(nn.Module):
    """``scale * Up(Dropout(GELU(Down(LN(x)))))`` with the N-copy split projection(s)."""

    def __init__(
        self,
        dim: int,
        *,
        bottleneck: int,
        num_experts: int,
        share: str = "down",
        scale: float = 0.1,
        dropout: float = 0.1,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if share not in ("down", "up", "none"):
            raise ValueError(f"share must be down, up or none, got {share!r}")
        self.scale = scale
        self.norm = nn.LayerNorm(dim)

        def projection(i: int, o: int, init: str, split: bool, sub_seed: int) -> nn.Module:
            if not split:
                lin = nn.Linear(i, o)
                with torch.no_grad():
                    if init == "kaiming":
                        nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=generator)
                    else:
                        lin.weight.zero_()
                    lin.bias.zero_()
                return lin
            owner = make_partition((o, i), num_experts, "element", generator)
            return ReferenceSplitLinear(
                i,
                o,
                num_experts=num_experts,
                init=init,
                owner=owner,
                seed=sub_seed,
                generator=generator,
            )

        self.down = projection(dim, bottleneck, "kaiming", share in ("up", "none"), seed)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.up = projection(bottleneck, dim, "zero", share in ("down", "none"), seed + 1)
        self._tapped: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.drop(self.act(self.down(self.norm(x))))) * self.scale

    # hooks: the same parallel placement as mosa's AdaptFormer adapter
    def tap_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._tapped = args[0]

    def parallel_tap_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        x, self._tapped = self._tapped, None
        return output + self(x)

    def parallel_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        return output + self(args[0])


def inject_reference(
    model: nn.Module,
    *,
    bottleneck: int = 16,
    num_experts: int = 4,
    share: str = "down",
    scale: float = 0.1,
    dropout: float = 0.1,
    seed: int = 3407,
) -> nn.Module:
    """Freeze ``model``, add a reference-style MoSA adapter to every block, keep the head
    trainable; in place, returns the model."""
    ref = next(model.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    arch = find_architecture(model)
    gen = torch.Generator().manual_seed(seed)
    for index, (_, block) in enumerate(arch.blocks(model)):
        for site in arch.adapter_sites(block, "adaptformer"):
            if site.channels_first or site.mode not in ("parallel", "parallel_tap"):
                raise ValueError(f"reference MoSA supports parallel placements, not {site.mode}")
            ad = ReferenceMoSAAdapter(
                site.dim,
                bottleneck=bottleneck,
                num_experts=num_experts,
                share=share,
                scale=scale,
                dropout=dropout,
                generator=gen,
                seed=seed * 1000 + 2 * index,
            )
            block.add_module(REF_PREFIX + site.name, ad.to(device=ref.device, dtype=ref.dtype))
            if site.mode == "parallel_tap":
                assert site.tap is not None
                site.tap.register_forward_pre_hook(ad.tap_hook)
                site.hooked.register_forward_hook(ad.parallel_tap_hook)
            else:
                site.hooked.register_forward_hook(ad.parallel_hook)
    head = head_module_name(model)
    if head is not None:
        model.get_submodule(head).requires_grad_(True)
    return model


def merge_reference(model: nn.Module) -> nn.Module:
    """Fill every merge copy with the mean of its experts (the reference's ``model.merge()``)."""
    for m in model.modules():
        if isinstance(m, ReferenceSplitLinear):
            m.merge()
    return model


def reference_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a reference checkpoint holds: every adapter tensor in the state dict (experts,
    merge copies, dense projections, LayerNorms) plus the classifier head."""
    out = {
        f"{name}.{k}": t
        for name, m in model.named_modules()
        if isinstance(m, ReferenceMoSAAdapter)
        for k, t in m.state_dict().items()
    }
    head = head_module_name(model)
    if head is not None:
        out.update({f"{head}.{k}": t for k, t in model.get_submodule(head).state_dict().items()})
    return out


__all__ = [
    "ReferenceMoSAAdapter",
    "ReferenceSplitLinear",
    "inject_reference",
    "merge_reference",
    "reference_state_dict",
    "to_reference",
]

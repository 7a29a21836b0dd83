"""Bottleneck adapters (AdaptFormer, Pfeiffer, Houlsby) whose projections may be MoSA-split."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from mosa.adapters.sparse import ExpertOptions, MoSALinear
from mosa.config import MethodConfig

_ACTIVATIONS = {"adaptformer": nn.GELU, "pfeiffer": nn.ReLU, "houlsby": nn.SiLU}


def dense_linear(
    in_features: int, out_features: int, init: str, generator: torch.Generator, bias: bool = True
) -> nn.Linear:
    """A dense projection with adapter-style init: Kaiming-uniform or zero weight, zero bias."""
    # skip_init: initialise from ``generator`` only, leaving the global RNG stream untouched
    lin = torch.nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias)
    with torch.no_grad():
        if init == "kaiming":
            nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=generator)
        else:
            lin.weight.zero_()
        if bias:
            lin.bias.zero_()
    return lin


def make_projection(
    in_features: int,
    out_features: int,
    *,
    experts: ExpertOptions | None,
    init: str,
    generator: torch.Generator,
    route_seed: int,
    bias: bool = True,
) -> nn.Module:
    """A dense ``nn.Linear``, or with ``experts`` a :class:`MoSALinear` split that way."""
    if experts is None:
        return dense_linear(in_features, out_features, init, generator, bias)
    return MoSALinear(
        in_features,
        out_features,
        num_experts=experts.num_experts,
        bias=bias,
        expert_bias=bias and experts.expert_bias,
        init=init,
        granularity=experts.granularity,
        merge=experts.merge,
        routing=experts.routing,
        generator=generator,
        route_seed=route_seed,
    )


def split_options(config: MethodConfig) -> tuple[ExpertOptions | None, ExpertOptions | None]:
    """The expert options of a method's (down / A, up / B) projections; None: dense."""
    experts = ExpertOptions(
        num_experts=config.num_experts,
        granularity=config.granularity,
        merge=config.merge,
        routing=config.routing,
        expert_bias=config.bias == "expert",
    )
    return (experts if config.split_down else None, experts if config.split_up else None)


class Adapter(nn.Module):
    """``scale * Up(Dropout(Act(Down(LN(x)))))``; LN only for AdaptFormer and Pfeiffer.

    The module also carries the forward hooks that place it inside a backbone block without
    touching the block's class or its parameter names:

    * ``parallel``: added to the output of the hooked module, fed by the module's input or,
      with a tap, by the input of another module (AdaptFormer on ViT reads the residual
      stream before ``norm2`` and adds after ``ls2``);
    * ``sequential``: ``h + adapter(h)`` on the hooked module's output (Pfeiffer, Houlsby
      after the block);
    * ``residual``: the residual stream ``s`` at a tap becomes ``s + adapter(s)`` (Houlsby after
      attention): the tap's input is replaced and ``adapter(s)`` is added to the output of the
      branch that the block adds back onto ``s``.

    Like a PEFT tuner layer it merges itself: :meth:`merge` turns its split projections into
    dense ones and keeps the splits, so :meth:`unmerge` puts them back unchanged.
    """

    def __init__(
        self,
        dim: int,
        *,
        bottleneck: int,
        style: str = "adaptformer",
        scale: float = 0.1,
        dropout: float = 0.0,
        down_experts: ExpertOptions | None = None,
        up_experts: ExpertOptions | None = None,
        generator: torch.Generator,
        route_seed: int = 0,
        channels_first: bool = False,
        to_nchw: bool = False,
    ) -> None:
        super().__init__()
        self.style = style
        self.scale = scale
        self.channels_first = channels_first  # input (and output) are NCHW
        self.to_nchw = to_nchw  # channels-last input whose branch is added to an NCHW output
        self.norm = nn.LayerNorm(dim) if style in ("adaptformer", "pfeiffer") else nn.Identity()
        self.down = make_projection(
            dim,
            bottleneck,
            experts=down_experts,
            init="kaiming",
            generator=generator,
            route_seed=route_seed,
        )
        self.act = _ACTIVATIONS[style]()
        self.drop = nn.Dropout(dropout)
        self.up = make_projection(
            bottleneck,
            dim,
            experts=up_experts,
            init="zero",
            generator=generator,
            route_seed=route_seed + 1,
        )
        self._tapped: torch.Tensor | None = None
        self.hooks: list[RemovableHandle] = []
        self.folds = False  # merging keeps the adapter (its own projections become dense)
        # projection name -> the split a merge replaced (None: forgotten, cannot come back)
        self.unmerged: dict[str, MoSALinear | None] = {}

    @classmethod
    def from_config(
        cls,
        dim: int,
        config: MethodConfig,
        generator: torch.Generator,
        route_seed: int,
        **site: Any,
    ) -> Adapter:
        """The adapter a :class:`MethodConfig` describes (``site``: channels_first, to_nchw)."""
        down, up = split_options(config)
        return cls(
            dim,
            bottleneck=config.bottleneck,
            style=config.style,
            scale=config.adapter_scale,
            dropout=config.adapter_dropout,
            down_experts=down,
            up_experts=up,
            generator=generator,
            route_seed=route_seed,
            **site,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:  # ConvNeXt with conv_mlp keeps NCHW
            return self._branch(x.movedim(1, -1)).movedim(-1, 1)
        return self._branch(x)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(self.drop(self.act(self.down(self.norm(x)))))
        return h * self.scale if self.scale != 1.0 else h

    # ------------------------------------------------------------------ hooks
    def attach(self, mode: str, hooked: nn.Module, tap: nn.Module | None = None) -> None:
        """Hook this adapter into a block (``mode``: see the class docstring; ``parallel_tap``
        is ``parallel`` fed by ``tap``'s input)."""
        if mode == "parallel_tap":
            self._hook(tap, self.tap_hook, pre=True)
            self._hook(hooked, self.parallel_tap_hook)
        elif mode == "residual":
            self._hook(tap, self.residual_tap_hook, pre=True)
            self._hook(hooked, self.residual_add_hook)
        elif mode == "parallel":
            self._hook(hooked, self.parallel_hook)
        else:
            self._hook(hooked, self.sequential_hook)

    def _hook(self, site: nn.Module | None, hook: Any, pre: bool = False) -> None:
        if site is None:
            raise ValueError("this adapter site needs a tap module")
        handle = site.register_forward_pre_hook(hook) if pre else site.register_forward_hook(hook)
        self.hooks.append(handle)

    def detach(self) -> None:
        """Remove this adapter's hooks."""
        for handle in self.hooks:
            handle.remove()
        self.hooks.clear()

    def tap_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._tapped = args[0]

    def parallel_tap_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        x, self._tapped = self._tapped, None
        if x is None:
            raise RuntimeError("adapter tap was not filled: the block's forward order changed")
        h = self(x)
        return output + (h.movedim(-1, 1) if self.to_nchw else h)

    def residual_tap_hook(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        self._tapped = self(args[0])
        return (args[0] + self._tapped, *args[1:])

    def residual_add_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        h, self._tapped = self._tapped, None
        if h is None:
            raise RuntimeError("adapter tap was not filled: the block's forward order changed")
        return output + h

    def parallel_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        return output + self(args[0])

    def sequential_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        return output + self(output)

    # ------------------------------------------------------------------ merge
    def _splits(self) -> list[tuple[str, MoSALinear]]:
        return [(n, p) for n in ("down", "up") if isinstance(p := getattr(self, n), MoSALinear)]

    def check_mergeable(self) -> None:
        """``ValueError`` when a split projection's merged weight or bias holds NaN or inf."""
        for name, split in self._splits():
            try:
                split.check_mergeable()
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None

    def merge(self, parent: nn.Module | None = None) -> None:
        """Replace every split projection by its merged ``nn.Linear`` (the block ``parent`` is
        not needed: the adapter is its own base)."""
        for name, split in self._splits():
            self.unmerged[name] = split
            setattr(self, name, split.merge())

    def unmerge(self, parent: nn.Module | None = None) -> None:
        """Put the split projections back; they follow the dtype, device and mode the merged
        ones were given since (``.to()`` and ``.train()`` did not reach them)."""
        if not self.restorable:
            raise ValueError("this adapter's experts were forgotten: it cannot be unmerged")
        for name, split in self.unmerged.items():
            like = getattr(self, name).weight
            setattr(self, name, split.to(device=like.device, dtype=like.dtype))
            split.train(self.training)
        self.unmerged.clear()

    def forget_merge(self) -> None:
        """Drop the kept splits (after loading merged weights they would be untrained)."""
        self.unmerged = dict.fromkeys(self.unmerged)

    @property
    def restorable(self) -> bool:
        """Whether :meth:`unmerge` can restore every projection a merge replaced."""
        return all(split is not None for split in self.unmerged.values())

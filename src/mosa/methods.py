"""The built-in methods: how each part enters a block, and one registration per method.

A new method is one :func:`mosa.config.register_method` call with a
:class:`~mosa.config.MethodSpec` naming its parts (:data:`ADAPTER`, :data:`LORA` or a
:class:`~mosa.config.Part` of its own, whose injector adds modules to a block through an
:class:`Injection`) and the config fields it reads.
"""

from __future__ import annotations

import torch
from torch import nn

from mosa.adapters.adapter import Adapter
from mosa.adapters.lora import ATTACH_NAME, LoRA
from mosa.backbones.arch import Architecture
from mosa.config import (
    ADAPTER_FIELDS,
    EXPERT_FIELDS,
    LORA_FIELDS,
    MethodConfig,
    MethodSpec,
    Part,
    register_method,
)
from mosa.state import Layer


def route_seed(seed: int, index: int) -> int:
    """The routing seed of the ``index``-th new module: a distinct, reproducible stream per
    split projection (each module uses a few consecutive seeds)."""
    return (seed * 1_000_003 + 64 * index) % (2**63 - 1)


class Injection:
    """What a part's injector needs: the method config, the seeded generator shared by every
    new module, the running index that gives each one its own routing seed, and the layers
    added so far (dotted name in the model -> layer)."""

    def __init__(self, model: nn.Module, config: MethodConfig) -> None:
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.index = 0
        self.training = model.training
        self.ref = next(model.parameters())
        self.block = ""  # dotted name of the block being injected
        self.layers: dict[str, Layer] = {}

    def route_seed(self) -> int:
        seed = route_seed(self.config.seed, self.index)
        self.index += 1
        return seed

    def place(self, module: nn.Module) -> nn.Module:
        """``module`` in the model's mode, on its device and in its dtype."""
        module.train(self.training)
        return module.to(device=self.ref.device, dtype=self.ref.dtype)

    def add(self, path: str, layer: Layer) -> None:
        """Record ``layer``, attached at ``path`` in the current block, as one of the model's
        layers (:class:`mosa.state.MethodState`)."""
        self.layers[f"{self.block}.{path}" if self.block else path] = layer


def inject_adapters(block: nn.Module, arch: Architecture, ctx: Injection) -> None:
    """Add an adapter at every site ``arch`` names in ``block`` for the config's style."""
    for site in arch.adapter_sites(block, ctx.config.style):
        ad = Adapter.from_config(
            site.dim,
            ctx.config,
            ctx.generator,
            ctx.route_seed(),
            channels_first=site.channels_first,
            to_nchw=site.to_nchw,
        )
        block.add_module(site.name, ctx.place(ad))
        ad.attach(site.mode, site.hooked, site.tap)
        ctx.add(site.name, ad)


def inject_lora(block: nn.Module, arch: Architecture, ctx: Injection) -> None:
    """Add LoRA to the Linear layers of ``block`` that the config's targets name."""
    available = arch.lora_targets(block)
    by_path: dict[str, dict[str, slice]] = {}
    for t in ctx.config.targets:
        for target in available[t]:
            by_path.setdefault(target.path, {}).update(target.parts)
    for path, parts in by_path.items():
        layer = block.get_submodule(path)
        lora = LoRA.from_config(layer, parts, ctx.config, ctx.generator, ctx.route_seed())
        ctx.place(lora).attach(layer)
        ctx.add(f"{path}.{ATTACH_NAME}", lora)


ADAPTER = Part("adapter", inject_adapters)
LORA = Part("lora", inject_lora)

for _spec in (
    MethodSpec("linear"),
    MethodSpec("full", trains_backbone=True),
    MethodSpec("adapter", (ADAPTER,), ADAPTER_FIELDS),
    MethodSpec("lora", (LORA,), LORA_FIELDS),
    MethodSpec("mosa", (ADAPTER,), ADAPTER_FIELDS + EXPERT_FIELDS, sparse=True),
    MethodSpec("mosa_lora", (LORA,), LORA_FIELDS + EXPERT_FIELDS, sparse=True),
):
    register_method(_spec)

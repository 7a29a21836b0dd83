"""Model-level API: inject a method into a timm backbone, merge it, count its parameters."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from mosa.adapters.sparse import MoSALinear
from mosa.backbones.arch import Architecture, find_architecture
from mosa.config import MethodConfig
from mosa.methods import Injection
from mosa.state import MethodState, clear_state, find_state, set_state, state_of

PREFIX = "mosa_"  # every submodule mosa adds is registered under a name starting with this


def head_module_name(model: nn.Module) -> str | None:
    """Dotted name of the classifier (``model.get_classifier()``), or None if it has none."""
    get = getattr(model, "get_classifier", None)
    if get is None:
        return None
    head = get()
    for name, mod in model.named_modules():
        if mod is head:
            return name
    return None


def inject(model: nn.Module, config: MethodConfig) -> nn.Module:
    """Add ``config``'s method to every block of a timm model, in place.

    The backbone is frozen (except for methods that train it, ``full``), the classifier head
    stays trainable, and new modules are registered under ``mosa_*`` names and attached with
    forward hooks, so the backbone's own parameter names and classes are untouched. The
    model's :class:`~mosa.state.MethodState` records the config and the new layers.

    Args:
        model: a timm ViT/DeiT-style, Swin or ConvNeXt model.
        config: the method and its options.

    Returns:
        The same ``model``, injected.

    Raises:
        TypeError: ``config`` is not a :class:`MethodConfig`.
        ValueError: the model already has a method, or a LoRA target does not exist in it.

    Examples:
        >>> import timm, mosa
        >>> model = timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=10)
        >>> model = mosa.inject(model, mosa.MethodConfig(method="mosa", bottleneck=8))
        >>> mosa.summary(model)["trainable"]  # adapters, per-expert biases and the head
        13690
    """
    if not isinstance(config, MethodConfig):
        raise TypeError(f"config must be a mosa.MethodConfig, got {type(config).__name__}")
    if find_state(model) is not None:
        raise ValueError("this model already has a mosa method injected; create a fresh model")
    spec = config.spec
    arch = find_architecture(model) if spec.parts else None
    if arch is not None and config.uses_lora:
        _check_lora_targets(model, arch, config)
    for p in model.parameters():
        p.requires_grad_(spec.trains_backbone)
    ctx = Injection(model, config)
    state = MethodState(config)
    if arch is not None:
        for block_name, block in arch.blocks(model):
            ctx.block = block_name
            for part in spec.parts:  # in the order the spec lists them
                part.inject(block, arch, ctx)
        if spec.sparse and config.routing == "sample":
            state.hooks.append(model.register_forward_pre_hook(_record_batch_size))
    head = head_module_name(model)
    if head is not None:
        for p in model.get_submodule(head).parameters():
            p.requires_grad_(True)
    state.layers = ctx.layers
    set_state(model, state)
    return model


def _check_lora_targets(model: nn.Module, arch: Architecture, config: MethodConfig) -> None:
    for block_name, block in arch.blocks(model):
        available = arch.lora_targets(block)
        missing = [t for t in config.targets if t not in available]
        if missing:
            raise ValueError(
                f"LoRA targets {missing} do not exist in {block_name} "
                f"({type(block).__name__}); available: {sorted(available) or 'none'}"
            )


def _record_batch_size(model: nn.Module, args: tuple[object, ...]) -> None:
    # module-level (not a closure) so deepcopy'd models hook their own modules
    x = args[0] if args else None
    if isinstance(x, torch.Tensor):
        for m in mosa_modules(model):
            m.batch_hint = x.shape[0]


def eject(model: nn.Module, requires_grad: dict[str, bool] | None = None) -> nn.Module:
    """Undo :func:`inject` on an unmerged model: remove mosa's modules and hooks, and restore
    ``requires_grad`` flags from ``requires_grad`` (name -> flag) when given."""
    state = find_state(model)
    if state is not None:
        for layer in state.layers.values():
            layer.detach()
        for handle in state.hooks:
            handle.remove()
    for parent in list(model.modules()):
        for name, _ in list(parent.named_children()):
            if name.startswith(PREFIX):
                delattr(parent, name)
    if requires_grad is not None:
        for n, p in model.named_parameters():
            if n in requires_grad:
                p.requires_grad_(requires_grad[n])
    clear_state(model)  # with it, whatever unmerge would have restored
    return model


def _parent(model: nn.Module, name: str) -> nn.Module:
    """The module a layer named ``name`` is (or was, before a merge) attached to."""
    return model.get_submodule(name.rpartition(".")[0])


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Turn a trained model into its deployable form, in place.

    MoSA experts become one dense projection (mean or sum rule); LoRA and MoSA-LoRA updates
    are folded into the backbone's own Linear weights and their modules removed, so such a
    model's ``state_dict()`` loads into an unmodified ``timm.create_model`` of the same name.
    Every layer merges itself. Merging a merged model does nothing.

    Args:
        model: an injected model.

    Returns:
        The same ``model``, merged.

    Raises:
        ValueError: a merged value would be NaN or inf (no layer is changed), or the model has
            no mosa method.

    Examples:
        >>> import timm, torch, mosa
        >>> model = timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=10)
        >>> model = mosa.inject(model, mosa.MethodConfig(method="mosa", bottleneck=8)).eval()
        >>> x = torch.randn(2, 3, 32, 32)
        >>> before = model(x)  # eval mode already uses the merged weights
        >>> torch.allclose(mosa.merge(model)(x), before, atol=1e-6)
        True
    """
    state = state_of(model)
    if state.merged:
        return model
    for name, layer in state.layers.items():
        try:
            layer.check_mergeable()
        except ValueError as e:  # a merge is all or nothing
            raise ValueError(f"{name}: {e} (the model is unchanged)") from None
    for name, layer in state.layers.items():
        layer.merge(_parent(model, name))
    bases = {name.rpartition(".")[0] for name, layer in state.layers.items() if layer.folds}
    state.folded = [name for name, _ in model.named_modules() if name in bases]
    state.merged = True
    return model


def forget_unmerge(model: nn.Module) -> None:
    """Drop what :func:`unmerge` would restore (after loading merged weights into a model that
    was merged only to take their shape, the kept experts would be untrained ones)."""
    for layer in state_of(model).layers.values():
        layer.forget_merge()


@torch.no_grad()
def unmerge(model: nn.Module) -> nn.Module:
    """Undo :func:`merge` on a model merged in this process, in place.

    Split projections come back with their experts, routing state and partitions; folded LoRA
    weights are restored exactly and their branches re-attached, so training goes on exactly
    as if the model had never been merged. Until then a merged model keeps its experts and a
    copy of every LoRA-updated weight. Unmerging an unmerged model does nothing.

    Args:
        model: a model merged by :func:`merge` in this process.

    Returns:
        The same ``model``, unmerged.

    Raises:
        ValueError: the model was loaded from a merged checkpoint (its experts are gone).

    Examples:
        >>> import timm, mosa
        >>> model = timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=10)
        >>> model = mosa.merge(mosa.inject(model, mosa.MethodConfig(method="mosa_lora", rank=4)))
        >>> mosa.summary(mosa.unmerge(model))["merged"]
        False
    """
    state = state_of(model)
    if not state.merged:
        return model
    if not all(layer.restorable for layer in state.layers.values()):
        raise ValueError(
            "this model was not merged in this process (e.g. loaded from a merged checkpoint): "
            "its experts or LoRA branches are gone, so it cannot be unmerged"
        )
    for name, layer in state.layers.items():
        layer.unmerge(_parent(model, name))
    state.merged = False
    state.folded = []
    return model


def mosa_modules(model: nn.Module) -> Iterator[MoSALinear]:
    for m in model.modules():
        if isinstance(m, MoSALinear):
            yield m


@contextmanager
def routing_groups(model: nn.Module, groups: int) -> Iterator[nn.Module]:
    """Route stacked copies of a batch independently, within the ``with`` block.

    Every split projection treats its input's leading dimension as ``groups`` stacked copies of
    a batch and draws one pick per copy (per image and copy with sample routing): how
    :func:`forward_twice` runs two stochastic passes as one forward.

    Args:
        model: an injected model.
        groups: how many copies the leading dimension holds (>= 1).

    Yields:
        ``model``; the previous grouping is restored on exit.

    Raises:
        ValueError: ``groups`` < 1.

    Examples:
        >>> import timm, torch, mosa
        >>> model = timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=10)
        >>> model = mosa.inject(model, mosa.MethodConfig(method="mosa", bottleneck=8)).train()
        >>> x = torch.randn(2, 3, 32, 32)
        >>> with mosa.routing_groups(model, 2):
        ...     two_passes = model(torch.cat([x, x]))
        >>> two_passes.shape
        torch.Size([4, 10])
    """
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    modules = list(mosa_modules(model))
    before = [m.groups for m in modules]
    for m in modules:
        m.groups = groups
    try:
        yield model
    finally:
        for m, g in zip(modules, before, strict=True):
            m.groups = g


def draw_routes(model: nn.Module, batch_size: int) -> None:
    """Draw the expert picks of the next training forward, ahead of it.

    Forwards draw for themselves when nobody did; drawing ahead, outside ``torch.compile``'s
    region, keeps the seeded generators out of the graph (no graph break) with the same picks.

    Args:
        model: an injected model in training mode.
        batch_size: images in the next forward (inside :func:`routing_groups`: the stacked
            batch).

    Examples:
        >>> import timm, torch, mosa
        >>> model = timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=10)
        >>> model = mosa.inject(model, mosa.MethodConfig(method="mosa", bottleneck=8)).train()
        >>> compiled = torch.compile(model, backend="eager")
        >>> x = torch.randn(4, 3, 32, 32)
        >>> mosa.draw_routes(model, x.shape[0])
        >>> compiled(x).shape
        torch.Size([4, 10])
    """
    layers = [m for m in mosa_modules(model) if m.training]
    for m in layers:
        m.batch_hint = batch_size
    devices = {m.owner.device for m in layers}
    if len(devices) != 1 or (device := devices.pop()).type == "cpu":
        for m in layers:
            m.draw_routes(batch_size)
        return
    # one host-to-device copy per step, not one per layer
    picks = [m.draw_picks(batch_size) for m in layers]
    flat = torch.cat(picks).pin_memory().to(device, non_blocking=True)
    for m, p in zip(layers, flat.split([p.numel() for p in picks]), strict=True):
        m.routes = p


def forward_twice(
    model: nn.Module, x: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two stochastic training passes over ``x`` (MoSA's consistency pair), as ONE forward.

    The forward runs on ``cat([x, x])``: each half gets its own expert picks, drawn in the
    order two forwards would draw them, and its own dropout masks; the frozen backbone runs
    once on a doubled batch. Layers that mix samples (BatchNorm in train mode) would see both
    halves together; the supported ViT, Swin and ConvNeXt backbones normalise per sample.

    Args:
        model: an injected model in training mode.
        x: the batch.
        forward: maps a batch to the output that is split in two (default: ``model``).

    Returns:
        The two passes' outputs.

    Examples:
        >>> import timm, torch, mosa
        >>> model = timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=10)
        >>> model = mosa.inject(model, mosa.MethodConfig(method="mosa", bottleneck=8)).train()
        >>> a, b = mosa.forward_twice(model, torch.randn(4, 3, 32, 32))
        >>> a.shape == b.shape == (4, 10)
        True
    """
    with shared_routes(model, x.shape[0], passes=2) as routes:
        first, second = routes.forward(x, forward)
    return first, second


class SharedRoutes:
    """Expert picks drawn once for a batch of ``batch_size`` images (``passes`` stochastic
    passes each, as :func:`forward_twice` draws them) and handed out to micro-batches that
    cover the batch in order: micro-batches of B/k then train exactly as one batch of B would
    (gradient accumulation). Made by :func:`shared_routes`."""

    def __init__(self, model: nn.Module, batch_size: int, passes: int) -> None:
        self.model, self.batch_size, self.passes = model, batch_size, passes
        draw_routes(model, passes * batch_size)
        self.picks = {m: m.routes for m in mosa_modules(model) if m.routes is not None}
        self.start = 0

    def forward(
        self, x: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The ``passes`` outputs of ``forward`` (default: the model) on the next ``len(x)``
        images of the batch, each pass with its picks for exactly those images."""
        start, stop = self.start, self.start + x.shape[0]
        if stop > self.batch_size:
            raise ValueError(f"micro-batches hold more than the {self.batch_size} images drawn for")
        for m, picks in self.picks.items():
            per_image = m.routing == "sample" and picks.numel() == self.passes * self.batch_size
            m.routes = (
                picks.view(self.passes, -1)[:, start:stop].reshape(-1) if per_image else picks
            )
            m.batch_hint = self.passes * x.shape[0]
        self.start = stop
        xs = torch.cat([x] * self.passes) if self.passes > 1 else x
        return (self.model if forward is None else forward)(xs).chunk(self.passes)


@contextmanager
def shared_routes(model: nn.Module, batch_size: int, passes: int = 1) -> Iterator[SharedRoutes]:
    """Draw the picks once for a batch and share them among its micro-batches.

    Gradient accumulation: micro-batches run through the yielded :class:`SharedRoutes` in
    order, each with the picks of its own images, so k micro-batches of B/k give the same
    gradient as one batch of B (the engine's ``optim.accumulate``).

    Args:
        model: an injected model in training mode.
        batch_size: images in the whole batch.
        passes: stochastic passes per image (2: the consistency pair, as
            :func:`forward_twice`).

    Yields:
        A :class:`SharedRoutes`; its ``forward(x_part)`` returns one output per pass.

    Raises:
        ValueError: the micro-batches hold more images than ``batch_size``.

    Examples:
        >>> import timm, torch, mosa
        >>> model = timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=10)
        >>> model = mosa.inject(model, mosa.MethodConfig(method="mosa", bottleneck=8)).train()
        >>> x = torch.randn(8, 3, 32, 32)
        >>> with mosa.shared_routes(model, batch_size=8) as routes:
        ...     for part in x.chunk(4):
        ...         (logits,) = routes.forward(part)
        ...         logits.sum().backward()
    """
    with routing_groups(model, passes):
        routes = SharedRoutes(model, batch_size, passes)
        try:
            yield routes
        finally:
            for m in routes.picks:
                m.routes = None


def get_rng_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The routing generators' states, to resume training exactly.

    Args:
        model: an injected model.

    Returns:
        Each split projection's generator state, by module name.

    Examples:
        >>> import timm, mosa
        >>> model = timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=10)
        >>> model = mosa.inject(model, mosa.MethodConfig(method="mosa", bottleneck=8))
        >>> mosa.set_rng_state(model, mosa.get_rng_state(model))
    """
    return {n: m.get_rng_state() for n, m in model.named_modules() if isinstance(m, MoSALinear)}


def set_rng_state(model: nn.Module, states: dict[str, torch.Tensor]) -> None:
    """Set the routing generators back to states from :func:`get_rng_state`.

    Args:
        model: an injected model with the same split projections.
        states: each split projection's generator state, by module name.

    Raises:
        ValueError: the states name other split projections than the model has.

    Examples:
        >>> import timm, torch, mosa
        >>> model = timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=10)
        >>> model = mosa.inject(model, mosa.MethodConfig(method="mosa", bottleneck=8)).train()
        >>> saved = mosa.get_rng_state(model)
        >>> first = model(torch.ones(1, 3, 32, 32))
        >>> mosa.set_rng_state(model, saved)  # the next forward picks the same experts again
        >>> torch.equal(model(torch.ones(1, 3, 32, 32)), first)
        True
    """
    mods = {n: m for n, m in model.named_modules() if isinstance(m, MoSALinear)}
    if set(mods) != set(states):
        raise ValueError("routing state does not match this model's split projections")
    for n, m in mods.items():
        m.set_rng_state(states[n])


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What an adapter-only checkpoint holds: every tensor of mosa's modules (partitions and
    initial values included), the classifier head, layers that merging folded LoRA into, and
    for ``full`` fine-tuning the whole model."""
    state = state_of(model)
    sd = model.state_dict()
    if state.config.spec.trains_backbone:
        return dict(sd)
    head = head_module_name(model)
    keep_prefixes = tuple(f"{n}." for n in state.folded)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        parts = k.split(".")
        if (
            is_mosa_name(k)
            or (head is not None and (head == "" or k.startswith(head + ".")))
            or (keep_prefixes and k.startswith(keep_prefixes) and parts[-1] in ("weight",))
        ):
            out[k] = v
    return out


def is_mosa_name(name: str) -> bool:
    """Whether a parameter, buffer or module name lies inside a module mosa added."""
    return any(part.startswith(PREFIX) for part in name.split("."))


def summary(model: nn.Module) -> dict[str, object]:
    """Parameter counts of an injected model.

    Args:
        model: an injected model.

    Returns:
        ``method``; ``trainable`` and ``total`` parameters; ``adapter`` (in mosa's modules)
        and ``head``; ``stored`` (elements an adapter checkpoint holds); ``expert_bias_extra``
        (what per-expert biases, ``bias="expert"``, add over the dense adapter; merging removes
        them); ``trainable_pct``; ``merged``.

    Examples:
        >>> import timm, mosa
        >>> model = timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=10)
        >>> s = mosa.summary(mosa.inject(model, mosa.MethodConfig(method="adapter", bottleneck=8)))
        >>> s["method"], s["trainable"]
        ('adapter', 11962)
    """
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapter = sum(p.numel() for n, p in model.named_parameters() if is_mosa_name(n))
    head = head_module_name(model)
    head_n = sum(p.numel() for p in model.get_submodule(head).parameters()) if head else 0
    state = find_state(model)
    cfg = state.config if state is not None else None
    stored = sum(v.numel() for v in adapter_state_dict(model).values()) if cfg else None
    extra = sum(
        m.bias.numel() - m.bias.shape[-1]
        for m in mosa_modules(model)
        if m.expert_bias and m.bias is not None and m.bias.requires_grad
    )
    return {
        "method": cfg.method if cfg else None,
        "trainable": trainable,
        "total": total,
        "adapter": adapter,
        "head": head_n,
        "stored": stored,
        "expert_bias_extra": extra,
        "trainable_pct": 100.0 * trainable / max(total, 1),
        "merged": state is not None and state.merged,
    }

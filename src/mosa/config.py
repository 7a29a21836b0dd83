"""Typed, validated configuration of a fine-tuning method (PEFT-style dataclass with JSON round
trip) and the registry of methods (timm-style: a method is one :func:`register_method` call)."""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

STYLES = ("adaptformer", "pfeiffer", "houlsby")
SHARES = ("down", "up", "none")
GRANULARITIES = ("element", "row", "column")
MERGES = ("mean", "sum")
ROUTINGS = ("batch", "sample")
BIASES = ("shared", "expert")
LORA_TARGETS = ("q", "k", "v", "o", "mlp")

# AdaptFormer scales its parallel branch; the sequential styles add it unscaled.
DEFAULT_SCALE = {"adaptformer": 0.1, "pfeiffer": 1.0, "houlsby": 1.0}
# The reference code's Pfeiffer and Houlsby adapters have no dropout.
DEFAULT_DROPOUT = {"adaptformer": 0.1, "pfeiffer": 0.0, "houlsby": 0.0}

# the MethodConfig fields each kind of part reads
ADAPTER_FIELDS = ("style", "bottleneck", "scale", "dropout", "seed")
LORA_FIELDS = ("rank", "alpha", "targets", "seed")
EXPERT_FIELDS = ("num_experts", "share", "granularity", "merge", "routing", "bias")


class ConfigError(ValueError, TypeError):
    """A configuration key or value is unknown or impossible.

    The message names the field (with a "did you mean" for a typo) and the allowed values.

    Examples:
        >>> import mosa
        >>> try:
        ...     mosa.MethodConfig(method="mosa", num_expert=2)
        ... except mosa.ConfigError as e:
        ...     print("num_experts" in str(e))
        True
    """


class KeyChecked:
    """Base of every config dataclass: an unknown keyword, given to the constructor or to
    ``from_dict``, is a :class:`ConfigError` naming it and the closest known field (the
    generated ``__init__`` would raise a bare ``TypeError``)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # checked before the generated __init__ runs
        cls.check_keys(kwargs)
        return super().__new__(cls)

    @classmethod
    def check_keys(cls, keys: Iterable[str]) -> None:
        """``ConfigError`` for the first of ``keys`` that is not a field of ``cls``."""
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        for k in keys:
            if k not in names:
                hint = difflib.get_close_matches(k, names, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(
                    f"unknown {cls.__name__} option {k!r}{extra}; known: {', '.join(names)}"
                )


def _choice(name: str, value: Any, allowed: Iterable[str]) -> None:
    """``ConfigError`` naming field ``name`` (and the closest allowed value) when ``value`` is
    not one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}{extra}")


# (block, architecture, injection) -> None: adds one part to a block (see mosa.methods)
Injector = Callable[..., None]


@dataclass(frozen=True)
class Part:
    """A kind of module a method adds to every block: its name (``"adapter"``, ``"lora"``)
    and the injector that adds it."""

    name: str
    inject: Injector


@dataclass(frozen=True)
class MethodSpec:
    """What a method name means: the parts it adds to every block, in order; the
    :class:`MethodConfig` fields it reads; whether its projections are split into sparse
    experts; and whether the backbone trains (and is saved) too."""

    name: str
    parts: tuple[Part, ...] = ()
    fields: tuple[str, ...] = ()
    sparse: bool = False
    trains_backbone: bool = False

    @property
    def part_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parts)


_METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Make ``spec.name`` a valid ``MethodConfig.method``: the one registration of a method.
    ``spec.fields`` must name :class:`MethodConfig` fields (``ConfigError`` otherwise)."""
    MethodConfig.check_keys(spec.fields)
    _METHODS[spec.name] = spec
    return spec


def method_spec(name: str) -> MethodSpec:
    """The registered :class:`MethodSpec` of a method name."""
    _choice("method", name, _METHODS)
    return _METHODS[name]


def method_names() -> tuple[str, ...]:
    """Every registered method name, in registration order (the built-in ones first)."""
    return tuple(_METHODS)


@dataclass
class MethodConfig(KeyChecked):
    """How a backbone is adapted: the method and every option it takes.

    Options that a method does not use (see ``MethodSpec.fields``) are kept, so one config can
    be swept over methods, but still validated. The MoSA defaults are the paper's
    (docs/method-notes.md says why they stay).

    Args:
        method: ``linear`` (head only), ``full``, ``adapter``, ``lora``, ``mosa`` (MoSA on the
            adapter), ``mosa_lora`` (MoSA on LoRA), or a name given to ``register_method``.
        style: adapter style, ``adaptformer`` (parallel to the MLP), ``pfeiffer`` or ``houlsby``.
        bottleneck: the adapter's hidden width.
        scale: the adapter branch's factor (None: 0.1 for AdaptFormer, 1 otherwise).
        dropout: inside the adapter (None: 0.1 for AdaptFormer, 0 otherwise).
        rank: LoRA's rank.
        alpha: LoRA's scaling numerator (None: the rank, a factor of 1).
        targets: LoRA's projections: ``q``, ``k``, ``v``, ``o``, ``mlp``.
        num_experts: N, the sparse experts per split projection.
        share: which projection stays dense and shared: ``down`` (split Up), ``up`` (split
            Down) or ``none`` (split both).
        granularity: the partition over all entries (``element``) or inside each ``row`` or
            ``column``.
        merge: ``mean`` (the paper's) or ``sum`` of the experts.
        routing: one pick per batch (``batch``, the paper's) or per image (``sample``).
        bias: a split projection's bias: one per expert (``expert``, the reference's layout,
            (N-1)·out more trainable parameters) or one dense bias trained every step
            (``shared``: exactly the plain adapter's parameters).
        seed: seeds the partitions and the routing generators.

    Raises:
        ConfigError: an unknown option or an impossible value (the message names it).

    Examples:
        >>> import mosa
        >>> cfg = mosa.MethodConfig(method="mosa", num_experts=2, routing="sample")
        >>> cfg.share, cfg.num_experts
        ('down', 2)
    """

    method: str = "mosa"
    # adapter
    style: str = "adaptformer"
    bottleneck: int = 16
    scale: float | None = None
    dropout: float | None = None
    # lora
    rank: int = 16
    alpha: float | None = None
    targets: tuple[str, ...] = field(default=("q", "v"))
    # mosa
    num_experts: int = 4
    share: str = "down"
    granularity: str = "element"
    merge: str = "mean"
    routing: str = "batch"
    bias: str = "expert"
    seed: int = 3407

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = tuple(t.strip() for t in self.targets.split(",") if t.strip())
        self.targets = tuple(self.targets)
        method_spec(self.method)
        _choice("style", self.style, STYLES)
        _choice("share", self.share, SHARES)
        _choice("granularity", self.granularity, GRANULARITIES)
        _choice("merge", self.merge, MERGES)
        _choice("routing", self.routing, ROUTINGS)
        _choice("bias", self.bias, BIASES)
        for t in self.targets:
            _choice("targets", t, LORA_TARGETS)
        if not self.targets:
            raise ConfigError("targets must name at least one of " + ", ".join(LORA_TARGETS))
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"targets={list(self.targets)} names a projection twice")
        for name in ("bottleneck", "rank", "num_experts", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{name} must be an integer, got {v!r}")
        if self.bottleneck < 1:
            raise ConfigError(f"bottleneck must be >= 1, got {self.bottleneck}")
        if self.rank < 1:
            raise ConfigError(f"rank must be >= 1, got {self.rank}")
        if not 2 <= self.num_experts <= 255:
            raise ConfigError(
                f"num_experts must be between 2 and 255, got {self.num_experts} "
                "(one expert is a plain adapter: use method='adapter' or 'lora')"
            )
        if self.dropout is not None and not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.scale is not None and not float(self.scale) > 0:
            raise ConfigError(f"scale must be > 0, got {self.scale}")
        if self.alpha is not None and not float(self.alpha) > 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")

    # ----------------------------------------------------------------- derived values
    @property
    def spec(self) -> MethodSpec:
        return method_spec(self.method)

    @property
    def is_mosa(self) -> bool:
        """True for the methods that split projections into sparse experts."""
        return self.spec.sparse

    @property
    def uses_adapter(self) -> bool:
        return "adapter" in self.spec.part_names

    @property
    def uses_lora(self) -> bool:
        return "lora" in self.spec.part_names

    @property
    def adapter_scale(self) -> float:
        return float(self.scale) if self.scale is not None else DEFAULT_SCALE[self.style]

    @property
    def adapter_dropout(self) -> float:
        return float(self.dropout) if self.dropout is not None else DEFAULT_DROPOUT[self.style]

    @property
    def lora_scaling(self) -> float:
        alpha = float(self.alpha) if self.alpha is not None else float(self.rank)
        return alpha / self.rank

    @property
    def split_down(self) -> bool:
        """Whether the down (adapter) / A (LoRA) projection is split into experts."""
        return self.is_mosa and self.share in ("up", "none")

    @property
    def split_up(self) -> bool:
        """Whether the up (adapter) / B (LoRA) projection is split into experts."""
        return self.is_mosa and self.share in ("down", "none")

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodConfig:
        """Build from a mapping, with a clear error for a misspelt key."""
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MethodConfig:
        return cls.from_dict(json.loads(text))

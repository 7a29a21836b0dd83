"""Run configuration: backbone, method, data, optimisation — typed, validated, YAML/JSON friendly."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from mosa.config import ConfigError, KeyChecked, MethodConfig

DATA_KINDS = ("vtab", "fgvc", "folder", "cifar100", "food101", "aircraft")


@dataclass
class DataConfig(KeyChecked):
    """One data set. Model selection uses ``val_split``; the final model is scored on ``test_split``."""

    kind: str = "vtab"
    root: str = "data/vtab"
    task: str = "digits"
    train_split: str = "train800"
    val_split: str | None = "val200"
    test_split: str | None = "test"
    img_size: int | None = None  # None: the backbone's pretrained input size
    mean: tuple[float, float, float] | None = None  # None: the backbone's pretrained_cfg
    std: tuple[float, float, float] | None = None
    shots: int | None = None  # k labelled images per class drawn from the train split
    # few-shot validation per class, drawn from the undrawn train images when val_split is
    # None (None: as many as ``shots``, fewer if a class has fewer images left)
    val_shots: int | None = None
    cache: bool = True
    name: str | None = None  # task name in multi-task runs (default: task)

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ConfigError(f"data.kind={self.kind!r} is not one of {', '.join(DATA_KINDS)}")
        for key in ("shots", "val_shots"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"data.{key} must be an integer >= 1, got {v!r}")
        if self.img_size is not None and self.img_size < 8:
            raise ConfigError(f"data.img_size must be >= 8, got {self.img_size}")
        for k in ("mean", "std"):
            v = getattr(self, k)
            if v is not None:
                if len(v) != 3:
                    raise ConfigError(f"data.{k} must have 3 values, got {v}")
                setattr(self, k, tuple(float(x) for x in v))

    @property
    def label(self) -> str:
        """The task's name: ``name`` if set, else ``task``."""
        return self.name or self.task


@dataclass
class OptimConfig(KeyChecked):
    """AdamW with linear warm-up then cosine decay, stepped per iteration."""

    lr: float = 5e-3
    weight_decay: float = 0.01
    epochs: int = 100
    warmup_epochs: int = 10
    batch_size: int = 128
    # gradient accumulation: each optimizer step's batch of batch_size runs as this many
    # micro-batches (forward + backward each), with MoSA's expert picks drawn once per step
    # and shared by them, so the update is one batch's; only activation memory shrinks
    accumulate: int = 1
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    # MoSA consistency regularisation (R-Drop form, see losses.symmetric_kl):
    # None = 1.0 for mosa/mosa_lora, 0 for the rest
    consistency: float | None = None
    # deep consistency: consistency * deep_consistency * mean over the first
    # deep_consistency_blocks blocks of MSE(h_a, h_b); the reference (Stanford Cars) uses
    # 0.01 over 6 blocks; 0 = off
    deep_consistency: float = 0.0
    deep_consistency_blocks: int = 6
    amp: str = "auto"  # auto: bf16 autocast on CUDA, off on CPU; "bf16" | "off"
    min_lr: float = 0.0
    eps: float = 1e-8  # AdamW's eps (the reference code uses 1e-6)
    # MoSA split projections: "reference" (default) = the paper's code on torch 1.11: every
    # expert picked at least once keeps getting AdamW updates (momentum, weight decay) every
    # step; "local" = an expert is updated, decayed and step-counted only in steps where it
    # was picked (N copies without gradient when unused)
    expert_updates: str = "reference"
    # lr multiplier for the split projections' tensors (our option, not the paper's): each
    # entry is trained in 1/N of the steps and the merge divides by N, so the merged weight
    # moves more slowly than a dense adapter's at the same lr
    expert_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.epochs < 1:
            raise ConfigError(f"optim.epochs must be >= 1, got {self.epochs}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"optim.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.warmup_epochs > self.epochs:  # a shortened run: warm up over all of it
            logging.getLogger("mosa").warning(
                "optim.warmup_epochs=%d is longer than optim.epochs=%d: warm-up clamped to %d",
                self.warmup_epochs,
                self.epochs,
                self.epochs,
            )
            self.warmup_epochs = self.epochs
        if self.batch_size < 1:
            raise ConfigError(f"optim.batch_size must be >= 1, got {self.batch_size}")
        if not 1 <= self.accumulate <= self.batch_size:
            raise ConfigError(
                f"optim.accumulate must be in [1, batch_size={self.batch_size}], got "
                f"{self.accumulate}"
            )
        if self.expert_updates not in ("local", "reference"):
            raise ConfigError(
                f"optim.expert_updates must be local or reference, got {self.expert_updates!r}"
            )
        if not self.expert_lr_scale > 0:
            raise ConfigError(f"optim.expert_lr_scale must be > 0, got {self.expert_lr_scale}")
        if not self.eps > 0:
            raise ConfigError(f"optim.eps must be > 0, got {self.eps}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ConfigError(f"optim.amp must be auto, bf16 or off, got {self.amp!r}")
        if self.consistency is not None and self.consistency < 0:
            raise ConfigError(f"optim.consistency must be >= 0, got {self.consistency}")
        if self.deep_consistency < 0:
            raise ConfigError(f"optim.deep_consistency must be >= 0, got {self.deep_consistency}")
        if self.deep_consistency_blocks < 1:
            raise ConfigError(
                f"optim.deep_consistency_blocks must be >= 1, got {self.deep_consistency_blocks}"
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"optim.grad_clip must be > 0 (or None), got {self.grad_clip}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"optim.label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        if self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr must be in [0, lr={self.lr}], got {self.min_lr}")


@dataclass
class EvalConfig(KeyChecked):
    """What is measured besides the val split that chooses."""

    # score the test split after every epoch too, into metrics.jsonl and the summary's
    # ``test_by_epoch``: a record for comparison with protocols that select on test; nothing
    # in mosa reads it to choose a checkpoint, a learning rate or a knob
    test_every_epoch: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.test_every_epoch, bool):
            raise ConfigError(
                f"eval.test_every_epoch must be true or false, got {self.test_every_epoch!r}"
            )


@dataclass
class TrainConfig(KeyChecked):
    """Everything one ``mosa train`` run needs. ``data`` is one data set, or several for
    multi-task training (one shared adapter, one head per task)."""

    backbone: str = "mosa_vit_fmnist"
    pretrained: bool = True
    weights: str | None = None  # local .safetensors / .npz / .pth file for the backbone
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: list[DataConfig] = field(default_factory=lambda: [DataConfig()])
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 3407
    out: str = "runs/run"
    device: str = "auto"  # auto: cuda when available
    task_sampling: str = "proportional"  # multi-task: proportional | uniform
    joint_head: bool = False  # multi-task: one head over the union of classes
    num_workers: int = 0
    checkpoint_every: int = 1  # epochs between resumable checkpoints
    compile: bool = False  # train through torch.compile (MoSA's picks stay outside the graph)
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager", "eager": debugging)

    def __post_init__(self) -> None:
        if isinstance(self.method, dict):
            self.method = MethodConfig.from_dict(self.method)
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**_legacy_optim(self.optim))
        if isinstance(self.eval, dict):
            self.eval = EvalConfig(**self.eval)
        if isinstance(self.data, (dict, DataConfig)):
            self.data = [self.data]
        self.data = [DataConfig(**d) if isinstance(d, dict) else d for d in self.data]
        if not self.data:
            raise ConfigError("data must name at least one data set")
        labels = [d.label for d in self.data]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"data sets need distinct names in a multi-task run, got {labels}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.task_sampling not in ("proportional", "uniform"):
            raise ConfigError(
                f"task_sampling must be proportional or uniform, got {self.task_sampling!r}"
            )
        if self.multitask:
            bad = [n for n in labels if not n or "." in n]
            if bad:
                raise ConfigError(
                    f"multi-task heads are named after the tasks, which may not be empty or "
                    f"contain '.': {bad}; set data.<i>.name"
                )
        elif self.joint_head:
            raise ConfigError("joint_head=True needs several data sets (a multi-task run)")

    def backbone_args(self) -> dict[str, Any]:
        """The backbone's plain keyword arguments for :func:`mosa.backbones.zoo.load_backbone`
        (all but ``num_classes``)."""
        return {
            "name_or_path": self.backbone,
            "pretrained": self.pretrained,
            "weights": self.weights,
            **self.backbone_kwargs,
        }

    @property
    def multitask(self) -> bool:
        """Whether this run trains several data sets (one adapter, a head per task)."""
        return len(self.data) > 1

    @property
    def deep_consistency_weight(self) -> float:
        """The hidden-state term's weight: the reference adds it inside the consistency
        weight, so it is off whenever consistency is."""
        return self.consistency_weight * float(self.optim.deep_consistency)

    @property
    def consistency_weight(self) -> float:
        if self.optim.consistency is not None:
            return float(self.optim.consistency)
        return 1.0 if self.method.is_mosa else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["method"] = self.method.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**d)


def _legacy_optim(d: dict[str, Any]) -> dict[str, Any]:
    """Read configs written before ``expert_updates`` replaced ``sparse_updates``."""
    if "sparse_updates" not in d:
        return d
    d = dict(d)
    legacy = d.pop("sparse_updates")
    d.setdefault("expert_updates", "local" if legacy else "reference")  # legacy default: True
    return d


def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}, "data": [{"task": "x"}]}`` -> ``{"optim.lr": 1, "data.0.task": "x"}``:
    a config dict as dotted keys, for comparing two configs field by field."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten_config(v, f"{prefix}{k}."))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {}
        for i, v in enumerate(tree):
            out.update(flatten_config(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    ignore: Collection[str] = (),
    automatic: bool = False,
) -> dict[str, tuple[Any, Any]]:
    """The dotted fields whose values differ between two config dicts, as ``{field: (saved,
    current)}`` in field order.

    Both go through JSON first, so tuples compare equal to the lists a saved config holds.
    ``ignore``: fields, or whole top-level sections, never compared. With ``automatic``, a
    field that ``current`` leaves None (filled in when the run resolves it) or that ``saved``
    lacks (newer than the saved config) is no change.
    """
    a = flatten_config(json.loads(json.dumps(saved)))
    b = flatten_config(json.loads(json.dumps(current)))
    changes: dict[str, tuple[Any, Any]] = {}
    for k in sorted(set(a) | set(b)):
        if k in ignore or k.split(".")[0] in ignore:
            continue
        if automatic and k in b and (b[k] is None or k not in a):
            continue
        if a.get(k) != b.get(k):
            changes[k] = (a.get(k), b.get(k))
    return changes

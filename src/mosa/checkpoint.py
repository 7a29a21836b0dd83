"""Adapter-only checkpoints: ``adapter_config.json`` + ``adapter.safetensors`` (never pickles)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from mosa._version import __version__
from mosa.config import MethodConfig
from mosa.io import atomic_save_safetensors, atomic_write_json
from mosa.model import adapter_state_dict, eject, forget_unmerge, inject, merge
from mosa.state import find_state, state_of

FORMAT = "mosa-adapter"
FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model it is loaded into.

    The message names the file, the mismatched fields, keys or shapes, and what to do.
    """


def backbone_name(model: nn.Module) -> str | None:
    """timm's architecture name of ``model`` (from its pretrained_cfg), if known."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture")


def num_classes_of(model: nn.Module) -> int | None:
    return getattr(model, "num_classes", None)


def save_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write an adapter-only checkpoint: only what was trained.

    The folder gets ``adapter_config.json`` (format version, backbone, class count, the
    method's config, merged or not) and ``adapter.safetensors`` (the trained tensors plus the
    partitions and initial values needed to resume), written atomically.

    Args:
        model: an injected model.
        directory: the checkpoint folder (created if needed).

    Returns:
        The folder.

    Examples:
        >>> import tempfile, timm, mosa
        >>> model = timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=10)
        >>> model = mosa.inject(model, mosa.MethodConfig(method="mosa", bottleneck=8))
        >>> folder = mosa.save_adapter(model, tempfile.mkdtemp() + "/adapter")
        >>> sorted(p.name for p in folder.iterdir())
        ['adapter.safetensors', 'adapter_config.json']
    """
    state = state_of(model)
    directory = Path(directory)
    tensors = adapter_state_dict(model)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": backbone_name(model),
        "num_classes": num_classes_of(model),
        "method": state.config.to_dict(),
        "merged": state.merged,
        "folded": list(state.folded),
        "versions": {"torch": torch.__version__, "mosa": __version__},
    }
    atomic_save_safetensors(tensors, directory / WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write_json(directory / CONFIG_NAME, meta)
    return directory


def read_adapter_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``adapter_config.json`` of a checkpoint folder.

    Args:
        directory: a folder written by :func:`save_adapter` or ``mosa train``.

    Returns:
        The parsed config: ``format_version``, ``backbone``, ``num_classes``, ``method``, ...

    Raises:
        CheckpointError: the file is missing, not JSON, or not a mosa adapter config.

    Examples:
        >>> import tempfile, timm, mosa
        >>> model = timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=10)
        >>> model = mosa.inject(model, mosa.MethodConfig(method="lora", rank=4))
        >>> folder = mosa.save_adapter(model, tempfile.mkdtemp())
        >>> mosa.read_adapter_config(folder)["method"]["method"]
        'lora'
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: point at a folder written by mosa.save_adapter / mosa train"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mosa adapter config (format={meta.get('format')})")
    if not isinstance(meta.get("method"), dict):
        raise CheckpointError(f"{path} has no 'method' entry; the checkpoint is corrupt")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {meta['format_version']}, newer than this mosa "
            f"({FORMAT_VERSION}): upgrade mosa"
        )
    return meta


def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> nn.Module:
    """Restore a checkpoint into ``model``, injecting its method first if needed.

    Args:
        model: a fresh timm model of the checkpoint's backbone and class count (or one already
            injected with the same config).
        directory: a folder written by :func:`save_adapter` or ``mosa train``.

    Returns:
        The same ``model``, holding the checkpoint's tensors.

    Raises:
        CheckpointError: the checkpoint is corrupt, or was saved for another backbone, class
            count or config (the message names the mismatched fields, keys and shapes).

    Examples:
        >>> import tempfile, timm, torch, mosa
        >>> def backbone():
        ...     return timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=10)
        >>> trained = mosa.inject(backbone(), mosa.MethodConfig(method="mosa", bottleneck=8))
        >>> folder = mosa.save_adapter(trained, tempfile.mkdtemp())
        >>> fresh = mosa.load_adapter(backbone(), folder)
        >>> x = torch.randn(1, 3, 32, 32)
        >>> torch.equal(fresh.eval()(x), trained.eval()(x))
        True
    """
    directory = Path(directory)
    meta = read_adapter_config(directory)
    cfg = MethodConfig.from_dict(meta["method"])
    want = meta.get("backbone")
    have = backbone_name(model)
    if want and have and want != have:
        raise CheckpointError(
            f"{directory} was trained on backbone {want!r} but the model is {have!r}: "
            f"create the model with timm.create_model({want!r}, ...)"
        )
    state = find_state(model)
    if state is None:
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        inject(model, cfg)
        try:
            return _load_into(model, directory, meta)
        except BaseException:
            eject(model, flags)  # a refused load leaves the model as it was
            raise
    if state.config != cfg:
        diff = {
            k: (v, cfg.to_dict()[k])
            for k, v in state.config.to_dict().items()
            if cfg.to_dict()[k] != v
        }
        raise CheckpointError(
            f"{directory} was saved with a different method config; differing fields "
            f"(model, checkpoint): {diff}"
        )
    return _load_into(model, directory, meta)


def _load_into(model: nn.Module, directory: Path, meta: dict[str, Any]) -> nn.Module:
    if meta.get("merged") and not state_of(model).merged:
        merge(model)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found: the checkpoint folder is incomplete")
    try:
        loaded = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{weights} could not be read ({e}); the file is corrupt") from e
    expected = adapter_state_dict(model)
    # checkpoints older than ``init_scale`` stored undecayed initial weights: scale 1
    for k in set(expected) - set(loaded):
        if k.endswith(".init_scale"):
            loaded[k] = torch.ones_like(expected[k])
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(loaded[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(loaded))
        if loaded[k].shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        lines = [f"{directory} does not fit this model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_few(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_few(unexpected)}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): {_few(shapes)}")
        if meta.get("num_classes") not in (None, num_classes_of(model)):
            lines.append(
                f"  the checkpoint has {meta['num_classes']} classes, the model "
                f"{num_classes_of(model)}: create it with num_classes={meta['num_classes']}"
            )
        raise CheckpointError("\n".join(lines))
    with torch.no_grad():
        for k, t in expected.items():
            t.copy_(loaded[k].to(dtype=t.dtype))
    if meta.get("merged"):
        forget_unmerge(model)  # the experts behind merged weights are not in the file
    return model


def _few(items: list[str], n: int = 6) -> str:
    more = f", ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more

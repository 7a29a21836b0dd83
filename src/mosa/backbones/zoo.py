"""The project's own small pretrained ViT registered with timm, and a generic backbone loader.

``import mosa.backbones.zoo`` registers ``mosa_vit_fmnist`` so that
``timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=K)`` loads the weights that
ship with the package through timm's normal pretrained path (offline: the cfg names a local file).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

__all__ = [
    "FMNIST_MEAN",
    "FMNIST_STD",
    "MOSA_VIT_FMNIST",
    "MOSA_VIT_FMNIST_ARGS",
    "MOSA_VIT_FMNIST_FILE",
    "MOSA_VIT_FMNIST_RECORD",
    "BackboneError",
    "WeightsMismatchError",
    "gray_to_model_input",
    "load_backbone",
    "load_state_dict_file",
]

MOSA_VIT_FMNIST = "mosa_vit_fmnist"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MOSA_VIT_FMNIST_FILE = WEIGHTS_DIR / f"{MOSA_VIT_FMNIST}.safetensors"
MOSA_VIT_FMNIST_RECORD = WEIGHTS_DIR / f"{MOSA_VIT_FMNIST}.json"

# Architecture of the shipped checkpoint; the pretraining script builds exactly this.
MOSA_VIT_FMNIST_ARGS: dict[str, Any] = {
    "img_size": 32,
    "patch_size": 4,
    "in_chans": 3,
    "embed_dim": 96,
    "depth": 6,
    "num_heads": 3,
    "mlp_ratio": 4.0,
    "class_token": True,
    "global_pool": "token",
}
FMNIST_MEAN = (0.5, 0.5, 0.5)
FMNIST_STD = (0.5, 0.5, 0.5)


def gray_to_model_input(images: np.ndarray | torch.Tensor, size: int = 32) -> torch.Tensor:
    """uint8 grey images [N, H, W] -> float [N, 3, size, size], bilinear resize, mean=std=0.5.

    This is the exact preprocessing the checkpoint was pretrained and evaluated with.
    """
    x = images if torch.is_tensor(images) else torch.tensor(np.asarray(images))
    if x.ndim != 3 or x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 grey images [N, H, W], got {x.dtype} {tuple(x.shape)}")
    x = x.to(torch.float32).unsqueeze(1) / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - FMNIST_MEAN[0]) / FMNIST_STD[0]
    return x.expand(-1, 3, -1, -1).contiguous()


# --------------------------------------------------------------------------------------------
# timm registration of the shipped checkpoint
# --------------------------------------------------------------------------------------------

# timm's register_model reads this module-level name: a 'file' entry makes timm's standard
# pretrained path (load_pretrained -> load_from='file') read the local file, never the network.
default_cfgs = generate_default_cfgs(
    {
        MOSA_VIT_FMNIST: {
            "file": str(MOSA_VIT_FMNIST_FILE),
            "num_classes": 10,
            "input_size": (3, 32, 32),
            "pool_size": None,
            "crop_pct": 1.0,
            "crop_mode": "center",
            "interpolation": "bilinear",
            "mean": FMNIST_MEAN,
            "std": FMNIST_STD,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "license": "apache-2.0",
            "tag": None,
        }
    }
)


@register_model
def mosa_vit_fmnist(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT (img 32, patch 4, width 96, depth 6, 3 heads) pretrained on Fashion-MNIST by mosa."""
    overridden = "pretrained_cfg" in kwargs or "pretrained_cfg_overlay" in kwargs
    if pretrained and not overridden and not MOSA_VIT_FMNIST_FILE.is_file():
        raise FileNotFoundError(
            f"{MOSA_VIT_FMNIST}: weights file {MOSA_VIT_FMNIST_FILE} is missing; regenerate it with "
            "'PYTHONPATH=src python benchmarks/pretrain_fmnist.py' or use pretrained=False"
        )
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        VisionTransformer,
        MOSA_VIT_FMNIST,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg={"out_indices": out_indices, "feature_cls": "getter"},
        **{**MOSA_VIT_FMNIST_ARGS, **kwargs},
    )


# --------------------------------------------------------------------------------------------
# Generic loader: timm name, optionally with a local weights file
# --------------------------------------------------------------------------------------------

_TORCH_EXTS = (".pth", ".pt", ".bin", ".ckpt")
_MAX_KEYS_SHOWN = 12


class BackboneError(RuntimeError):
    """The backbone's weights cannot be fetched or read, or do not fit it (bad input, not a
    bug: the command line reports it in one line)."""


class WeightsMismatchError(BackboneError):
    """A state_dict does not fit the model; lists the offending keys."""

    def __init__(
        self,
        source: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = [f"weights in {source} do not match the model"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_show(unexpected)}")
        if mismatched:
            shown = [f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched]
            parts.append(f"shape mismatches ({len(mismatched)}): {_show(shown)}")
        super().__init__("; ".join(parts))


def _show(items: list[str]) -> str:
    more = len(items) - _MAX_KEYS_SHOWN
    return ", ".join(items[:_MAX_KEYS_SHOWN]) + (f", ... (+{more} more)" if more > 0 else "")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or torch (``.pth/.pt/.bin/.ckpt``) file into a flat state_dict.

    Torch files are read with ``weights_only=True`` (no arbitrary unpickling); the usual
    training-checkpoint wrappers (``state_dict``/``model`` entries, a DDP ``module.`` prefix)
    are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    if suffix not in _TORCH_EXTS:
        raise ValueError(
            f"unsupported weights file type {suffix!r} ({path}); "
            f"use .safetensors, .npz or one of {', '.join(_TORCH_EXTS)}"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler's errors vary by torch version
        # torch's first sentence only: the rest advises weights_only=False, which runs code
        why = str(e).split(". ")[0].strip()
        raise BackboneError(f"could not read {path} as a plain torch state_dict: {why}") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise BackboneError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _classifier_names(model: torch.nn.Module) -> tuple[str, ...]:
    """Module names of the classification head(s), from the model's timm pretrained cfg."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or "head"
    return (names,) if isinstance(names, str) else tuple(names)


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load ``state`` except a head of another size, which keeps its fresh init."""
    if isinstance(model, VisionTransformer):
        # timm's own filter: resamples position embeddings for another image/patch grid and
        # converts other ViT layouts, exactly as timm's pretrained path does.
        state = checkpoint_filter_fn(state, model)
    own = model.state_dict()
    for name in _classifier_names(model):
        for key in (f"{name}.weight", f"{name}.bias"):
            if key in state and key in own and state[key].shape != own[key].shape:
                # Like timm: a head trained for another number of classes is discarded.
                del state[key]
                own.pop(key)
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in sorted(own)
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        raise WeightsMismatchError(source, missing, unexpected, mismatched)
    model.load_state_dict(state, strict=False)  # strictness checked above, minus a dropped head


def _hub_unreachable(name: str) -> str | None:
    """Why the Hugging Face hub cannot serve ``name``'s weights right now (its host does not
    resolve), or None: where the name is known locally, the cache is forced
    (``HF_HUB_OFFLINE``) or the host resolves, timm's own download path decides."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        return None
    if cfg is None or not cfg.hf_hub_id or cfg.file:
        return None
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        return f"no network: {host} does not resolve ({e})"
    return None


def load_backbone(
    name_or_path: str,
    *,
    pretrained: bool = True,
    num_classes: int,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Create a timm model, optionally with weights from a local file.

    - ``weights=None``: ``timm.create_model(name, pretrained=pretrained, ...)``; hub names need
      the network, ``mosa_vit_fmnist`` and timm's ``local-dir:`` names do not.
    - ``weights=<file>`` (``pretrained`` is then ignored): the architecture ``name_or_path``
      with random init, then the file:
      ``.safetensors``, ``.pth/.pt/.bin/.ckpt`` (``torch.load(weights_only=True)``) or a
      JAX/Flax ``.npz`` through timm's own loader (models with ``load_pretrained``, e.g. ViTs).
      Every key must match; only a head of another size is re-initialised, as in timm.

    Raises FileNotFoundError for a missing file, WeightsMismatchError (naming the missing,
    unexpected and mis-shaped keys) for a state_dict that does not fit and BackboneError for
    weights that cannot be fetched or read.
    """
    if Path(name_or_path).suffix.lower() in (".safetensors", ".npz", *_TORCH_EXTS):
        raise ValueError(
            f"{name_or_path!r} looks like a weights file; pass the timm architecture name as "
            f"name_or_path and the file as weights=..."
        )
    if weights is None:
        offline = _hub_unreachable(name_or_path) if pretrained else None
        try:
            if offline:
                raise OSError(offline)  # fail at once instead of five timed-out retries
            return timm.create_model(
                name_or_path, pretrained=pretrained, num_classes=num_classes, **kwargs
            )
        except OSError as e:  # no network / not in the hub cache
            raise BackboneError(
                f"could not fetch pretrained weights for {name_or_path!r} ({e}); pass a local "
                "file with weights=PATH (.npz, .safetensors, .pth), set HF_HUB_OFFLINE=1 to use "
                "the local hub cache only, or pretrained=false"
            ) from e
    # An explicit file is the pretrained source, whatever ``pretrained`` says (configs often
    # carry pretrained=False next to a weights path).
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    model = timm.create_model(name_or_path, pretrained=False, num_classes=num_classes, **kwargs)
    if path.suffix.lower() == ".npz":
        if not hasattr(model, "load_pretrained"):
            raise ValueError(
                f".npz weights need a timm model with an npz loader (load_pretrained); "
                f"{type(model).__name__} has none"
            )
        try:
            model.load_pretrained(str(path))
        except KeyError as e:
            raise WeightsMismatchError(str(path), [f"npz entry {e}"], [], []) from e
        return model
    _load_into(model, load_state_dict_file(path), str(path))
    return model

"""Image pipelines split into a deterministic part (cacheable) and a random part.

A pipeline turns a PIL image into a normalised float tensor in three steps:

1. ``prepare``: decode-side, deterministic work (RGB conversion, resize, center crop) giving a
   uint8 CHW tensor. This is what the in-memory cache stores.
2. ``augment``: random work on the uint8 tensor (random crop, horizontal flip), train only.
3. ``normalize``: uint8 -> float32, ``(x / 255 - mean) / std``.

Policies: ``"vtab"`` resizes straight to ``img_size x img_size`` and never augments (the
VTAB-1k protocol); ``"crop"`` (FGVC and general sets) resizes the shorter side to
``img_size * 256 / 224`` and then random-crops + flips for training or center-crops for eval.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

Policy = Literal["vtab", "crop"]


def load_image(path: str | os.PathLike[str], origin: str | None = None) -> Image.Image:
    """Decode an image file fully and return it as RGB; raise DataError naming the file if broken.

    ``origin`` (e.g. ``"train800.txt:12"``) is added to the message so the user knows which
    split line to fix.
    """
    try:
        with Image.open(path) as im:
            im.load()  # force the full decode now so truncated files fail here, not later
            return to_rgb(im)
    except FileNotFoundError as e:
        hint = f" (listed in {origin})" if origin else ""
        raise DataError(f"image file not found: {os.fspath(path)}{hint}") from e
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        hint = f", listed in {origin}" if origin else ""
        raise DataError(
            f"cannot decode image {os.fspath(path)}{hint}: {e}. "
            "Replace the file with a valid image or remove its entry from the split."
        ) from e


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; grayscale is replicated to three channels."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # PIL's convert() clips wide integer/float modes at 255; rescale to the full range instead.
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        im = Image.fromarray(np.rint(a).astype(np.uint8), mode="L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # avoids PIL's warning about palette transparency
    return im if im.mode == "RGB" else im.convert("RGB")


def pil_to_uint8(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> contiguous uint8 tensor [3, H, W]."""
    arr = np.array(im, dtype=np.uint8)  # a writable copy, so torch does not warn
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def crop_resize_size(img_size: int) -> int:
    """Shorter-side size before cropping: the 256/224 ratio of the VPT/MoSA recipe."""
    return int(round(img_size * 256 / 224))


@dataclass(frozen=True)
class ImagePipeline:
    """Deterministic ``prepare`` + random ``augment`` + ``normalize``; callable on PIL images."""

    img_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    policy: Policy = "vtab"
    train: bool = False
    interpolation: str = "bicubic"
    _scale: torch.Tensor = field(init=False, repr=False, compare=False)
    _shift: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.img_size <= 0:
            raise DataError(f"img_size must be positive, got {self.img_size}")
        if self.policy not in ("vtab", "crop"):
            raise DataError(f"unknown transform policy {self.policy!r}; use 'vtab' or 'crop'")
        if self.interpolation not in _RESAMPLE:
            raise DataError(
                f"unknown interpolation {self.interpolation!r}; choose from {sorted(_RESAMPLE)}"
            )
        mean = _triple(self.mean, "mean")
        std = _triple(self.std, "std")
        if any(s <= 0 for s in std):
            raise DataError(f"std must be positive, got {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        # Fold /255, -mean and /std into one multiply-add so __getitem__ stays cheap.
        s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        object.__setattr__(self, "_scale", 1.0 / (255.0 * s))
        object.__setattr__(self, "_shift", -m / s)

    @property
    def deterministic(self) -> bool:
        """True when ``augment`` is the identity (then a cached item equals a fresh one exactly)."""
        return not (self.policy == "crop" and self.train)

    @property
    def resize_size(self) -> int:
        """Square size (vtab) or shorter-side size (crop) that ``prepare`` resizes to."""
        return self.img_size if self.policy == "vtab" else crop_resize_size(self.img_size)

    def prepare(self, im: Image.Image) -> torch.Tensor:
        """Deterministic part: RGB, resize (and center crop for eval) -> uint8 [3, H, W]."""
        im = to_rgb(im)
        resample = _RESAMPLE[self.interpolation]
        size = self.img_size
        if self.policy == "vtab":
            if im.size != (size, size):
                im = im.resize((size, size), resample)
            return pil_to_uint8(im)
        im = _resize_shorter(im, self.resize_size, resample)
        if not self.train:
            w, h = im.size
            top = int(round((h - size) / 2.0))
            left = int(round((w - size) / 2.0))
            im = im.crop((left, top, left + size, top + size))
        return pil_to_uint8(im)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random part (train + crop policy only): random crop to img_size, then 50% h-flip."""
        if self.deterministic:
            return x
        size = self.img_size
        h, w = x.shape[-2:]
        top = int(torch.randint(0, h - size + 1, (1,)))
        left = int(torch.randint(0, w - size + 1, (1,)))
        x = x[:, top : top + size, left : left + size]
        if bool(torch.rand(1) < 0.5):
            x = x.flip(-1)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [3, H, W] -> float32 ``(x/255 - mean)/std``."""
        return x.to(torch.float32).mul_(self._scale).add_(self._shift)

    def __call__(self, im: Image.Image) -> torch.Tensor:
        """Full pipeline on one PIL image."""
        return self.normalize(self.augment(self.prepare(im)))


def build_transform(
    policy: Policy,
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    train: bool = False,
    interpolation: str | None = None,
) -> ImagePipeline:
    """Pipeline for a data kind; interpolation defaults to bicubic (vtab, as in NOAH's
    VTAB-1k loader) or bilinear (crop, as in VPT's FGVC loader)."""
    if interpolation is None:
        interpolation = "bicubic" if policy == "vtab" else "bilinear"
    return ImagePipeline(
        img_size=int(img_size),
        mean=_triple(mean, "mean"),
        std=_triple(std, "std"),
        policy=policy,
        train=train,
        interpolation=interpolation,
    )


def _triple(v: Sequence[float], name: str) -> tuple[float, float, float]:
    vals = tuple(float(x) for x in v)
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise DataError(f"{name} needs 3 values (one per RGB channel), got {len(vals)}")
    return vals  # type: ignore[return-value]


def _resize_shorter(im: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    w, h = im.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return im
    return im.resize((new_w, new_h), resample)

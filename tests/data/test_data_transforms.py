"""Pipelines: sizes, normalisation, augmentation, colour modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mosa.data import DataError, build_transform
from mosa.data.transforms import crop_resize_size, load_image


def _img(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, 3)
    return Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode)


def test_vtab_resizes_to_square_without_augmentation() -> None:
    pipe = build_transform("vtab", 24, train=True)
    assert pipe.deterministic and pipe.interpolation == "bicubic"
    im = _img(50, 30)
    a, b = pipe(im), pipe(im)
    assert a.shape == (3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b)


def test_crop_eval_is_resize_then_center_crop() -> None:
    pipe = build_transform("crop", 224, train=False)
    assert crop_resize_size(224) == 256 and pipe.interpolation == "bilinear"
    p = pipe.prepare(_img(400, 300))
    assert p.shape == (3, 224, 224) and p.dtype == torch.uint8
    assert pipe.deterministic
    # center crop of the shorter-side resize, computed independently with PIL
    ref = _img(400, 300).resize((341, 256), Image.Resampling.BILINEAR)
    ref = np.array(ref.crop((58, 16, 58 + 224, 16 + 224)))
    assert torch.equal(p, torch.from_numpy(ref).permute(2, 0, 1))


def test_crop_train_random_crop_and_flip() -> None:
    torch.manual_seed(0)
    pipe = build_transform("crop", 16, train=True)
    assert not pipe.deterministic
    base = pipe.prepare(_img(40, 30))
    assert base.shape == (3, 18, 24)  # shorter side -> round(16 * 256 / 224) = 18
    outs = [pipe.augment(base) for _ in range(40)]
    assert all(o.shape == (3, 16, 16) for o in outs)
    assert len({o.numpy().tobytes() for o in outs}) > 5  # crops and flips vary
    # every output is some crop of base or of its mirror
    o = outs[0]
    found = any(
        torch.equal(o, src[:, i : i + 16, j : j + 16])
        for src in (base, base.flip(-1))
        for i in range(3)
        for j in range(9)
    )
    assert found


def test_normalize_uses_mean_and_std() -> None:
    pipe = build_transform("vtab", 2, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2).contiguous()
    y = pipe.normalize(x)
    torch.testing.assert_close(y[:, 0, 0], torch.tensor([-1.0, 3.0, 0.2]))


def test_grayscale_and_palette_become_rgb() -> None:
    pipe = build_transform("vtab", 8)
    g = pipe.prepare(_img(8, 8, "L"))
    assert g.shape == (3, 8, 8) and torch.equal(g[0], g[2])
    p = pipe.prepare(_img(8, 8).convert("P"))
    assert p.shape == (3, 8, 8)


def test_sixteen_bit_grayscale_is_rescaled(tmp_path) -> None:
    arr = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    im = load_image(path)
    assert im.mode == "RGB"
    v = np.asarray(im)[:, :, 0]
    assert v[0, 0] == 0 and v[1, 1] == 255 and 100 < v[1, 0] < 130  # not clipped to 255


def test_bad_arguments() -> None:
    with pytest.raises(DataError, match="img_size must be positive"):
        build_transform("vtab", 0)
    with pytest.raises(DataError, match="needs 3 values"):
        build_transform("vtab", 8, mean=(0.1, 0.2))
    with pytest.raises(DataError, match="std must be positive"):
        build_transform("vtab", 8, std=(0.1, 0.0, 0.1))
    with pytest.raises(DataError, match="unknown interpolation"):
        build_transform("vtab", 8, interpolation="cubic-ish")


def test_load_image_missing_names_file(tmp_path) -> None:
    with pytest.raises(
        DataError, match=r"image file not found: .*nope\.png \(listed in x\.txt:3\)"
    ):
        load_image(tmp_path / "nope.png", "x.txt:3")

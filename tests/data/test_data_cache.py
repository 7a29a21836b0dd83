"""The prepared-image cache: identical results, fewer decodes, byte budget."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
import torch

from mosa.data import UInt8Cache, build_dataset
from mosa.data.base import ImageDataset
from mosa.data.transforms import build_transform


def _kw(train: bool = False, size: int = 16) -> dict:
    return {"img_size": size, "mean": (0.4, 0.5, 0.6), "std": (0.2, 0.25, 0.3), "train": train}


def test_cached_item_equals_uncached(make_vtab, vtab_root: Path) -> None:
    make_vtab("mytask")
    cached = build_dataset("vtab", vtab_root, "mytask", "train800val200", **_kw(), cache=True)
    plain = build_dataset("vtab", vtab_root, "mytask", "train800val200", **_kw(), cache=False)
    for _epoch in range(2):
        for i in range(len(plain)):
            a, ya = cached[i]
            b, yb = plain[i]
            assert torch.equal(a, b) and ya == yb
        assert cached.cached == len(cached)
    assert plain.cached == 0


def test_each_image_decoded_once(make_vtab, vtab_root: Path, monkeypatch) -> None:
    make_vtab("mytask")
    ds = build_dataset("vtab", vtab_root, "mytask", "test", **_kw())
    calls = []
    orig = type(ds)._decode
    monkeypatch.setattr(type(ds), "_decode", lambda self, i: calls.append(i) or orig(self, i))
    for _ in range(3):
        for i in range(len(ds)):
            ds[i]
    assert sorted(calls) == list(range(len(ds)))


def test_random_train_transform_caches_the_uncropped_image(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "train" / "a" / "1.png", 1, size=(30, 20))
    ds = build_dataset("folder", tmp_path, None, "train", **_kw(train=True), cache=True)
    plain = build_dataset("folder", tmp_path, None, "train", **_kw(train=True), cache=False)
    assert torch.equal(ds.prepared(0), plain.prepared(0))
    assert ds.prepared(0).shape == (3, 18, 27)  # cached before the random crop
    torch.manual_seed(1)
    a = ds[0][0]
    torch.manual_seed(1)
    b = plain[0][0]
    assert a.shape == (3, 16, 16) and torch.equal(a, b)


def test_preload_fills_cache(make_vtab, vtab_root: Path) -> None:
    make_vtab("mytask", test=list(range(3)) * 30)
    ds = build_dataset("vtab", vtab_root, "mytask", "test", **_kw())
    assert ds.cached == 0
    assert ds.preload(num_threads=2) == 90 == ds.cached


class _Synthetic(ImageDataset):
    def __init__(self, n: int, **kw) -> None:
        super().__init__(
            targets=[i % 10 for i in range(n)], classes=[str(i) for i in range(10)], **kw
        )

    def _decode(self, index: int):
        from PIL import Image

        return Image.new("RGB", (32, 32), (index % 256, 7, 9))


def test_cache_budget_stops_storing_but_stays_correct() -> None:
    pipe = build_transform("vtab", 8)
    ds = _Synthetic(10, pipeline=pipe, cache_max_bytes=3 * 3 * 8 * 8)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for i in range(10):
            x, y = ds[i]
            assert y == i % 10
            assert torch.allclose(x[0], torch.full((8, 8), ((i / 255) - 0.485) / 0.229))
    assert ds.cached == 3
    assert sum("budget" in str(w.message) for w in rec) == 1


def test_uint8cache_rejects_float() -> None:
    c = UInt8Cache(2)
    with pytest.raises(TypeError):
        c.put(0, torch.zeros(3))


def test_cached_iteration_is_fast_enough_to_report() -> None:
    # Not asserted (shared CI cores); printed with -s for a manual look.
    ds = _Synthetic(1000, pipeline=build_transform("vtab", 32))
    ds.preload(num_threads=1)
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    print(f"1000 cached 32x32 items: {time.perf_counter() - t0:.4f} s")
    assert ds.cached == 1000


def test_dataset_pickles_with_its_cache(make_vtab, vtab_root: Path) -> None:
    import pickle

    make_vtab("mytask")
    ds = build_dataset("vtab", vtab_root, "mytask", "test", **_kw())
    ds.preload()
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.cached == len(ds)
    assert torch.equal(clone[1][0], ds[1][0])

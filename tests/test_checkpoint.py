"""Adapter checkpoints: exact round trips for every method, size, clear errors, atomic writes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from torch import nn

import mosa
import mosa.io
from mosa import CheckpointError, MethodConfig
from mosa.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from mosa.state import find_state, state_of

MakeModel = Callable[..., nn.Module]
STYLES = ("adaptformer", "pfeiffer", "houlsby")

ROUND_TRIPS = (
    [{"method": "linear"}, {"method": "full"}]
    + [{"method": "adapter", "style": s} for s in STYLES]
    + [{"method": "mosa", "style": s} for s in STYLES]
    + [{"method": "mosa", "share": sh} for sh in ("up", "none")]
    + [{"method": "mosa", "granularity": "row", "merge": "sum", "routing": "sample"}]
    + [{"method": "mosa", "bias": "expert"}]
    + [{"method": "mosa", "bias": "expert", "share": "none", "merge": "sum", "routing": "sample"}]
    + [{"method": "lora"}, {"method": "lora", "targets": ("q", "k", "v", "o", "mlp")}]
    + [{"method": "mosa_lora", "share": sh} for sh in ("down", "up", "none")]
)


def _id(kw: dict[str, object]) -> str:
    return "-".join(str(v) if not isinstance(v, tuple) else "+".join(v) for v in kw.values())


def numel_stored(directory: Path) -> int:
    with safe_open(str(directory / WEIGHTS_NAME), framework="pt") as f:
        names = f.keys()
        return sum(_prod(f.get_slice(k).get_shape()) for k in names)


def _prod(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def eval_out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def trained(
    make_model: MakeModel, train: Callable, kw: dict[str, object], arch: str = "vit"
) -> nn.Module:
    model = mosa.inject(make_model(arch), MethodConfig(**kw))
    train(model, 3, lr=1e-3 if kw.get("method") == "full" else 3e-2)
    return model


# ---------------------------------------------------------------------------- round trips


def test_expert_biases_train_per_expert_and_count_as_extra(
    make_model: MakeModel, train: Callable
) -> None:
    cfg = MethodConfig(method="mosa", bias="expert", num_experts=3)
    model = mosa.inject(make_model("vit"), cfg)
    shared = mosa.inject(
        make_model("vit"), MethodConfig(method="mosa", num_experts=3, bias="shared")
    )
    splits = list(mosa.model.mosa_modules(model))
    assert splits and all(m.bias.shape == (3, m.out_features) for m in splits)
    extra = sum(2 * m.out_features for m in splits)
    s, s0 = mosa.summary(model), mosa.summary(shared)
    assert (s["expert_bias_extra"], s0["expert_bias_extra"]) == (extra, 0)
    assert s["trainable"] - s0["trainable"] == extra  # the only difference from the adapter's
    model.train()
    model(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum().backward()
    for m in splits:  # only the picked expert's bias row gets gradient
        picked = m.bias.grad.abs().sum(1) > 0
        assert picked.tolist() == [k == m.last_expert for k in range(3)]
    train(model, 6, lr=3e-2)
    for m in splits:  # each expert's bias merges by the mean
        torch.testing.assert_close(m.to_linear().bias, m.bias.mean(0))
    with pytest.raises(mosa.ConfigError, match="bias='experts'.*did you mean 'expert'"):
        MethodConfig(bias="experts")


def test_decayed_initial_weights_survive_save_and_load(
    make_model: MakeModel, images: torch.Tensor, tmp_path: Path
) -> None:
    from mosa.engine.config import OptimConfig
    from mosa.engine.optim import ExpertTracker, build_optimizer

    model = mosa.inject(make_model("vit"), MethodConfig(method="mosa", share="up"))
    opt = build_optimizer(model, OptimConfig(lr=0.05, weight_decay=0.5))
    tracker = ExpertTracker(model)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        tracker.reset()
        model(images).logsumexp(-1).sum().backward()
        opt.set_active(tracker.masks())
        opt.step()
    scales = [m.init_scale.clone() for m in mosa.model.mosa_modules(model)]
    assert all(bool((s < 1).any()) for s in scales)  # the picked experts' W0 copies decayed
    ref = eval_out(model, images)
    mosa.save_adapter(model, tmp_path / "a")
    fresh = mosa.load_adapter(make_model("vit"), tmp_path / "a")
    torch.testing.assert_close(eval_out(fresh, images), ref, rtol=0, atol=1e-6)
    for m, s in zip(mosa.model.mosa_modules(fresh), scales, strict=True):
        assert torch.equal(m.init_scale, s)


@pytest.mark.parametrize("kw", ROUND_TRIPS, ids=[_id(k) for k in ROUND_TRIPS])
def test_eval_output_survives_merge_and_save_load(
    make_model: MakeModel,
    train: Callable,
    images: torch.Tensor,
    tmp_path: Path,
    kw: dict[str, object],
) -> None:
    model = trained(make_model, train, kw)
    ref = eval_out(model, images)
    if kw["method"] != "linear":  # training really changed the backbone's output
        assert (ref - eval_out(make_model("vit"), images)).abs().max() > 1e-3
    mosa.save_adapter(model, tmp_path / "raw")
    mosa.merge(model)
    torch.testing.assert_close(eval_out(model, images), ref, rtol=0, atol=1e-5)
    mosa.save_adapter(model, tmp_path / "merged")
    for sub in ("raw", "merged"):
        # a fresh model with the same (frozen, "pretrained") backbone weights
        fresh = mosa.load_adapter(make_model("vit"), tmp_path / sub)
        torch.testing.assert_close(eval_out(fresh, images), ref, rtol=0, atol=1e-5, msg=sub)
        assert mosa.summary(fresh)["merged"] == (sub == "merged")
        assert state_of(fresh).config == MethodConfig(**kw)
    # an unmerged checkpoint resumes training: the partitions and the routing come back
    resumed = mosa.load_adapter(make_model("vit"), tmp_path / "raw")
    assert not mosa.summary(resumed)["merged"]
    if MethodConfig(**kw).uses_lora:
        # merged LoRA is folded into the backbone: a plain timm model of that config takes it
        plain = make_model("vit", seed=7)
        plain.load_state_dict(model.state_dict(), strict=True)
        torch.testing.assert_close(eval_out(plain, images), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "kw"),
    [
        ("swin", {"method": "mosa_lora"}),
        ("swin", {"method": "mosa", "style": "houlsby", "share": "none"}),
        ("convnext", {"method": "mosa", "style": "pfeiffer"}),
        ("convnext", {"method": "mosa_lora", "targets": ("mlp",)}),
    ],
    ids=["swin-mosa_lora", "swin-mosa-houlsby", "convnext-mosa", "convnext-mosa_lora"],
)
def test_round_trip_other_architectures(
    make_model: MakeModel,
    train: Callable,
    images: torch.Tensor,
    tmp_path: Path,
    arch: str,
    kw: dict,
) -> None:
    model = trained(make_model, train, kw, arch)
    ref = eval_out(model, images)
    mosa.save_adapter(model, tmp_path / "raw")
    mosa.merge(model)
    torch.testing.assert_close(eval_out(model, images), ref, rtol=0, atol=1e-5)
    fresh = mosa.load_adapter(make_model(arch), tmp_path / "raw")
    torch.testing.assert_close(eval_out(fresh, images), ref, rtol=0, atol=1e-5)
    if kw["method"] == "mosa_lora":
        plain = make_model(arch, seed=9)
        plain.load_state_dict(model.state_dict(), strict=True)
        torch.testing.assert_close(eval_out(plain, images), ref, rtol=0, atol=1e-5)


def test_merged_lora_state_dict_loads_into_timm_create_model(
    make_model: MakeModel, train: Callable, images: torch.Tensor
) -> None:
    model = mosa.merge(trained(make_model, train, {"method": "mosa_lora", "share": "none"}))
    plain = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=3,
        num_classes=5,
    )
    plain.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(eval_out(plain, images), eval_out(model, images), rtol=0, atol=1e-5)


def test_checkpoint_layout_and_metadata(make_model: MakeModel, tmp_path: Path) -> None:
    model = mosa.inject(make_model("vit"), MethodConfig(bottleneck=8))
    out = mosa.save_adapter(model, tmp_path / "ck")
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    meta = mosa.read_adapter_config(out)
    assert meta["format"] == "mosa-adapter" and meta["backbone"] == "vit_tiny_patch16_224"
    assert meta["num_classes"] == 5 and meta["merged"] is False
    assert MethodConfig.from_dict(meta["method"]) == MethodConfig(bottleneck=8)
    with safe_open(str(out / WEIGHTS_NAME), framework="pt") as f:
        keys = set(f.keys())
    # only what mosa added, the head, nothing of the frozen backbone
    assert keys and all(k.startswith("head.") or ".mosa_" in k for k in keys)
    assert {"head.weight", "head.bias"} <= keys
    assert any(k.endswith("owner") for k in keys)


# ---------------------------------------------------------------------------- size


def _stored(make_model: MakeModel, tmp_path: Path, name: str, **kw: object) -> int:
    model = mosa.inject(make_model("vit"), MethodConfig(**kw))
    return numel_stored(mosa.save_adapter(model, tmp_path / name))


@pytest.mark.parametrize("style", STYLES)
def test_mosa_checkpoint_is_not_n_copies(make_model: MakeModel, tmp_path: Path, style: str) -> None:
    ada = _stored(make_model, tmp_path, "a", method="adapter", style=style, bottleneck=16)
    for n in (4, 16):
        mo = _stored(make_model, tmp_path, f"m{n}", method="mosa", style=style, num_experts=n)
        assert ada < mo <= 2 * ada  # trained values + a uint8 owner index, whatever N
    # splitting a Kaiming-initialised Down also keeps its initial value: still far below N copies
    for share in ("up", "none"):
        mo = _stored(
            make_model, tmp_path, share, method="mosa", style=style, share=share, num_experts=16
        )
        assert mo <= 3 * ada


def test_mosa_lora_checkpoint_size(make_model: MakeModel, tmp_path: Path) -> None:
    lo = _stored(make_model, tmp_path, "l", method="lora", rank=8)
    ml = _stored(make_model, tmp_path, "m", method="mosa_lora", rank=8, num_experts=8)
    assert lo < ml <= 2 * lo


def test_merged_mosa_checkpoint_is_one_adapter(make_model: MakeModel, tmp_path: Path) -> None:
    ada = _stored(make_model, tmp_path, "a", method="adapter")
    model = mosa.merge(mosa.inject(make_model("vit"), MethodConfig(method="mosa", share="none")))
    assert numel_stored(mosa.save_adapter(model, tmp_path / "m")) == ada


# ---------------------------------------------------------------------------- mismatches


@pytest.fixture
def saved(make_model: MakeModel, tmp_path: Path) -> Path:
    model = mosa.inject(make_model("vit"), MethodConfig(method="mosa", bottleneck=8))
    return mosa.save_adapter(model, tmp_path / "ck")


def test_other_backbone_is_refused(make_model: MakeModel, saved: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        mosa.load_adapter(make_model("swin"), saved)
    msg = str(info.value)
    assert "vit_tiny_patch16_224" in msg and "swin_tiny_patch4_window7_224" in msg


def test_other_width_names_keys_and_shapes(make_model: MakeModel, saved: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        mosa.load_adapter(make_model("vit", embed_dim=36), saved)
    msg = str(info.value)
    assert "shape mismatches" in msg
    assert "blocks.0.mosa_adapter.down.weight" in msg and "(8, 48)" in msg and "(8, 36)" in msg


def test_other_depth_names_missing_and_unexpected_keys(make_model: MakeModel, saved: Path) -> None:
    with pytest.raises(CheckpointError, match=r"unexpected keys \(\d+\): blocks\.1\.mosa_adapter"):
        mosa.load_adapter(make_model("vit", depth=1), saved)
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): blocks\.2\.mosa_adapter"):
        mosa.load_adapter(make_model("vit", depth=3), saved)


def test_other_class_count_is_refused(make_model: MakeModel, saved: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        mosa.load_adapter(make_model("vit", num_classes=7), saved)
    msg = str(info.value)
    assert "head.weight" in msg and "(5, 48)" in msg and "(7, 48)" in msg
    assert "5 classes" in msg and "num_classes=5" in msg


@pytest.mark.parametrize(
    "other",
    [
        {"bottleneck": 16},
        {"method": "mosa", "bottleneck": 8, "share": "none"},
        {"method": "adapter", "bottleneck": 8},
    ],
)
def test_other_config_names_the_fields(make_model: MakeModel, saved: Path, other: dict) -> None:
    model = mosa.inject(make_model("vit"), MethodConfig(**other))
    with pytest.raises(CheckpointError) as info:
        mosa.load_adapter(model, saved)
    msg = str(info.value)
    want = MethodConfig(method="mosa", bottleneck=8).to_dict()
    differing = [k for k, v in MethodConfig(**other).to_dict().items() if want[k] != v]
    assert differing
    for k in differing:
        assert repr(k) in msg


def test_same_config_already_injected_loads(
    make_model: MakeModel, saved: Path, images: torch.Tensor
) -> None:
    model = mosa.inject(make_model("vit"), MethodConfig(method="mosa", bottleneck=8))
    mosa.load_adapter(model, saved)
    torch.testing.assert_close(
        eval_out(model, images), eval_out(mosa.load_adapter(make_model("vit"), saved), images)
    )


# ---------------------------------------------------------------------------- broken files


def test_missing_folder(make_model: MakeModel, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        mosa.load_adapter(make_model("vit"), tmp_path / "nope")


def test_missing_weights_file(make_model: MakeModel, saved: Path) -> None:
    (saved / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"adapter\.safetensors not found"):
        mosa.load_adapter(make_model("vit"), saved)


def test_corrupt_weights_file(make_model: MakeModel, saved: Path) -> None:
    data = (saved / WEIGHTS_NAME).read_bytes()
    (saved / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="corrupt"):
        mosa.load_adapter(make_model("vit"), saved)
    (saved / WEIGHTS_NAME).write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        mosa.load_adapter(make_model("vit"), saved)


def test_corrupt_config_file(make_model: MakeModel, saved: Path) -> None:
    (saved / CONFIG_NAME).write_text('{"format": "mosa-adapter", "method": {')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        mosa.load_adapter(make_model("vit"), saved)


def test_foreign_or_newer_config_file(make_model: MakeModel, saved: Path) -> None:
    meta = json.loads((saved / CONFIG_NAME).read_text())
    (saved / CONFIG_NAME).write_text(json.dumps({**meta, "format": "peft"}))
    with pytest.raises(CheckpointError, match="not a mosa adapter config"):
        mosa.load_adapter(make_model("vit"), saved)
    (saved / CONFIG_NAME).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match="upgrade mosa"):
        mosa.load_adapter(make_model("vit"), saved)


def test_config_without_method_is_a_checkpoint_error(make_model: MakeModel, saved: Path) -> None:
    meta = json.loads((saved / CONFIG_NAME).read_text())
    del meta["method"]
    (saved / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="method"):
        mosa.load_adapter(make_model("vit"), saved)


def test_config_with_invalid_method_names_the_field(make_model: MakeModel, saved: Path) -> None:
    meta = json.loads((saved / CONFIG_NAME).read_text())
    meta["method"]["num_experts"] = 1
    (saved / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="num_experts"):
        mosa.load_adapter(make_model("vit"), saved)


def test_save_needs_an_injected_model(make_model: MakeModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inject"):
        mosa.save_adapter(make_model("vit"), tmp_path)


# ---------------------------------------------------------------------------- atomic writes


def test_save_leaves_no_temporary_files(make_model: MakeModel, tmp_path: Path) -> None:
    model = mosa.inject(make_model("vit"), MethodConfig())
    for _ in range(2):  # overwriting an existing checkpoint too
        mosa.save_adapter(model, tmp_path / "ck")
        assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == sorted(
            [CONFIG_NAME, WEIGHTS_NAME]
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_failed_save_keeps_the_old_checkpoint(
    make_model: MakeModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, images: torch.Tensor
) -> None:
    model = mosa.inject(make_model("vit"), MethodConfig())
    directory = mosa.save_adapter(model, tmp_path / "ck")
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    real = mosa.io.save_file

    def half_then_crash(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        real(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(Path(filename).read_bytes()[:100])
        raise OSError("disk full")

    monkeypatch.setattr(mosa.io, "save_file", half_then_crash)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        mosa.save_adapter(model, directory)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before  # untouched, no temp
    monkeypatch.undo()
    mosa.load_adapter(make_model("vit"), directory)  # still a valid checkpoint


def test_failed_config_write_leaves_no_temp(
    make_model: MakeModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = mosa.inject(make_model("vit"), MethodConfig())

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("no space")

    monkeypatch.setattr(mosa.io.os, "fsync", crash)
    with pytest.raises(OSError, match="no space"):
        mosa.save_adapter(model, tmp_path / "ck")
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.endswith(".tmp")]
    assert not (tmp_path / "ck" / CONFIG_NAME).exists()


# ---------------------------------------------------------------------------- loading for inference


def test_load_into_eval_model_gives_deterministic_outputs(
    make_model: MakeModel, train: Callable, images: torch.Tensor, tmp_path: Path
) -> None:
    model = trained(make_model, train, {"method": "mosa"})
    ref = eval_out(model, images)
    mosa.save_adapter(model, tmp_path / "ck")
    fresh = make_model("vit").eval()
    mosa.load_adapter(fresh, tmp_path / "ck")
    with torch.no_grad():  # no second .eval(): the model was already in eval mode
        torch.testing.assert_close(fresh(images), ref, rtol=0, atol=1e-5)


def test_refused_load_leaves_the_model_untouched(make_model: MakeModel, saved: Path) -> None:
    model = make_model("vit", num_classes=7)
    with pytest.raises(CheckpointError):
        mosa.load_adapter(model, saved)
    assert find_state(model) is None
    assert all(p.requires_grad for p in model.parameters())


def test_saved_partitions_are_the_ones_loaded(
    make_model: MakeModel, train: Callable, images: torch.Tensor, tmp_path: Path
) -> None:
    """A trained model whose partition differs from what its seed draws: loading must restore
    the saved partition (the seed would rebuild another one)."""
    cfg = MethodConfig(method="mosa", share="none", num_experts=4)
    model = mosa.inject(make_model("vit"), cfg)
    with torch.no_grad():
        for m in mosa.model.mosa_modules(model):
            m.owner.copy_((m.owner + 1) % m.num_experts)  # another valid partition
    train(model, 3, lr=3e-2)
    mosa.save_adapter(model, tmp_path / "a")
    drawn = mosa.inject(make_model("vit"), cfg)  # what the seed alone gives
    fresh = mosa.load_adapter(make_model("vit"), tmp_path / "a")
    pairs = zip(
        mosa.model.mosa_modules(model),
        mosa.model.mosa_modules(fresh),
        mosa.model.mosa_modules(drawn),
        strict=True,
    )
    for saved, loaded, seeded in pairs:
        assert torch.equal(loaded.owner, saved.owner)
        assert not torch.equal(loaded.owner, seeded.owner)
        for k in range(4):  # every expert, as training would resume it
            assert torch.equal(loaded.expert_weight(k), saved.expert_weight(k))
    torch.testing.assert_close(eval_out(fresh, images), eval_out(model, images), rtol=0, atol=1e-6)

"""The shipped mosa_vit_fmnist checkpoint and the load_backbone helper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from mosa.backbones.zoo import (
    MOSA_VIT_FMNIST_FILE,
    MOSA_VIT_FMNIST_RECORD,
    WeightsMismatchError,
    gray_to_model_input,
    load_backbone,
)

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}
TINY_NAME = "vit_tiny_patch16_224"  # any timm ViT entrypoint; TINY overrides its size


def _shipped() -> None:
    if not MOSA_VIT_FMNIST_FILE.is_file() or not MOSA_VIT_FMNIST_RECORD.is_file():
        pytest.fail(f"shipped weights or record missing under {MOSA_VIT_FMNIST_FILE.parent}")


def test_registered_with_local_file_cfg() -> None:
    assert "mosa_vit_fmnist" in timm.list_models("mosa_*")
    assert "mosa_vit_fmnist" in timm.list_models(pretrained=True)
    cfg = timm.models.get_pretrained_cfg("mosa_vit_fmnist")
    assert cfg.file == str(MOSA_VIT_FMNIST_FILE)
    assert cfg.num_classes == 10
    assert cfg.input_size == (3, 32, 32)
    assert cfg.classifier == "head"


@pytest.mark.slow
def test_pretrained_reproduces_recorded_accuracy(data_missing) -> None:
    _shipped()
    try:
        from mosa.data.sources import load_fashion_mnist

        images, labels = load_fashion_mnist("test")
    except FileNotFoundError as e:
        data_missing(f"Fashion-MNIST not installed: {e}")
    record = json.loads(MOSA_VIT_FMNIST_RECORD.read_text())
    n = record["subset_size"]
    model = timm.create_model("mosa_vit_fmnist", pretrained=True).eval()
    with torch.no_grad():
        preds = torch.cat(
            [model(gray_to_model_input(images[i : i + 250])).argmax(1) for i in range(0, n, 250)]
        )
    correct = int((preds == torch.from_numpy(labels[:n])).sum())
    # Thread counts can flip a borderline logit, nothing more; corrupted weights move far more.
    assert abs(correct - record["correct"]) <= 1, (correct, record["correct"])
    recorded = torch.tensor([int(c) for c in record["predictions"]])
    assert int((preds == recorded).sum()) >= n - 2


def test_num_classes_override_new_head_same_backbone() -> None:
    _shipped()
    base = timm.create_model("mosa_vit_fmnist", pretrained=True)
    torch.manual_seed(0)
    model = timm.create_model("mosa_vit_fmnist", pretrained=True, num_classes=7)
    assert model.head.weight.shape == (7, 96) and model.head.bias.shape == (7,)
    assert not torch.equal(model.head.weight[:7], base.head.weight[:7])
    ref = base.state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(v, ref[k]), k
    assert load_backbone("mosa_vit_fmnist", num_classes=7).head.out_features == 7


def _tiny(num_classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(1)
    return timm.create_model(TINY_NAME, pretrained=False, num_classes=num_classes, **TINY)


@pytest.mark.parametrize("ext", [".safetensors", ".pth"])
def test_load_backbone_local_file_exact(tmp_path: Path, ext: str) -> None:
    src = _tiny()
    path = tmp_path / f"tiny{ext}"
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    if ext == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)  # a wrapped training checkpoint
    model = load_backbone(TINY_NAME, num_classes=5, weights=path, **TINY)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # A weights file wins over pretrained=False (configs carry both).
    again = load_backbone(TINY_NAME, pretrained=False, num_classes=5, weights=path, **TINY)
    assert torch.equal(again.pos_embed, src.pos_embed)
    # Another class count keeps the backbone and re-initialises only the head.
    other = load_backbone(TINY_NAME, num_classes=3, weights=path, **TINY)
    assert other.head.weight.shape == (3, 32)
    assert torch.equal(other.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_load_backbone_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_backbone(TINY_NAME, num_classes=5, weights=tmp_path / "absent.safetensors", **TINY)
    state = _tiny().state_dict()
    state.pop("blocks.0.mlp.fc1.weight")
    state["blocks.0.extra.weight"] = torch.zeros(2)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(WeightsMismatchError) as info:
        load_backbone(TINY_NAME, num_classes=5, weights=path, **TINY)
    msg = str(info.value)
    assert "blocks.0.mlp.fc1.weight" in msg and "blocks.0.extra.weight" in msg
    assert info.value.missing == ["blocks.0.mlp.fc1.weight"]
    assert info.value.unexpected == ["blocks.0.extra.weight"]
    # A backbone tensor of the wrong shape is an error, not a silent re-init.
    wide = _tiny().state_dict()
    wide["blocks.0.mlp.fc1.weight"] = torch.zeros(64, 32)
    torch.save(wide, tmp_path / "wide.pth")
    with pytest.raises(WeightsMismatchError, match=r"blocks\.0\.mlp\.fc1\.weight"):
        load_backbone(TINY_NAME, num_classes=5, weights=tmp_path / "wide.pth", **TINY)


def test_offline_hub_miss_fails_at_once_with_one_clear_line(monkeypatch) -> None:
    import socket

    import mosa.backbones.zoo as zoo

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    def no_download(*args, **kwargs):
        raise AssertionError("timm must not be asked to download (it would retry five times)")

    monkeypatch.setattr(zoo.socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(zoo.timm, "create_model", no_download)
    with pytest.raises(zoo.BackboneError) as err:
        zoo.load_backbone("vit_tiny_patch16_224", num_classes=3)
    msg = str(err.value)
    assert "\n" not in msg and "weights=PATH" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "huggingface.co does not resolve" in msg

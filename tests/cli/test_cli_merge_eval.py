"""``mosa merge`` and ``mosa eval`` on a real (tiny) ViT: outputs must match the trained model."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import mosa
from mosa.backbones.zoo import load_backbone
from mosa.cli.main import main
from mosa.cli.runs import usage_message
from mosa.evaluation import Arg, UsageError, evaluate_checkpoint

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """Random-init mosa_vit_fmnist weights in a file: stands in for a pretrained checkpoint."""
    torch.manual_seed(0)
    model = timm.create_model("mosa_vit_fmnist", pretrained=False, num_classes=NUM_CLASSES)
    path = tmp_path_factory.mktemp("weights") / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def trained_adapter(backbone_file, tmp_path, method):
    """A model with ``method`` injected and non-trivial (random) trained values, saved."""
    model = load_backbone("mosa_vit_fmnist", num_classes=NUM_CLASSES, weights=backbone_file)
    cfg = mosa.MethodConfig(method=method, rank=4, bottleneck=8, num_experts=2)
    mosa.inject(model, cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    adapter = tmp_path / "adapter"
    mosa.save_adapter(model, adapter)
    return model.eval(), adapter


@pytest.mark.parametrize("method", ["lora", "mosa_lora"])
def test_merge_writes_a_plain_timm_state_dict(backbone_file, tmp_path, method, capsys):
    model, adapter = trained_adapter(backbone_file, tmp_path, method)
    out = tmp_path / "merged"
    assert main(["merge", str(adapter), "--out", str(out), "--weights", str(backbone_file)]) == 0
    plain = timm.create_model("mosa_vit_fmnist", pretrained=False, num_classes=NUM_CLASSES)
    plain.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(x)
        got = plain.eval()(x)
    assert not torch.allclose(want, timm_base(backbone_file)(x), atol=1e-4)  # LoRA did something
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert mosa.read_adapter_config(out)["merged"] is True
    assert json.loads((out / "model_config.json").read_text())["num_classes"] == NUM_CLASSES
    assert "plain timm weights" in capsys.readouterr().out


def timm_base(path):
    model = load_backbone("mosa_vit_fmnist", num_classes=NUM_CLASSES, weights=path)
    return model.eval().requires_grad_(False)


def test_merge_of_mosa_adapter_keeps_an_adapter_folder(backbone_file, tmp_path):
    model, adapter = trained_adapter(backbone_file, tmp_path, "mosa")
    out = tmp_path / "merged"
    assert main(["merge", str(adapter), "--out", str(out), "--weights", str(backbone_file)]) == 0
    assert not (out / "model.safetensors").exists()
    reloaded = mosa.load_adapter(timm_base(backbone_file), out).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), atol=1e-5, rtol=1e-4)


def test_eval_reports_the_merged_models_top1(backbone_file, tmp_path, capsys):
    prepare = pytest.importorskip("mosa.data.prepare")
    from mosa.data import build_dataset

    root = tmp_path / "data"
    prepare.prepare_tasks(root, ["digits"], seed=0, limit=24)
    model, adapter = trained_adapter(backbone_file, tmp_path, "mosa")
    ds = build_dataset("vtab", root, "digits", "test", img_size=32, mean=(0.5,) * 3,
                       std=(0.5,) * 3, train=False, cache=False)  # fmt: skip
    with torch.no_grad():
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        y = torch.tensor(ds.targets)
        want = (model(x).argmax(-1) == y).float().mean().item()
    out = tmp_path / "eval.json"
    rc = main(["eval", str(adapter), "--data", f"vtab:{root}:digits:test",
               "--weights", str(backbone_file), "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["n"] == len(ds) == 24
    assert res["top1"] == pytest.approx(want)
    assert res["merged"] is True and res["method"] == "mosa"
    assert f"top-1 {100 * want:.2f}%" in capsys.readouterr().out


def test_evaluate_checkpoint_returns_what_eval_writes(backbone_file, tmp_path, capsys):
    prepare = pytest.importorskip("mosa.data.prepare")
    root = tmp_path / "data"
    prepare.prepare_tasks(root, ["digits"], seed=0, limit=24)
    _, adapter = trained_adapter(backbone_file, tmp_path, "lora")
    data = f"vtab:{root}:digits:test"
    out = tmp_path / "eval.json"
    rc = main(["eval", str(adapter), "--data", data, "--weights", str(backbone_file),
               "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    results = evaluate_checkpoint(adapter, data=data, weights=str(backbone_file), device="cpu")
    assert results == [json.loads(out.read_text())]
    assert results[0]["n"] == 24 and results[0]["method"] == "lora"
    assert f"top-1 {100 * results[0]['top1']:.2f}% (24 images)" in printed
    with pytest.raises(UsageError) as exc:  # no run config next to the adapter, no data
        evaluate_checkpoint(adapter, weights=str(backbone_file))
    assert "data='KIND:ROOT:TASK[:SPLIT]' or config=..." in str(exc.value)
    assert "--data 'KIND:ROOT:TASK[:SPLIT]' or --config" in usage_message(exc.value)


def test_merge_reads_the_run_config_once(backbone_file, tmp_path, monkeypatch, capsys):
    """A corrupt config.json next to the adapter: the path form of load_for_eval refuses it,
    while mosa merge (which reads the checkpoint once, tolerantly) merges from the adapter."""
    from mosa.checkpoint import CheckpointError
    from mosa.evaluation import find_checkpoint, load_for_eval

    model, adapter = trained_adapter(backbone_file, tmp_path, "lora")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_for_eval(adapter, weights=str(backbone_file))
    given = mosa.engine.config.TrainConfig(backbone="mosa_vit_fmnist")
    load_for_eval(adapter, config=given, weights=str(backbone_file))  # replaces it: not read
    ckpt = find_checkpoint(adapter)
    assert ckpt.run_dir == tmp_path and ckpt.run_config is None
    reads = []
    real = mosa.evaluation.read_adapter_config
    monkeypatch.setattr(
        mosa.evaluation, "read_adapter_config", lambda d: reads.append(d) or real(d)
    )
    view = load_for_eval(ckpt, weights=str(backbone_file))
    assert reads == []  # the Checkpoint's parsed configs are used, not read again
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(view(x), model(x), atol=1e-5, rtol=1e-4)
    out = tmp_path / "merged"
    assert main(["merge", str(adapter), "--out", str(out), "--weights", str(backbone_file)]) == 0
    assert (out / "model.safetensors").is_file()


def test_a_backbone_that_cannot_be_built_is_a_checkpoint_error(backbone_file, tmp_path):
    from mosa.checkpoint import CheckpointError
    from mosa.evaluation import load_for_eval

    _, adapter = trained_adapter(backbone_file, tmp_path, "adapter")
    wrong = tmp_path / "wrong.safetensors"
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(5, 5)}, str(wrong))
    with pytest.raises(CheckpointError, match="cannot build backbone 'mosa_vit_fmnist'"):
        load_for_eval(adapter, weights=str(wrong))
    assert main(["merge", str(adapter), "--out", str(tmp_path / "m"), "--weights", str(wrong)]) == 2


def test_usage_errors_name_python_arguments_and_the_cli_its_options():
    e = UsageError("x: ", Arg("task", None), "; ", Arg("data", "a b"), ", ", Arg("split"))
    assert str(e) == "x: pass task=None; data='a b', split=..."
    assert usage_message(e) == "x: drop --task; --data 'a b', --split"
    e = UsageError("evaluate ", Arg("data", bare=True), " with ", Arg("task", "digits"))
    assert (str(e), usage_message(e)) == (
        "evaluate data with task='digits'",
        "evaluate --data with --task digits",
    )

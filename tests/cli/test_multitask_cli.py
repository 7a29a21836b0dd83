"""``mosa eval`` and ``mosa merge`` on multi-task runs: one adapter, a head per task.

The runs are real but tiny: two offline tasks (``digits``, 10 classes; ``fmnist_scale``, 4)
capped at 32 images per split, a 2-block ViT of width 48 whose random weights sit in a local
file (the run config's ``weights``, so every rebuild gets the same backbone), one epoch.
Accuracies are near chance; what is checked is that the command line reproduces them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from mosa.cli.main import main
from mosa.cli.runs import usage_message
from mosa.data import build_dataset, prepare_tasks
from mosa.engine import DataConfig, OptimConfig, TrainConfig, train
from mosa.evaluation import UsageError, evaluate_checkpoint, load_for_eval
from mosa.state import state_of

TASKS = ("digits", "fmnist_scale")
CLASSES = {"digits": 10, "fmnist_scale": 4}
LIMIT = 32
VIT_KW: dict[str, Any] = {
    "img_size": 32,
    "patch_size": 4,
    "embed_dim": 48,
    "depth": 2,
    "num_heads": 3,
    "global_pool": "avg",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from several threads; on a busy machine they lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vtab")
    prepare_tasks(path, TASKS, seed=0, limit=LIMIT)
    return path


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **VIT_KW)
    path = tmp_path_factory.mktemp("weights") / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _train(root: Path, weights: Path, out: Path, method: dict[str, Any], **kw: Any) -> Path:
    # DataConfig's defaults are the VTAB-1k layout: train800, model selection on val200, test
    data = [DataConfig(root=str(root), task=t) for t in TASKS]
    cfg = TrainConfig(
        backbone="vit_tiny_patch16_224",
        pretrained=False,
        weights=str(weights),
        backbone_kwargs=dict(VIT_KW),
        method=method,
        data=data,
        optim=OptimConfig(lr=1e-2, epochs=1, warmup_epochs=0, batch_size=16),
        seed=0,
        out=str(out),
        device="cpu",
        **kw,
    )
    train(cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def mosa_run(root: Path, backbone_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "multitask"
    method = {"method": "mosa", "bottleneck": 8, "num_experts": 2, "share": "none"}
    return _train(root, backbone_file, out, method)


def _task_summary(run: Path) -> dict[str, Any]:
    tasks: dict[str, Any] = json.loads((run / "summary.json").read_text())["tasks"]
    return tasks


def _images(root: Path, task: str, n: int = 8) -> torch.Tensor:
    ds = build_dataset(
        "vtab", root, task, "test", img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, train=False
    )
    return torch.stack([ds[i][0] for i in range(n)])


def test_eval_one_task_reproduces_the_runs_test_accuracy(
    mosa_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    assert main(["eval", str(mosa_run), "--task", "fmnist_scale", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    want = _task_summary(mosa_run)["fmnist_scale"]
    assert res["task"] == "fmnist_scale" and res["n"] == LIMIT == want["test_size"]
    assert res["top1"] == pytest.approx(want["test_acc"])
    assert res["data"].endswith(":fmnist_scale:test") and res["merged"] is True
    assert f"task fmnist_scale: top-1 {100 * want['test_acc']:.2f}%" in capsys.readouterr().out


def test_eval_without_task_reports_every_task(
    mosa_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    assert main(["eval", str(mosa_run), "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    summary = _task_summary(mosa_run)
    assert [r["task"] for r in res] == list(TASKS)
    for r in res:
        assert r["top1"] == pytest.approx(summary[r["task"]]["test_acc"])
        assert r["data"].endswith(f":{r['task']}:test")
    printed = capsys.readouterr().out
    assert "task digits: top-1" in printed and "task fmnist_scale: top-1" in printed


def test_eval_data_needs_a_task_on_a_multitask_run(
    mosa_run: Path, root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = f"vtab:{root}:digits:val200"
    assert main(["eval", str(mosa_run), "--data", data]) == 2
    err = capsys.readouterr().err
    assert "2 tasks (digits, fmnist_scale)" in err and "--task digits" in err
    assert main(["eval", str(mosa_run), "--task", "digit", "--data", data]) == 2
    assert "did you mean 'digits'" in capsys.readouterr().err
    # digits images through fmnist_scale's 4-class head: refused, not silently wrong
    assert main(["eval", str(mosa_run), "--task", "fmnist_scale", "--data", data]) == 2
    assert "task 'fmnist_scale''s head has 4" in capsys.readouterr().err

    out = tmp_path / "eval.json"
    assert main(["eval", str(mosa_run), "--task", "digits", "--data", data, "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["task"] == "digits" and res["n"] == LIMIT
    assert res["top1"] == pytest.approx(_task_summary(mosa_run)["digits"]["val_acc"])


def test_merge_keeps_every_head_and_reloads_with_equal_outputs(
    mosa_run: Path, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    merged = mosa_run / "merged"
    assert main(["merge", str(mosa_run), "--out", str(merged)]) == 0
    printed = capsys.readouterr().out
    assert "heads for 2 task(s) (digits, fmnist_scale)" in printed
    assert "keeps its adapter modules" in printed
    assert not (merged / "model.safetensors").exists()
    weights = load_file(str(merged / "adapter.safetensors"))
    assert weights["mosa_heads.digits.weight"].shape == (10, 48)
    assert weights["mosa_heads.fmnist_scale.weight"].shape == (4, 48)
    assert json.loads((merged / "adapter_config.json").read_text())["merged"] is True
    for task in TASKS:
        x = _images(root, task)
        reloaded = load_for_eval(merged, task)
        trained = load_for_eval(mosa_run, task, merge=False)
        assert state_of(reloaded.model).merged and reloaded.num_classes == CLASSES[task]
        with torch.no_grad():
            torch.testing.assert_close(reloaded(x), trained(x), rtol=1e-4, atol=1e-5)
    # the merged folder evaluates like the run it came from
    assert main(["eval", str(merged), "--task", "digits"]) == 0
    want = _task_summary(mosa_run)["digits"]["test_acc"]
    assert f"task digits: top-1 {100 * want:.2f}%" in capsys.readouterr().out


def test_merge_task_exports_that_tasks_timm_model(
    root: Path, backbone_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # LoRA folds into the backbone; with a joint head the task's rows become the timm head
    run = _train(root, backbone_file, tmp_path / "lora", {"method": "lora", "rank": 4},
                 joint_head=True)  # fmt: skip
    deploy = tmp_path / "deploy"
    assert main(["merge", str(run), "--out", str(deploy)]) == 0
    assert "pass --task NAME" in capsys.readouterr().out
    assert not (deploy / "model.safetensors").exists()

    assert main(["merge", str(run), "--task", "fmnist_scale", "--out", str(deploy)]) == 0
    assert "plain timm weights of task 'fmnist_scale'" in capsys.readouterr().out
    config = json.loads((deploy / "model_config.json").read_text())
    assert (config["task"], config["num_classes"]) == ("fmnist_scale", 4)
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, **VIT_KW)
    plain.load_state_dict(load_file(str(deploy / "model.safetensors")), strict=True)
    x = _images(root, "fmnist_scale")
    trained = load_for_eval(run, "fmnist_scale", merge=False)
    assert trained.joint and trained.label_offset == 10
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), trained(x), rtol=1e-4, atol=1e-5)
    assert main(["merge", str(run), "--task", "cifar", "--out", str(deploy)]) == 2
    assert "no head for task 'cifar'" in capsys.readouterr().err


def test_evaluate_checkpoint_matches_mosa_eval_on_every_task(
    mosa_run: Path, root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    assert main(["eval", str(mosa_run), "--device", "cpu", "--out", str(out)]) == 0
    results = evaluate_checkpoint(mosa_run, device="cpu")
    assert results == json.loads(out.read_text())
    summary = _task_summary(mosa_run)
    assert {r["task"]: r["top1"] for r in results} == pytest.approx(
        {t: summary[t]["test_acc"] for t in TASKS}
    )
    # one head per task: data without a task is ambiguous, said in Python's and the CLI's terms
    with pytest.raises(UsageError) as exc:
        evaluate_checkpoint(mosa_run, data=f"vtab:{root}:digits:val200")
    assert "evaluate data with, e.g. task='digits'" in str(exc.value)
    assert "evaluate --data with, e.g. --task digits" in usage_message(exc.value)

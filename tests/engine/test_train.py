"""End-to-end runs of ``mosa.engine.train`` on a tiny ViT and toy data (a few seconds each)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_helpers import make_config, tiny_model, toy_datasets
from safetensors.torch import load_file

import mosa
from mosa.engine import (
    ClassCountError,
    ResumeError,
    TrainConfig,
    TrainingDivergedError,
    TrainingError,
    lr_at,
    train,
)
from mosa.engine.data import LabelledSubset
from mosa.engine.errors import WriteFailedError
from mosa.state import state_of

METRIC_KEYS = {
    "epoch": int,
    "global_step": int,
    "train_loss": float,
    "train_ce": float,
    "train_acc": float,
    "lr": float,
    "epoch_seconds": float,
    "train_seconds": float,
    "images_per_s": float,
    "train_images": int,
}


def _metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _adapter(out: Path, sub: str = "adapter") -> dict[str, torch.Tensor]:
    return load_file(str(out / sub / "adapter.safetensors"))


def test_three_epochs_learn_the_toy_task_and_write_every_output(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = make_config(out)
    model = tiny_model()
    summary = train(cfg, model=model, datasets=toy_datasets(), progress=False)

    # metrics.jsonl: one record per epoch, typed fields, the loss goes down
    records = _metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        for key, typ in METRIC_KEYS.items():
            assert isinstance(r[key], typ), (key, r[key])
        assert isinstance(r["val_acc"], float) and 0.0 <= r["val_acc"] <= 1.0
        assert isinstance(r["train_consistency"], float)  # MoSA trains with consistency on
        assert r["train_deep_consistency"] is None
        assert r["train_images"] == 64
    assert records[-1]["train_loss"] < 0.7 * records[0]["train_loss"]
    assert records[-1]["train_acc"] > records[0]["train_acc"]
    # lr: the rate of each epoch's last update (4 steps per epoch, 1 warm-up epoch)
    for r in records:
        expected = lr_at(
            r["global_step"] - 1, base_lr=1e-2, total_steps=12, warmup_steps=4, min_lr=0
        )
        assert r["lr"] == pytest.approx(expected)

    # summary.json == the returned summary, with the documented fields
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["status"] == "completed"
    assert summary["val_acc"] == records[-1]["val_acc"]  # the final model, not the best epoch
    assert summary["best_val_epoch"] in (1, 2, 3)
    assert summary["test_acc"] >= 0.75
    assert summary["params"]["trainable"] < summary["params"]["total"]
    assert summary["params"]["method"] == "mosa"
    assert summary["epochs"] == 3 and summary["global_steps"] == 12
    assert summary["images_per_s"] > 0 and summary["wall_time_s"] > 0
    assert summary["peak_memory_bytes"] > 0 and summary["peak_memory_kind"] == "cpu_max_rss"
    assert set(summary["versions"]) >= {"torch", "timm", "mosa"}
    assert summary["seed"] == 7 and summary["host"]["device"] == "cpu"
    assert summary["resumed_from_epoch"] is None
    assert summary["tasks"]["toy"]["num_classes"] == 4

    # config.json: the resolved config, loadable as a TrainConfig
    saved = json.loads((out / "config.json").read_text())
    resolved = TrainConfig.from_dict(saved)
    assert resolved.data[0].img_size == 32  # from backbone_kwargs
    assert resolved.data[0].mean == (0.5, 0.5, 0.5)  # from the backbone's pretrained_cfg
    assert resolved.optim.consistency == 1.0  # the MoSA default, made explicit
    assert saved == summary["config"]

    # the adapter checkpoint is the unmerged trained model, and it reproduces the test accuracy
    fresh = mosa.load_adapter(tiny_model(), out / "adapter")
    assert not state_of(fresh).merged
    model.eval()
    fresh.eval()
    x = toy_datasets()["test"].tensors[0]
    torch.testing.assert_close(fresh(x), model(x))
    y = toy_datasets()["test"].tensors[1]
    assert (fresh(x).argmax(-1) == y).float().mean().item() == pytest.approx(summary["test_acc"])
    merged = mosa.merge(fresh)
    torch.testing.assert_close(merged(x), model(x), rtol=1e-4, atol=1e-5)

    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = json.loads((out / "last" / "state.json").read_text())
    assert state["epoch"] == 3 and state["global_step"] == 12
    assert not list(out.glob(".last*"))  # no temporary checkpoint folder left behind


def test_val_contained_in_train_is_not_reported(tmp_path: Path) -> None:
    data = toy_datasets(n_test=0)
    data["val"] = LabelledSubset(data["train"], range(0, 64, 4))  # same images as training
    cfg = make_config(tmp_path / "run", epochs=1, warmup_epochs=0, amp="bf16")
    summary = train(cfg, model=tiny_model(), datasets=data, progress=False)
    assert summary["host"]["amp"] == "off"  # bf16 autocast is for CUDA only
    assert summary["val_acc"] is None and summary["best_val_epoch"] is None
    assert "contained in the train split" in summary["val_note"]
    assert _metrics(tmp_path / "run")[0]["val_acc"] is None
    assert summary["test_acc"] is None


def test_class_count_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "run", epochs=1)
    with pytest.raises(ClassCountError, match="4 classes but the model's classifier head has 5"):
        train(cfg, model=tiny_model(num_classes=5), datasets=toy_datasets(), progress=False)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    model = tiny_model()
    calls = {"n": 0}

    def poison(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        calls["n"] += 1
        # 4 steps per epoch, one forward each (both consistency passes run as one doubled
        # batch): call 6 is epoch 2, step 1 (steps count from 0)
        return output * float("nan") if calls["n"] == 6 else None

    model.head.register_forward_hook(poison)
    with pytest.raises(TrainingDivergedError, match="epoch 2, step 1") as err:
        train(make_config(out), model=model, datasets=toy_datasets(), progress=False)
    assert "lower optim.lr" in str(err.value)
    assert err.value.epoch == 2 and err.value.global_step == 5
    state = json.loads((out / "last" / "state.json").read_text())
    assert state["epoch"] == 1 and state["global_step"] == 4
    assert len(_metrics(out)) == 1 and not (out / "summary.json").exists()
    # the kept checkpoint is complete and loads
    weights = _adapter(out, "last/adapter")
    assert all(torch.isfinite(t.float()).all() for t in weights.values())
    mosa.load_adapter(tiny_model(), out / "last" / "adapter")


def test_finite_loss_with_a_non_finite_gradient_stops(tmp_path: Path) -> None:
    out = tmp_path / "run"
    model = tiny_model()
    calls = {"n": 0}

    def poison_grad(grad: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == 7 else grad  # epoch 2, step 2

    model.head.weight.register_hook(poison_grad)
    with pytest.raises(TrainingDivergedError) as err:
        train(make_config(out), model=model, datasets=toy_datasets(), progress=False)
    msg = str(err.value)
    assert "non-finite grad norm (inf) at epoch 2, step 2" in msg
    assert f"{out}/last is untouched" in msg and "lower optim.lr" in msg
    assert json.loads((out / "last" / "state.json").read_text())["epoch"] == 1
    assert not (out / "summary.json").exists()


def test_non_finite_weights_at_epoch_end_are_never_checkpointed(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from mosa.engine.optim import SparseAdamW

    out = tmp_path / "run"
    model = tiny_model()
    real_step = SparseAdamW.step
    calls = {"n": 0}

    def step_then_poison(self: SparseAdamW, closure: Any = None) -> Any:
        result = real_step(self, closure)
        calls["n"] += 1
        if calls["n"] == 8:  # the last step of epoch 2: no later step would see it
            with torch.no_grad():
                model.head.bias.fill_(float("nan"))
        return result

    monkeypatch.setattr(SparseAdamW, "step", step_then_poison)
    with pytest.raises(TrainingDivergedError) as err:
        train(make_config(out), model=model, datasets=toy_datasets(), progress=False)
    assert err.value.quantity == "weights" and err.value.epoch == 2
    assert "non-finite weights (nan) at epoch 2" in str(err.value)
    assert json.loads((out / "last" / "state.json").read_text())["epoch"] == 1
    weights = _adapter(out, "last/adapter")
    assert all(torch.isfinite(t.float()).all() for t in weights.values())


def test_non_finite_val_loss_stops_and_reports_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    model = tiny_model()
    epochs_seen = {"train_calls": 0}

    def poison_eval(module: torch.nn.Module, args: Any, output: torch.Tensor) -> Any:
        if module.training:
            epochs_seen["train_calls"] += 1
            return None
        # eval after epoch 2 (4 training forwards per epoch): logits go non-finite
        return output * float("nan") if epochs_seen["train_calls"] > 4 else None

    model.head.register_forward_hook(poison_eval)
    with pytest.raises(TrainingDivergedError) as err:
        train(make_config(out), model=model, datasets=toy_datasets(), progress=False)
    assert err.value.quantity == "val loss" and err.value.epoch == 2
    assert "non-finite val loss (nan) at epoch 2" in str(err.value)
    assert json.loads((out / "last" / "state.json").read_text())["epoch"] == 1
    assert len(_metrics(out)) == 1 and not (out / "summary.json").exists()


def test_written_files_get_the_umask_mode(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        train(make_config(out, epochs=1, warmup_epochs=0), model=tiny_model(),
              datasets=toy_datasets(), progress=False)  # fmt: skip
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 5
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o644}, modes


def test_huge_lr_diverges_instead_of_training_on(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "run", lr=1e30, warmup_epochs=0, method={"method": "linear"})
    with pytest.raises(TrainingDivergedError):
        train(cfg, model=tiny_model(), datasets=toy_datasets(), progress=False)


class _Crash(Exception):
    pass


def _crash_after(epoch: int) -> Any:
    def callback(record: dict[str, Any]) -> None:
        if record["epoch"] == epoch:
            raise _Crash(f"simulated crash after epoch {epoch}")

    return callback


def test_resume_ends_exactly_like_an_uninterrupted_run(tmp_path: Path) -> None:
    # dropout (global torch RNG), consistency (routing generators), sparse AdamW state and
    # the schedule must all be restored for this to hold
    straight = train(
        make_config(tmp_path / "a"), model=tiny_model(), datasets=toy_datasets(), progress=False
    )
    cfg = make_config(tmp_path / "b")
    with pytest.raises(_Crash):
        train(
            cfg,
            model=tiny_model(),
            datasets=toy_datasets(),
            progress=False,
            on_epoch_end=_crash_after(2),
        )
    assert json.loads((tmp_path / "b" / "last" / "state.json").read_text())["epoch"] == 2
    resumed = train(cfg, model=tiny_model(), datasets=toy_datasets(), resume=True, progress=False)

    a, b = _adapter(tmp_path / "a"), _adapter(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    keys = ("epoch", "global_step", "train_loss", "train_ce", "train_acc", "val_acc", "lr")
    strip = [{k: r[k] for k in keys} for r in _metrics(tmp_path / "a")]
    assert strip == [{k: r[k] for k in keys} for r in _metrics(tmp_path / "b")]
    assert resumed["test_acc"] == straight["test_acc"]
    assert resumed["val_acc"] == straight["val_acc"]
    assert resumed["resumed_from_epoch"] == 2


def test_resume_refuses_missing_checkpoints_and_changed_configs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ResumeError, match="nothing to resume"):
        train(make_config(out), model=tiny_model(), datasets=toy_datasets(), resume=True)
    # checkpoint_every=2: a crash after epoch 1 leaves nothing to resume from
    with pytest.raises(_Crash):
        train(
            make_config(out, checkpoint_every=2),
            model=tiny_model(),
            datasets=toy_datasets(),
            progress=False,
            on_epoch_end=_crash_after(1),
        )
    assert not (out / "last").exists()
    with pytest.raises(ResumeError, match="nothing to resume"):
        train(
            make_config(out, checkpoint_every=2),
            model=tiny_model(),
            datasets=toy_datasets(),
            resume=True,
        )
    # a fresh start in a folder that holds a checkpoint is refused, as is a changed config
    with pytest.raises(_Crash):
        train(
            make_config(tmp_path / "c"),
            model=tiny_model(),
            datasets=toy_datasets(n_val=0, n_test=0),
            progress=False,
            on_epoch_end=_crash_after(1),
        )
    with pytest.raises(TrainingError, match="already holds a run"):
        train(make_config(tmp_path / "c"), model=tiny_model(), datasets=toy_datasets())
    with pytest.raises(ResumeError, match=r"optim\.lr: 0\.01 -> 0\.02"):
        train(
            make_config(tmp_path / "c", lr=2e-2),
            model=tiny_model(),
            datasets=toy_datasets(n_val=0, n_test=0),
            resume=True,
        )


@pytest.mark.parametrize("method", ["linear", "full", "adapter", "lora", "mosa_lora"])
def test_every_method_trains(tmp_path: Path, method: str) -> None:
    cfg = make_config(tmp_path / method, method={"method": method}, epochs=2, warmup_epochs=0)
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    summary = train(cfg, model=model, datasets=toy_datasets(n_val=0, n_test=0), progress=False)
    params = summary["params"]
    assert params["method"] == method
    if method == "full":
        assert params["trainable"] == params["total"]
    else:
        assert params["trainable"] < params["total"]
    records = _metrics(tmp_path / method)
    # consistency is MoSA's default only
    assert (records[0]["train_consistency"] is None) == (method != "mosa_lora")
    # the backbone's own parameters: frozen ones never move, the head always does
    moved = {
        n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])
    }
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "head.weight" in moved and not moved & frozen
    if method == "linear":
        assert moved == {"head.weight", "head.bias"}
    if method == "full":
        assert len(moved) > 20


def test_deep_consistency_and_progress_bar(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    cfg = make_config(
        tmp_path / "run", epochs=1, warmup_epochs=0, deep_consistency=0.5, deep_consistency_blocks=2
    )
    train(cfg, model=tiny_model(), datasets=toy_datasets(n_val=0, n_test=0), progress=True)
    record = _metrics(tmp_path / "run")[0]
    assert record["train_deep_consistency"] > 0  # the two passes picked different experts
    total = (
        record["train_ce"] + record["train_consistency"] + 0.5 * record["train_deep_consistency"]
    )
    assert record["train_loss"] == pytest.approx(total, rel=1e-5)
    err = capsys.readouterr().err
    assert "train toy" in err and "loss=" in err and "acc=" in err
    with pytest.raises(ValueError, match="deep_consistency_blocks=3"):
        cfg = make_config(tmp_path / "b", epochs=1, deep_consistency=1.0, deep_consistency_blocks=3)
        train(cfg, model=tiny_model(), datasets=toy_datasets(), progress=False)


def _write_folder_task(root: Path) -> None:
    """root/toy/{train,val,test}/c<k>/*.png: the toy task as image files."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        for c in range(4):
            d = root / "toy" / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                img = torch.rand(32, 32, 3, generator=g) * 0.5 + 0.25
                img[..., c % 3] += 0.25 if c < 3 else -0.25
                arr = (img.clamp(0, 1) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(d / f"{i}.png")


def test_config_only_run_builds_backbone_and_data(tmp_path: Path) -> None:
    _write_folder_task(tmp_path / "data")
    cfg = make_config(tmp_path / "run", epochs=1, warmup_epochs=0, batch_size=8)
    cfg.data[0].root = str(tmp_path / "data")
    cfg.data[0].val_split, cfg.data[0].test_split, cfg.data[0].shots = "val", "test", 4
    summary = train(cfg, progress=False)  # backbone from timm, data from mosa.data
    task = summary["tasks"]["toy"]
    assert (task["train_size"], task["val_size"], task["test_size"]) == (16, 8, 12)
    assert task["num_classes"] == 4 and summary["val_acc"] is not None
    resolved = summary["config"]["data"][0]
    assert resolved["img_size"] == 32 and resolved["mean"] == [0.5, 0.5, 0.5]
    # the data's class count decides the head; a wrong one is refused before training
    with pytest.raises(ClassCountError):
        train(
            make_config(tmp_path / "run2", epochs=1),
            model=tiny_model(num_classes=3),
            datasets=toy_datasets(),
        )


def test_a_crash_while_checkpointing_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: Any
) -> None:
    import mosa.engine.state as state_mod

    out = tmp_path / "run"
    real = state_mod.atomic_write_json
    calls = {"n": 0}

    def failing(path: Path, obj: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the state.json of the epoch-2 checkpoint
            raise OSError("disk full (simulated)")
        real(path, obj)

    monkeypatch.setattr(state_mod, "atomic_write_json", failing)
    with pytest.raises(WriteFailedError, match="checkpoint .*disk full"):
        train(make_config(out), model=tiny_model(), datasets=toy_datasets(), progress=False)
    assert json.loads((out / "last" / "state.json").read_text())["epoch"] == 1
    assert not list(out.glob(".last*"))  # the half-written folder was removed
    monkeypatch.setattr(state_mod, "atomic_write_json", real)
    # a crash between the two renames leaves only .last.old: resuming still finds it
    (out / "last").rename(out / ".last.old")
    summary = train(
        make_config(out), model=tiny_model(), datasets=toy_datasets(), resume=True, progress=False
    )
    assert summary["resumed_from_epoch"] == 1 and summary["epochs"] == 3
    assert json.loads((out / "last" / "state.json").read_text())["epoch"] == 3
    assert not (out / ".last.old").exists()


@pytest.mark.parametrize("mode", ["local", "reference"])
def test_trainer_updates_experts_by_the_optimizer_mode(
    tmp_path: Path, monkeypatch: Any, mode: str
) -> None:
    """Through ``mosa.engine.train``: under ``local`` an expert's entries change only in steps
    where it was picked; under ``reference`` every expert picked before keeps moving."""
    from mosa.adapters.sparse import MoSALinear
    from mosa.engine.optim import SparseAdamW

    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    real_step = SparseAdamW.step

    def recording_step(self: SparseAdamW, closure: Any = None) -> Any:
        m = next(mod for mod in model.modules() if isinstance(mod, MoSALinear))
        before = m.weight.detach().clone()
        picked = torch.zeros(m.num_experts, dtype=torch.bool)
        mask = self._active.get(id(m.weight))
        if mask is not None:  # the trainer told the optimizer which experts took part
            picked[m.owner.long()[mask].unique()] = True
        out = real_step(self, closure)
        steps.append((before, m.weight.detach().clone(), picked, m.owner.long()))
        return out

    monkeypatch.setattr(SparseAdamW, "step", recording_step)
    model = tiny_model()
    cfg = make_config(
        tmp_path / "run",
        epochs=2,
        consistency=0.0,  # one pick per step per projection
        expert_updates=mode,
        method={"method": "mosa", "bottleneck": 8, "num_experts": 4, "dropout": 0.0},
    )
    train(cfg, model=model, datasets=toy_datasets(), progress=False)
    assert len(steps) == 8
    ever = torch.zeros(4, dtype=torch.bool)
    kept_moving = 0
    for before, after, picked, owner in steps:
        assert int(picked.sum()) == 1  # the trainer passed the step's pick to the optimizer
        changed = after != before
        for k in range(4):
            entries = changed[owner == k]
            if picked[k]:
                assert entries.any()
            elif mode == "local" or not ever[k]:
                assert not entries.any(), (mode, k)  # bit-unchanged
            else:
                kept_moving += int(entries.any())
        ever |= picked
    if mode == "reference":
        assert kept_moving > 0  # momentum moved experts that were not picked in that step

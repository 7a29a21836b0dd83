"""``eval.test_every_epoch`` records the test split after each epoch and chooses nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_helpers import make_config, tiny_model, toy_datasets
from safetensors.torch import load_file

from mosa.config import ConfigError
from mosa.engine import TrainConfig, train
from mosa.engine.trainer import _Run
from mosa.results.aggregate import build_table, collect_runs

# stochastic routing, dropout and the consistency pass: any RNG draw the test evaluation
# took from training would change the adapter
METHOD = {"method": "mosa", "bottleneck": 8, "num_experts": 4, "routing": "sample"}
LRS = (1e-3, 3e-2)


def _run(out: Path, lr: float, on: bool) -> dict[str, Any]:
    cfg = make_config(out, method=METHOD, lr=lr)
    cfg.eval.test_every_epoch = on
    return train(cfg, model=tiny_model(), datasets=toy_datasets(), progress=False)


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / "adapter.safetensors"))


def _metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _flip_epoch_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-epoch test figures that say the opposite of val: 1.0 where the run's lr is the
    smallest, 0.0 otherwise, so anything that chose by them would pick another lr or epoch."""
    real = _Run._record_test

    def flipped(self: _Run, record: dict[str, Any]) -> None:
        real(self, record)
        if "test_acc" in record:
            record["test_acc"] = 1.0 if self.parts.config.optim.lr == min(LRS) else 0.0

    monkeypatch.setattr(_Run, "_record_test", flipped)


def test_per_epoch_test_is_recorded_and_changes_no_choice_or_weight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    off = {lr: _run(tmp_path / "off" / f"lr{lr}" / "seed7", lr, on=False) for lr in LRS}
    _flip_epoch_tests(monkeypatch)
    on = {lr: _run(tmp_path / "on" / f"lr{lr}" / "seed7", lr, on=True) for lr in LRS}

    for lr in LRS:
        a, b = tmp_path / "off" / f"lr{lr}" / "seed7", tmp_path / "on" / f"lr{lr}" / "seed7"
        assert _adapter(a).keys() == _adapter(b).keys()
        for k, v in _adapter(a).items():
            assert torch.equal(v, _adapter(b)[k]), (lr, k)
        for key in ("val_acc", "test_acc", "best_val_epoch", "final_train_loss"):
            assert on[lr][key] == off[lr][key], (lr, key)
        assert "test_by_epoch" not in off[lr]
        assert all("test_acc" not in r for r in _metrics(a))
        # the record: one figure per epoch, in metrics.jsonl and the summary
        per_epoch = [r["test_acc"] for r in _metrics(b)]
        assert on[lr]["test_by_epoch"] == per_epoch and len(per_epoch) == 3
        assert all(r["tasks"]["toy"]["test_acc"] is not None for r in _metrics(b))
        assert on[lr]["test_by_epoch_seconds"] > 0

    # the learning rate a sweep chooses is val's, with or without the record
    chosen = {
        side: next(iter(build_table(collect_runs(tmp_path / side)).cells.values())).lr
        for side in ("off", "on")
    }
    assert chosen["off"] != min(LRS)  # else the flipped figures could not mislead a choice
    assert chosen["on"] == chosen["off"]


def test_the_option_is_typed_and_off_by_default() -> None:
    with pytest.raises(ConfigError, match="eval.test_every_epoch"):
        TrainConfig(eval={"test_every_epoch": "yes"})
    with pytest.raises(ConfigError):
        TrainConfig(eval={"test_each_epoch": True})
    assert TrainConfig().eval.test_every_epoch is False

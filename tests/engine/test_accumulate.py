"""Gradient accumulation: k micro-batches of B/k make the same optimizer steps as one batch of B."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_helpers import make_config, tiny_model, toy_datasets
from safetensors.torch import load_file

import mosa
from mosa import ConfigError
from mosa.engine import train

BATCH = 64
STEPS_PER_EPOCH = 3
EPOCHS = 2

# no dropout: a batch and its micro-batches draw other masks from the global RNG
METHODS = {
    "adapter": {"method": "adapter", "bottleneck": 8, "dropout": 0.0},
    "mosa_batch_routing": {"method": "mosa", "bottleneck": 8, "num_experts": 4, "dropout": 0.0},
    "mosa_sample_routing": {
        "method": "mosa",
        "bottleneck": 8,
        "num_experts": 4,
        "dropout": 0.0,
        "routing": "sample",
    },
    "mosa_lora": {"method": "mosa_lora", "rank": 4, "num_experts": 2, "dropout": 0.0},
}


def _float64_data() -> dict[str, Any]:
    data = toy_datasets(n_train=BATCH * STEPS_PER_EPOCH)
    for ds in data.values():
        ds.tensors = (ds.tensors[0].double(), ds.tensors[1])
    return data


def _run(out: Path, method: dict[str, Any], accumulate: int, **optim: Any) -> dict[str, Any]:
    cfg = make_config(
        out,
        method=method,
        epochs=EPOCHS,
        batch_size=BATCH,
        accumulate=accumulate,
        lr=1e-3,
        **optim,
    )
    return train(cfg, model=tiny_model().double(), datasets=_float64_data(), progress=False)


def _metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# consistency on: two passes per micro-batch, each with its share of both passes' picks
CASES = [
    ("adapter", 0.0),
    ("mosa_batch_routing", 0.0),
    ("mosa_batch_routing", 1.0),
    ("mosa_sample_routing", 1.0),
    ("mosa_lora", 1.0),
]


@pytest.mark.parametrize(("method", "consistency"), CASES)
def test_four_micro_batches_make_the_same_steps_as_one_batch(
    tmp_path: Path, method: str, consistency: float
) -> None:
    whole = _run(tmp_path / "whole", METHODS[method], 1, consistency=consistency)
    micro = _run(tmp_path / "micro", METHODS[method], 4, consistency=consistency)

    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "micro" / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    trained = 0
    for k in a:
        assert a[k].dtype in (torch.float64, torch.uint8), k  # uint8: expert partitions
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
        trained += int(a[k].abs().sum() > 0)
    assert trained > 0
    # the schedule counts optimizer steps, the throughput counts images
    for ra, rb in zip(_metrics(tmp_path / "whole"), _metrics(tmp_path / "micro"), strict=True):
        assert rb["global_step"] == ra["global_step"] == ra["epoch"] * STEPS_PER_EPOCH
        assert rb["lr"] == ra["lr"]
        assert rb["train_images"] == ra["train_images"] == BATCH * STEPS_PER_EPOCH
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-6)  # float32 sums
        assert rb["train_acc"] == ra["train_acc"]
    assert micro["test_acc"] == whole["test_acc"]


def test_shared_routes_hand_each_micro_batch_its_own_share_of_the_picks() -> None:
    model = mosa.inject(
        tiny_model(), mosa.MethodConfig(method="mosa", bottleneck=8, routing="sample")
    )
    model.train()
    layer = next(m for m in model.modules() if isinstance(m, mosa.model.MoSALinear))
    x = torch.randn(6, 3, 32, 32)
    seen: list[torch.Tensor] = []
    layer.register_forward_pre_hook(lambda m, args: seen.append(m.routes.clone()))
    with mosa.shared_routes(model, 6, passes=2) as routes:
        drawn = routes.picks[layer].view(2, 6)
        routes.forward(x[:4])
        routes.forward(x[4:])
        with pytest.raises(ValueError, match="more than the 6 images"):
            routes.forward(x[:1])
    assert torch.equal(seen[0], drawn[:, :4].reshape(-1))
    assert torch.equal(seen[1], drawn[:, 4:].reshape(-1))
    assert layer.routes is None


def test_accumulate_is_checked_and_may_change_on_resume(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="optim.accumulate"):
        make_config(tmp_path, accumulate=0)
    with pytest.raises(ConfigError, match="optim.accumulate"):
        make_config(tmp_path, batch_size=4, accumulate=8)
    cfg = make_config(tmp_path / "run", epochs=2)
    train(cfg, model=tiny_model(), datasets=toy_datasets(), progress=False)
    moved = make_config(tmp_path / "run", epochs=2, accumulate=2)
    summary = train(moved, model=tiny_model(), datasets=toy_datasets(), resume=True, progress=False)
    assert summary["epochs"] == 2

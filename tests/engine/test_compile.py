"""MoSA under torch.compile: one graph, no breaks, no recompiles, and the eager run's picks."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo
from engine_helpers import make_config, tiny_model, toy_datasets
from safetensors.torch import load_file
from torch._dynamo.utils import counters

import mosa
from mosa import MethodConfig
from mosa.engine import TrainingDivergedError, train

BATCH = 8


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _mosa_model(method: str, routing: str) -> torch.nn.Module:
    cfg = MethodConfig(method=method, routing=routing, bottleneck=4, dropout=0.1, seed=5)
    return mosa.inject(tiny_model(), cfg).train()


def _step(model: torch.nn.Module, forward: Any, x: torch.Tensor, twice: bool) -> torch.Tensor:
    """One training forward: the engine's draw-then-forward, or the consistency pair."""
    if twice:
        a, b = mosa.forward_twice(model, x, forward)
        return a.logsumexp(-1).mean() + (a - b).pow(2).mean()
    mosa.draw_routes(model, x.shape[0])
    return forward(x).logsumexp(-1).mean()


@pytest.mark.parametrize("twice", [False, True], ids=["single", "forward_twice"])
@pytest.mark.parametrize("routing", ["batch", "sample"])
@pytest.mark.parametrize("method", ["mosa", "mosa_lora"])
def test_training_forward_is_one_graph_without_breaks_or_recompiles(
    method: str, routing: str, twice: bool
) -> None:
    model = _mosa_model(method, routing)
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(BATCH, 3, 32, 32)
    _step(model, compiled, x, twice).backward()
    with torch._dynamo.config.patch(error_on_recompile=True):
        picks = set()
        for _ in range(5):  # new picks every step, the same graph
            _step(model, compiled, x, twice).backward()
            picks.add(str(next(mosa.model.mosa_modules(model)).last_expert))
    assert len(picks) > 1
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("routing", ["batch", "sample"])
def test_compiled_training_picks_and_losses_match_eager(routing: str) -> None:
    eager = _mosa_model("mosa", routing)
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, backend="aot_eager")
    runs: dict[str, tuple[list[float], list[str]]] = {}
    for name, model, forward in (("eager", eager, eager), ("compiled", twin, compiled)):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        torch.manual_seed(0)  # the same dropout masks in both runs
        x = torch.randn(BATCH, 3, 32, 32)
        losses, picks = [], []
        for _ in range(4):
            loss = _step(model, forward, x, twice=True)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
            picks.append(str([m.last_expert for m in mosa.model.mosa_modules(model)]))
        runs[name] = losses, picks
    assert runs["compiled"][1] == runs["eager"][1]
    assert runs["compiled"][0] == pytest.approx(runs["eager"][0], rel=1e-4)
    assert len(set(runs["eager"][0])) == 4  # training moved the loss


def _compiled(cfg: Any) -> Any:
    return dataclasses.replace(cfg, compile=True, compile_backend="aot_eager")


def test_engine_compile_trains_like_eager_and_resumes(tmp_path: Path) -> None:
    eager = train(
        make_config(tmp_path / "eager"), model=tiny_model(), datasets=toy_datasets(), progress=False
    )
    cfg = _compiled(make_config(tmp_path / "compiled"))
    compiled = train(cfg, model=tiny_model(), datasets=toy_datasets(), progress=False)
    assert compiled["test_acc"] == eager["test_acc"]
    a = load_file(str(tmp_path / "eager" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "compiled" / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    # a compiled run killed after epoch 2 resumes to the uninterrupted compiled run's end
    cut = _compiled(make_config(tmp_path / "cut"))
    with pytest.raises(_Crash):
        train(cut, model=tiny_model(), datasets=toy_datasets(), progress=False, on_epoch_end=_crash)
    resumed = train(cut, model=tiny_model(), datasets=toy_datasets(), resume=True, progress=False)
    assert resumed["resumed_from_epoch"] == 2
    c = load_file(str(tmp_path / "cut" / "adapter" / "adapter.safetensors"))
    for k in b:
        assert torch.equal(c[k], b[k]), k


class _Crash(Exception):
    pass


def _crash(record: dict[str, Any]) -> None:
    if record["epoch"] == 2:
        raise _Crash("simulated crash after epoch 2")


def test_engine_compile_stops_on_divergence(tmp_path: Path) -> None:
    cfg = _compiled(make_config(tmp_path / "run", lr=1e30, warmup_epochs=0))
    with pytest.raises(TrainingDivergedError):
        train(cfg, model=tiny_model(), datasets=toy_datasets(), progress=False)


def test_eager_checkpoints_resume_compiled_including_ones_written_before_compile_existed(
    tmp_path: Path,
) -> None:
    cfg = make_config(tmp_path / "run")
    with pytest.raises(_Crash):
        train(cfg, model=tiny_model(), datasets=toy_datasets(), progress=False, on_epoch_end=_crash)
    state = tmp_path / "run" / "last" / "state.json"
    doc = json.loads(state.read_text())
    for key in ("compile", "compile_backend"):  # as written before these keys existed
        del doc["config"][key]
    state.write_text(json.dumps(doc))
    resumed = train(
        _compiled(cfg), model=tiny_model(), datasets=toy_datasets(), resume=True, progress=False
    )
    assert resumed["resumed_from_epoch"] == 2

"""Out of memory inside a training step: one line with the batch, the device's memory and
the remedies, exit code 2, and the last checkpoint kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_helpers import make_config, tiny_model, toy_datasets

from mosa.cli.main import main
from mosa.engine import train
from mosa.engine.errors import OutOfMemoryError
from mosa.engine.trainer import _Run

CPU_OOM = "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"


def _oom_at(monkeypatch: pytest.MonkeyPatch, global_step: int, error: Exception) -> None:
    real = _Run._step

    def step(self: _Run, *args: Any) -> dict[str, float]:
        if args[-1] == global_step:
            raise error
        return real(self, *args)

    monkeypatch.setattr(_Run, "_step", step)


@pytest.mark.parametrize(
    "error", [torch.OutOfMemoryError("CUDA out of memory."), RuntimeError(CPU_OOM)]
)
def test_out_of_memory_in_a_step_names_batch_memory_and_remedy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    out = tmp_path / "run"
    _oom_at(monkeypatch, 6, error)  # epoch 2, after epoch 1's checkpoint
    with pytest.raises(OutOfMemoryError) as err:
        train(make_config(out), model=tiny_model(), datasets=toy_datasets(), progress=False)
    msg = str(err.value)
    assert msg.startswith("out of memory in a training step: batch 16 per process on cpu (")
    assert "GiB host memory" in msg and "optim.batch_size" in msg and "bf16" in msg
    assert "Raise optim.accumulate (now 1)" in msg
    assert f"the last checkpoint {out}/last (epoch 1) is kept" in msg
    assert json.loads((out / "last" / "state.json").read_text())["epoch"] == 1


def test_other_runtime_errors_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _oom_at(monkeypatch, 0, RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train(make_config(tmp_path / "r"), model=tiny_model(), datasets=toy_datasets(),
              progress=False)  # fmt: skip


def test_the_command_line_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    root = tmp_path / "data"
    assert main(["data", "prepare", "--tasks", "digits", "--out", str(root), "--limit", "64"]) == 0
    _oom_at(monkeypatch, 0, torch.OutOfMemoryError("CUDA out of memory."))
    capsys.readouterr()
    argv = ["train", "--out", str(tmp_path / "run"), "method=adapter", f"data.root={root}",
            "optim.epochs=1", "optim.warmup_epochs=0", "device=cpu"]  # fmt: skip
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("mosa: error")]
    assert len(err) == 1 and "out of memory in a training step" in err[0]
    assert "no checkpoint was written yet" in err[0]

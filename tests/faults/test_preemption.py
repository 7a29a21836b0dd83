"""SIGTERM / SIGUSR1 mid-epoch: one line, a documented exit code, and an exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_helpers import make_config, tiny_model, toy_datasets
from safetensors.torch import load_file

from mosa.cli.main import main
from mosa.engine import train
from mosa.engine.preempt import PREEMPTED_EXIT_CODE, RunPreempted
from mosa.engine.trainer import _Run

# stochastic routing, dropout, consistency and the reference optimizer's sparse state: the
# resumed run must restore every one of them at the step it stopped
METHOD = {"method": "mosa", "bottleneck": 8, "num_experts": 4, "routing": "sample"}


def _signal_at(monkeypatch: pytest.MonkeyPatch, global_step: int, signum: int) -> None:
    """Send ``signum`` to this process while it trains step ``global_step`` (0-based)."""
    real = _Run._step

    def step(self: _Run, *args: Any) -> dict[str, float]:
        out = real(self, *args)
        if args[-1] == global_step:
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(_Run, "_step", step)


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / "adapter.safetensors"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_mid_epoch_resumes_to_the_same_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    straight = train(
        make_config(tmp_path / "a", method=METHOD), model=tiny_model(), datasets=toy_datasets(),
        progress=False,
    )  # fmt: skip
    cfg = make_config(tmp_path / "b", method=METHOD)
    with monkeypatch.context() as m:
        _signal_at(m, 5, signum)  # epoch 2 (4 steps per epoch), its second step
        with pytest.raises(RunPreempted) as stop:
            train(cfg, model=tiny_model(), datasets=toy_datasets(), progress=False)
    assert (stop.value.epoch, stop.value.step) == (2, 2)
    assert signal.Signals(signum).name in str(stop.value)
    doc = json.loads((tmp_path / "b" / "last" / "state.json").read_text())
    assert doc["epoch"] == 1 and doc["global_step"] == 6 and doc["partial"]["step"] == 2
    # the handlers are gone once train() returns
    assert signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler)

    resumed = train(cfg, model=tiny_model(), datasets=toy_datasets(), resume=True, progress=False)
    a, b = _adapter(tmp_path / "a"), _adapter(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for key in ("val_acc", "test_acc", "final_train_loss", "final_train_acc", "global_steps"):
        assert resumed[key] == straight[key], key
    keys = ("epoch", "global_step", "train_loss", "train_acc", "train_images", "val_acc", "lr")
    lines = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("a", "b")]
    records = [[{k: json.loads(ln)[k] for k in keys} for ln in side] for side in lines]
    assert records[0] == records[1]  # the stopped epoch's record counts every step once
    assert PREEMPTED_EXIT_CODE == 75


def test_mosa_train_sent_sigterm_prints_one_line_exits_75_and_resumes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    assert main(["data", "prepare", "--tasks", "digits", "--out", str(root)]) == 0
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "mosa", "train", "--out", str(out), "method=adapter",
            f"data.root={root}", "optim.epochs=3", "optim.warmup_epochs=0",
            "optim.batch_size=16", "device=cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:  # epoch 1 ended: epoch 2 (50 steps, ~5 s) is under way
        if line.startswith("mosa: epoch 1/3"):
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == PREEMPTED_EXIT_CODE
    lines = [ln for ln in rest.splitlines() if ln.startswith("mosa:")]
    assert len(lines) == 1 and lines[0].startswith("mosa: stopped by SIGTERM after epoch 2, step")
    assert f"resumable checkpoint {out}/last" in lines[0] and "Traceback" not in rest
    assert not (out / "summary.json").exists()
    done = subprocess.run([*argv[:3], "train", "--resume", str(out)], env=env, timeout=300)
    assert done.returncode == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_steps"] == 150 and summary["resumed_from_epoch"] == 1

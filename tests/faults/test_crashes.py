"""kill -9 mid-epoch, a corrupt ``last/`` and a truncated adapter: one clear line and a
documented exit code, nothing lost, and a resume that ends like an uninterrupted run."""

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

from mosa.cli.main import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    assert main(["data", "prepare", "--tasks", "digits", "--out", str(root)]) == 0
    return root


def _argv(out: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "mosa", "train", "--out", str(out), "method=mosa",
            f"data.root={root}", "optim.epochs=2", "optim.warmup_epochs=1",
            "optim.batch_size=32", "device=cpu"]  # fmt: skip


def _one_epoch_run(root: Path, out: Path) -> None:
    argv = _argv(out, root)[3:]
    argv[argv.index("optim.epochs=2")] = "optim.epochs=1"
    assert main(argv) == 0


def _one_error(capsys: Any) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("mosa: error")]
    assert len(err) == 1, err
    return err[0]


def test_kill_9_mid_epoch_resumes_to_the_same_adapter(digits: Path, tmp_path: Path) -> None:
    straight = subprocess.run(_argv(tmp_path / "a", digits), env=ENV, capture_output=True)
    assert straight.returncode == 0
    out = tmp_path / "b"
    proc = subprocess.Popen(_argv(out, digits), stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("mosa: epoch 1/2"):
            break
    deadline = time.monotonic() + 60
    while not (out / "last" / "state.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)  # epoch 1's checkpoint follows its log line; epoch 2 takes seconds
    proc.send_signal(signal.SIGKILL)  # no handler, no checkpoint: epoch 1's last/ remains
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert json.loads((out / "last" / "state.json").read_text())["epoch"] == 1
    done = subprocess.run([*_argv(out, digits)[:3], "train", "--resume", str(out)], env=ENV)
    assert done.returncode == 0
    a, b = (p / "adapter" / "adapter.safetensors" for p in (tmp_path / "a", out))
    assert a.read_bytes() == b.read_bytes()


def test_a_corrupt_last_checkpoint_is_one_line_and_exit_2(
    digits: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "run"
    _one_epoch_run(digits, out)
    (out / "summary.json").unlink()  # as if killed before the end
    (out / "last" / "state.json").write_text('{"format": "mosa-train-st')
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    line = _one_error(capsys)
    assert f"{out}/last/state.json" in line and "corrupt" in line


def test_a_truncated_adapter_is_one_line_and_exit_2(
    digits: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "run"
    _one_epoch_run(digits, out)
    weights = out / "adapter" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    for cmd in (["merge", str(out / "adapter"), "--out", str(tmp_path / "merged")],
                ["eval", str(out), "--data", f"vtab:{digits}:digits:test"]):  # fmt: skip
        capsys.readouterr()
        assert main(cmd) == 2, cmd
        assert "adapter.safetensors" in _one_error(capsys), cmd

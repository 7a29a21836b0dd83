"""A write that fails (no space, permission) ends in one line naming the last good checkpoint,
exit code 2, nothing earlier damaged, and a resume that ends like an uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_helpers import make_config, tiny_model, toy_datasets
from safetensors.torch import load_file

import mosa.io
from mosa.cli.main import main
from mosa.engine import train
from mosa.engine.errors import WriteFailedError

METHOD = {"method": "mosa", "bottleneck": 8, "num_experts": 4}


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, writes: int, name: str | None = None) -> None:
    """Every atomic write after the first ``writes`` (or to a file called ``name``) fails
    with ENOSPC, at the write layer."""
    real = mosa.io._replacing
    count = {"n": 0}

    @contextmanager
    def replacing(path: Path) -> Iterator[str]:
        count["n"] += 1
        if count["n"] > writes or Path(path).name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        with real(path) as tmp:
            yield tmp

    monkeypatch.setattr(mosa.io, "_replacing", replacing)


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / "adapter.safetensors"))


def test_a_full_disk_names_the_last_good_checkpoint_and_the_resume_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(make_config(tmp_path / "a", method=METHOD), model=tiny_model(),
          datasets=toy_datasets(), progress=False)  # fmt: skip
    out = tmp_path / "b"
    cfg = make_config(out, method=METHOD)
    with monkeypatch.context() as m:
        # config.json, metrics.jsonl, then epoch 1's checkpoint (adapter config + weights,
        # state tensors, state.json) succeed; epoch 2's checkpoint fails
        _disk_full_after(m, 6)
        with pytest.raises(WriteFailedError) as err:
            train(cfg, model=tiny_model(), datasets=toy_datasets(), progress=False)
    msg = str(err.value)
    assert msg.startswith(f"cannot write the checkpoint to {out}/last: No space left on device")
    assert f"the last good checkpoint is {out}/last (epoch 1)" in msg
    assert f"mosa train --resume {out}" in msg
    assert json.loads((out / "last" / "state.json").read_text())["epoch"] == 1
    assert not list(out.glob(".last.tmp-*")) and not list(out.rglob("*.tmp"))

    train(cfg, model=tiny_model(), datasets=toy_datasets(), resume=True, progress=False)
    a, b = _adapter(tmp_path / "a"), _adapter(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("writes", "name"), [(0, None), (6, None), (10**6, "summary.json")])
def test_every_failing_write_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, writes: int, name: str | None
) -> None:
    root = tmp_path / "data"
    assert main(["data", "prepare", "--tasks", "digits", "--out", str(root), "--limit", "64"]) == 0
    out = tmp_path / "run"
    _disk_full_after(monkeypatch, writes, name)  # the first write / a checkpoint / the summary
    argv = ["train", "--out", str(out), "method=adapter", f"data.root={root}",
            "optim.epochs=3", "optim.warmup_epochs=0", "optim.batch_size=32", "device=cpu"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("mosa: error")]
    assert len(err) == 1 and "No space left on device" in err[0], err
    assert ("no checkpoint was written yet" in err[0]) == (writes == 0)
    if name:  # the final checkpoint stands: a resume only writes the summary again
        assert f"{out}/last (epoch 3)" in err[0]


def test_a_real_full_tmpfs_exits_2_with_one_line(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip() or 'refused'}")
    try:
        root = tmp_path / "data"
        assert main(["data", "prepare", "--tasks", "digits", "--out", str(root)]) == 0
        argv = [sys.executable, "-m", "mosa", "train", "--out", str(mnt / "run"),
                f"data.root={root}", "optim.epochs=3", "optim.warmup_epochs=0",
                "optim.batch_size=64", "device=cpu", "--quiet"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 2, done.stderr[-2000:]
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("mosa: error")]
        assert len(lines) == 1 and "No space left on device" in lines[0], done.stderr[-2000:]
        assert "Traceback" not in done.stderr
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)

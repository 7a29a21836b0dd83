"""DDP on 2 CPU processes (gloo, launched by torchrun) trains the same adapter as 1 process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_helpers import ddp_config, tiny_model, toy_datasets
from safetensors.torch import load_file

import mosa
from mosa.engine import train
from mosa.model import adapter_state_dict

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"

# Both runs see the same global batches (DistributedSampler order, 8 + 8 = 16 images) and the
# same expert picks, so they differ only by float rounding: each rank reduces its mean gradient
# over 8 images and the all-reduce averages the two, where one process reduces over 16. Those
# ~1e-7 relative differences then pass through 8 AdamW updates of size ~lr = 1e-2. Adam divides
# each gradient by its own running RMS, so where a gradient is tiny (the down projection while
# the zero-initialised up projection is still near zero) a relative rounding difference becomes
# an absolute one of order lr * 1e-4. Measured on the 2-core CI machine: max |difference|
# 6.9e-6, against changes of up to 5e-2 made by training; the tolerance leaves a 4x margin.
ATOL = 3e-5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
@pytest.mark.slow
@pytest.mark.parametrize(
    ("compile_backend", "accumulate"),
    [("none", 1), ("aot_eager", 1), ("none", 2)],
    ids=["eager", "compiled", "accumulate2"],
)
def test_two_gloo_processes_match_a_single_process(
    tmp_path: Path, compile_backend: str, accumulate: int
) -> None:
    """Eager, through torch.compile (DDP's own graph splitting) or with 2 micro-batches per
    step (DDP's no_sync until the last), against one eager process without accumulation."""
    ddp_out = tmp_path / "ddp"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",  # stay on the loopback interface
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(HERE / "ddp_worker.py"),
        str(ddp_out),
        compile_backend,
        str(accumulate),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [json.loads((ddp_out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # same routing streams after training => the same experts were picked on both ranks
    assert ranks[0]["routing_crc"] == ranks[1]["routing_crc"]
    assert ranks[0]["weights_crc"] == ranks[1]["weights_crc"]
    assert ranks[0]["test_acc"] == ranks[1]["test_acc"]
    summary = json.loads((ddp_out / "summary.json").read_text())
    assert summary["host"]["world_size"] == 2 and summary["host"]["backend"] == "gloo"

    single_out = tmp_path / "single"
    model = tiny_model()
    single = train(ddp_config(single_out), model=model, datasets=toy_datasets(), progress=False)
    ddp = load_file(str(ddp_out / "adapter" / "adapter.safetensors"))
    one = load_file(str(single_out / "adapter" / "adapter.safetensors"))
    assert ddp.keys() == one.keys()
    initial = adapter_state_dict(mosa.inject(tiny_model(), ddp_config("unused").method))
    worst = max((ddp[k] - one[k]).abs().max().item() for k in one)
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], rtol=0, atol=ATOL, msg=k)
    # training moved the tensors by far more than the tolerance, so the comparison means something
    moved = max((one[k] - initial[k]).abs().max().item() for k in one)
    assert moved > 1000 * ATOL > worst
    ddp_metrics = [json.loads(x) for x in (ddp_out / "metrics.jsonl").read_text().splitlines()]
    one_metrics = [json.loads(x) for x in (single_out / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(ddp_metrics, one_metrics, strict=True):
        assert a["train_images"] == b["train_images"] == 64
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["train_acc"] == b["train_acc"] and a["val_acc"] == b["val_acc"]
    assert summary["test_acc"] == single["test_acc"]

"""Run by ``torchrun --nproc_per_node=2`` from test_ddp.py: the DDP half of the comparison."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import zlib

import torch
from engine_helpers import ddp_config, tiny_model, toy_datasets

import mosa
from mosa.engine import train


def main(out: str, compile_backend: str = "none", accumulate: str = "1") -> None:
    torch.set_num_threads(1)
    model = tiny_model()
    cfg = ddp_config(out)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, accumulate=int(accumulate)))
    if compile_backend != "none":
        cfg = dataclasses.replace(cfg, compile=True, compile_backend=compile_backend)
    summary = train(cfg, model=model, datasets=toy_datasets(), progress=False)
    rank = int(os.environ["RANK"])
    # per-rank fingerprints: the routing streams and the trained tensors must agree across ranks
    routing = sorted(mosa.get_rng_state(model).items())
    trained = sorted((n, p.detach()) for n, p in model.named_parameters() if p.requires_grad)
    record = {
        "rank": rank,
        "world_size": summary["host"]["world_size"],
        "routing_crc": zlib.crc32(b"".join(s.numpy().tobytes() for _, s in routing)),
        "weights_crc": zlib.crc32(b"".join(t.numpy().tobytes() for _, t in trained)),
        "test_acc": summary["test_acc"],
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main(*sys.argv[1:])

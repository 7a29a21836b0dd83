"""The resumable training checkpoint ``out/last/``: safetensors + JSON, never pickles.

Layout::

    last/adapter/            mosa.save_adapter of the unmerged model (what was trained)
    last/state.safetensors   optimiser tensors "optim/<param>/<key>", RNG states "rng/...",
                             MoSA routing generators "routing/<module>"
    last/state.json          epoch, global step, schedule, optimiser groups and scalars,
                             numpy/python RNG, sampler, metrics history, resolved config

The folder is written under a temporary name and swapped in by renames, so a crash leaves
either the previous checkpoint or the new one (``.last.old`` covers the instant between the
two renames).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

import mosa
from mosa.engine.errors import ResumeError
from mosa.engine.optim import WarmupCosine, optimizer_state_from_flat, optimizer_state_to_flat
from mosa.io import atomic_save_safetensors, atomic_write_json

FORMAT = "mosa-train-state"
FORMAT_VERSION = 1
LAST = "last"
OLD = ".last.old"
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
ADAPTER = "adapter"


@dataclass
class TrainState:
    """What the loop itself carries across epochs (everything else lives in the modules)."""

    epoch: int  # last completed epoch (1-based; 0 before training)
    global_step: int
    history: list[dict[str, Any]]
    elapsed_s: float  # wall time spent by earlier processes of this run


# ----------------------------------------------------------------------------- RNG
def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Global torch (CPU and CUDA), numpy and python RNG states as tensors + JSON."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "gauss": gauss},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng/cuda/"))
    if cuda and torch.cuda.is_available():
        states = [tensors[f"rng/cuda/{i}"] for i in range(len(cuda))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    n = meta["numpy"]
    keys = tensors["rng/numpy"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = meta["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# ----------------------------------------------------------------------------- save / find / load
def find_last(out: str | os.PathLike[str]) -> Path | None:
    """The complete resumable checkpoint under ``out``, if any."""
    out = Path(out)
    for name in (LAST, OLD):
        candidate = out / name
        if (candidate / STATE_JSON).is_file():
            return candidate
    return None


def save_last(
    out: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosine,
    param_names: dict[int, str],
    state: TrainState,
    config: dict[str, Any],
    sampler: dict[str, Any],
    partial: dict[str, Any] | None = None,
) -> Path:
    """Write ``out/last`` atomically (temporary folder, then renames). ``partial``: where
    a run stopped inside epoch ``state.epoch + 1`` (step, the epoch's sums so far)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".last.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        mosa.save_adapter(model, tmp / ADAPTER)
        opt_tensors, opt_meta = optimizer_state_to_flat(optimizer, param_names)
        rng_tensors, rng_meta = capture_rng()
        tensors: dict[str, torch.Tensor] = {f"optim/{k}": v for k, v in opt_tensors.items()}
        tensors.update(rng_tensors)
        tensors.update({f"routing/{k}": v for k, v in mosa.get_rng_state(model).items()})
        atomic_save_safetensors(tensors, tmp / STATE_TENSORS)
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "epoch": state.epoch,
            "global_step": state.global_step,
            "elapsed_s": state.elapsed_s,
            "history": state.history,
            "scheduler": scheduler.state_dict(),
            "optimizer": opt_meta,
            "rng": rng_meta,
            "sampler": sampler,
            "config": config,
        }
        if partial is not None:
            doc["partial"] = partial
        atomic_write_json(tmp / STATE_JSON, doc)
        _fsync_dir(tmp)
        final, old = out / LAST, out / OLD
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(out)
        shutil.rmtree(old, ignore_errors=True)
        # half-written folders of a process killed while it saved (one process writes a run)
        for stale in out.glob(".last.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_JSON
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResumeError(f"{path} cannot be read ({e}); the checkpoint is corrupt") from e
    if doc.get("format") != FORMAT:
        raise ResumeError(f"{path} is not a mosa training state (format={doc.get('format')!r})")
    if int(doc.get("format_version", 0)) > FORMAT_VERSION:
        raise ResumeError(f"{path} was written by a newer mosa; upgrade mosa to resume it")
    return doc


def load_last(
    directory: Path,
    doc: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosine,
    param_names: dict[int, str],
) -> TrainState:
    """Restore model tensors, optimiser, schedule, every RNG and the routing generators."""
    try:
        mosa.load_adapter(model, directory / ADAPTER)
        tensors = load_file(str(directory / STATE_TENSORS))
        opt = {k[len("optim/") :]: v for k, v in tensors.items() if k.startswith("optim/")}
        optimizer_state_from_flat(optimizer, param_names, opt, doc["optimizer"])
        scheduler.load_state_dict(doc["scheduler"])
        _restore_generators(tensors, doc, model)
    except ResumeError:
        raise
    except Exception as e:  # safetensors, torch and mosa each raise their own types
        raise ResumeError(f"cannot resume from {directory}: {e}") from e
    return TrainState(
        epoch=int(doc["epoch"]),
        global_step=int(doc["global_step"]),
        history=list(doc["history"]),
        elapsed_s=float(doc["elapsed_s"]),
    )


def restore_rng_from(directory: Path, model: nn.Module) -> None:
    """Set every RNG and the routing generators back to those saved in ``directory``."""
    _restore_generators(load_file(str(directory / STATE_TENSORS)), read_state(directory), model)


def _restore_generators(
    tensors: dict[str, torch.Tensor], doc: dict[str, Any], model: nn.Module
) -> None:
    routing = {k[len("routing/") :]: v for k, v in tensors.items() if k.startswith("routing/")}
    mosa.set_rng_state(model, routing)
    restore_rng(tensors, doc["rng"])


def _fsync_dir(path: Path) -> None:
    # make the renames durable; not every file system allows opening a directory
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

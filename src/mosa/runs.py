"""A run folder on disk: where its adapter and its config are, and which task heads the
adapter holds. A lower layer (no engine): :mod:`mosa.evaluation` reads the run's config and
rebuilds the model from what this module finds.

A checkpoint is an adapter folder (``adapter_config.json`` + ``adapter.safetensors``) or a
finished run folder holding one under ``adapter/`` next to the run's ``config.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from mosa.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from mosa.heads import HEADS, JOINT_HEAD

RUN_CONFIG = "config.json"


def adapter_paths(path: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """(adapter folder, run folder or None) of an adapter folder or a finished run folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if (p / CONFIG_NAME).is_file():
        return p, (p.parent if (p.parent / RUN_CONFIG).is_file() else None)
    if (p / "adapter" / CONFIG_NAME).is_file():
        return p / "adapter", p
    raise CheckpointError(
        f"{p} is neither an adapter folder (with {CONFIG_NAME}) nor a finished run folder "
        "(with adapter/); a run writes adapter/ when it ends"
    )


@dataclass
class HeadLayout:
    """The task heads an adapter checkpoint holds: task -> classes (head order) and whether
    they are slices of one joint head."""

    classes: dict[str, int]
    joint: bool

    @property
    def tasks(self) -> list[str]:
        return list(self.classes)


def read_head_layout(path: str | os.PathLike[str]) -> HeadLayout | None:
    """The task heads stored in an adapter (folder or run folder); None for a single-task one."""
    adapter, _ = adapter_paths(path)
    weights = adapter / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found: the checkpoint folder is incomplete")
    prefix = HEADS + "."
    spans: dict[str, tuple[int, int]] = {}
    sizes: dict[str, int] = {}
    joint = False
    try:
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key.startswith(JOINT_HEAD + "."):
                    joint = True
                if not key.startswith(prefix):
                    continue
                name, _, leaf = key[len(prefix) :].rpartition(".")
                if leaf == "span":
                    span = f.get_tensor(key).tolist()
                    spans[name] = (int(span[0]), int(span[1]))
                elif leaf == "weight":
                    sizes[name] = int(f.get_slice(key).get_shape()[0])
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{weights} could not be read ({e}); the file is corrupt") from e
    if joint:
        ordered = sorted(spans.items(), key=lambda kv: kv[1][0])
        return HeadLayout({name: count for name, (_, count) in ordered}, True)
    if not sizes:
        return None
    return HeadLayout(sizes, False)

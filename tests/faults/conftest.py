"""Fault tests train the engine tests' tiny ViT on toy data (``tests/engine/engine_helpers``);
the root conftest keeps them at one thread."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

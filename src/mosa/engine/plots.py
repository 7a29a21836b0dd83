"""Training curves as a PNG (matplotlib's Agg canvas: no display, no global backend change)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mosa.io import atomic_write_bytes


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss (left) and accuracy (right) per epoch from ``metrics.jsonl`` records (multi-task
    runs: the mean val accuracy plus one dotted line per task)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]

    def series(key: str) -> list[float]:
        return [float("nan") if r.get(key) is None else float(r[key]) for r in history]

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, series("train_loss"), marker="o", label="train loss (total)")
    ax_loss.plot(epochs, series("train_ce"), marker=".", linestyle="--", label="train CE")
    if any(r.get("val_loss") is not None for r in history):
        ax_loss.plot(epochs, series("val_loss"), marker="s", label="val CE")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_acc.plot(epochs, series("train_acc"), marker="o", label="train top-1")
    if any(r.get("val_acc") is not None for r in history):
        tasks = list(history[-1].get("tasks") or {})
        label = "val top-1 (mean of tasks)" if len(tasks) > 1 else "val top-1"
        ax_acc.plot(epochs, series("val_acc"), marker="s", label=label)
        for name in tasks if len(tasks) > 1 else []:
            values = [(r.get("tasks") or {}).get(name, {}).get("val_acc") for r in history]
            ys = [float("nan") if v is None else float(v) for v in values]
            ax_acc.plot(epochs, ys, linestyle=":", label=f"val {name}")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0.0, 1.0)
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path

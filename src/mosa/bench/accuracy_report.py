"""The results of ``mosa bench accuracy``: the table (mean and spread over seeds, gaps paired
by seed), its markdown and its plot, and the files they are written to."""

from __future__ import annotations

import io
import statistics
from pathlib import Path
from typing import Any

from mosa.bench.accuracy import GAP_BASES, METHODS
from mosa.io import atomic_write_bytes, atomic_write_json
from mosa.results.report import format_cell

__all__ = ["plot", "render_markdown", "summarise", "write_results"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(
    records: list[dict[str, Any]], groups: dict[str, str] | None = None
) -> dict[str, Any]:
    """Per task x method: mean/std of test accuracy (percent) over seeds, params, wall time."""
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for rec in records:
        cells.setdefault(rec["task"], {}).setdefault(rec["method"], {"recs": []})["recs"].append(
            rec
        )
    table: dict[str, Any] = {"tasks": {}, "methods": [], "means": {}}
    methods = [m for m in METHODS if any(m in c for c in cells.values())]
    table["methods"] = methods
    for task, by_m in cells.items():
        row = {}
        for m, c in by_m.items():
            tests = [100 * r["test_acc"] for r in c["recs"] if r["test_acc"] is not None]
            vals = [100 * r["val_acc"] for r in c["recs"] if r["val_acc"] is not None]
            mean, std = _mean_std(tests) if tests else (None, None)
            row[m] = {
                "test_mean": mean,
                "test_std": std,
                "val_mean": statistics.fmean(vals) if vals else None,
                "n": len(tests),
                "lr": c["recs"][0]["lr"],
                "trainable_params": c["recs"][0]["trainable_params"],
                "wall_s_mean": statistics.fmean(r["wall_s"] or 0.0 for r in c["recs"]),
            }
        table["tasks"][task] = {"group": (groups or {}).get(task), "methods": row}
    for m in methods:
        per_task = [
            t["methods"][m]["test_mean"] for t in table["tasks"].values() if m in t["methods"]
        ]
        if len(per_task) == len(table["tasks"]) and all(v is not None for v in per_task):
            entry: dict[str, Any] = {"task_mean": statistics.fmean(per_task)}
            entry.update(_seed_spread(records, m, len(table["tasks"])))
            if groups:
                by_group: dict[str, list[float]] = {}
                for t in table["tasks"].values():
                    if t["group"]:
                        by_group.setdefault(t["group"], []).append(t["methods"][m]["test_mean"])
                gm = {g: statistics.fmean(v) for g, v in by_group.items()}
                entry["group_means"] = gm
                if len(gm) > 1:
                    entry["mean_of_group_means"] = statistics.fmean(gm.values())
            table["means"][m] = entry
    for base in GAP_BASES:
        _add_gaps(table["means"], base)
    return table


def _seed_task_means(records: list[dict[str, Any]], method: str, n_tasks: int) -> dict[int, float]:
    """seed -> the method's test top-1 (%) averaged over tasks, for seeds that ran every task."""
    by_seed: dict[int, list[float]] = {}
    for r in records:
        if r["method"] == method and r["test_acc"] is not None:
            by_seed.setdefault(int(r["seed"]), []).append(100 * r["test_acc"])
    return {s: statistics.fmean(v) for s, v in sorted(by_seed.items()) if len(v) == n_tasks}


def _seed_spread(records: list[dict[str, Any]], method: str, n_tasks: int) -> dict[str, Any]:
    """The task mean of each seed and their sample std (the task mean's seed spread), the
    latter only when every seed the method ran has a test result on every task (otherwise
    the table's task mean and its spread would come from different seeds)."""
    per_seed = _seed_task_means(records, method, n_tasks)
    out: dict[str, Any] = {"task_mean_by_seed": {str(k): v for k, v in per_seed.items()}}
    ran = {int(r["seed"]) for r in records if r["method"] == method}
    if len(per_seed) > 1 and set(per_seed) == ran:
        out["task_mean_std"] = statistics.stdev(per_seed.values())
    return out


def _add_gaps(means: dict[str, Any], base: str) -> None:
    """Each method's task-mean gap to ``base``, paired by seed: mean and sample std."""
    if base not in means:
        return
    ref = means[base]["task_mean_by_seed"]
    for name, entry in means.items():
        if name == base:
            continue
        gaps = [v - ref[s] for s, v in entry["task_mean_by_seed"].items() if s in ref]
        if len(gaps) > 1:
            entry[f"gap_vs_{base}"], entry[f"gap_vs_{base}_std"] = _mean_std(gaps)


def _task_mean_cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "—"
    if "task_mean_std" in entry:
        return f"**{entry['task_mean']:.1f} ± {entry['task_mean_std']:.1f}**"
    return f"**{entry['task_mean']:.1f}**"


def _gap_cell(entry: dict[str, Any], base: str) -> str:
    key = f"gap_vs_{base}"
    if key not in entry:
        return "—"
    return f"{entry[key]:+.1f} ± {entry[key + '_std']:.1f}"


def _task_rows(table: dict[str, Any], methods: list[str]) -> list[str]:
    lines = [
        "| task | group | " + " | ".join(methods) + " |",
        "|---|---|" + "|".join(":---:" for _ in methods) + "|",
    ]
    for task, t in table["tasks"].items():
        cells = []
        for m in methods:
            c = t["methods"].get(m)
            missing = not c or c["test_mean"] is None
            cells.append("—" if missing else format_cell(c["test_mean"], c["test_std"], c["n"]))
        lines.append(f"| {task} | {t['group'] or ''} | " + " | ".join(cells) + " |")
    return lines


def _mean_rows(means: dict[str, Any], methods: list[str]) -> list[str]:
    if not means:
        return []
    lines = [
        "| **mean over tasks** | | "
        + " | ".join(_task_mean_cell(means.get(m)) for m in methods)
        + " |"
    ]
    for base in GAP_BASES:
        if any(f"gap_vs_{base}" in means.get(m, {}) for m in methods):
            cells = " | ".join(_gap_cell(means.get(m, {}), base) for m in methods)
            lines.append(f"| − {base} (paired by seed) | | {cells} |")
    if any("mean_of_group_means" in means.get(m, {}) for m in methods):
        lines.append(
            "| mean of group means | | "
            + " | ".join(
                f"{means[m]['mean_of_group_means']:.1f}"
                if "mean_of_group_means" in means.get(m, {})
                else "—"
                for m in methods
            )
            + " |"
        )
    return lines


def _cost_rows(table: dict[str, Any], methods: list[str]) -> list[str]:
    first = next(iter(table["tasks"].values()), None)
    if not first:
        return []
    lines = [
        "| trainable params | | "
        + " | ".join(
            f"{first['methods'][m]['trainable_params']:,}" if m in first["methods"] else "—"
            for m in methods
        )
        + " |"
    ]
    walls = []
    for m in methods:
        ws = [t["methods"][m]["wall_s_mean"] for t in table["tasks"].values() if m in t["methods"]]
        walls.append(f"{statistics.fmean(ws):.0f}" if ws else "—")
    lines.append("| wall s / run (mean) | | " + " | ".join(walls) + " |")
    return lines


def _lr_rows(table: dict[str, Any], methods: list[str]) -> list[str]:
    lines = [
        "",
        "Chosen learning rate per cell (best val200 accuracy at the first seed):",
        "",
        "| task | " + " | ".join(methods) + " |",
        "|---|" + "|".join(":---:" for _ in methods) + "|",
    ]
    for task, t in table["tasks"].items():
        lines.append(
            f"| {task} | "
            + " | ".join(
                f"{t['methods'][m]['lr']:g}" if m in t["methods"] else "—" for m in methods
            )
            + " |"
        )
    return lines


def _heading(table: dict[str, Any], protocol: dict[str, Any]) -> str:
    counts = {c["n"] for t in table["tasks"].values() for c in t["methods"].values()}
    n_seeds = max(counts, default=0)
    spread = "mean ± sample std over" if n_seeds > 1 else "one run each,"
    partial = (
        f" (so far: the protocol runs {len(protocol['seeds'])} seeds)"
        if n_seeds < len(protocol["seeds"])
        else ""
    )
    head = (
        f"Test top-1 (%) of the final model, {spread} {n_seeds} seed(s){partial}; "
        f"{protocol['epochs']} epochs on train800, learning rate chosen on val200, "
        f"adapter bottleneck = LoRA rank = {protocol['bottleneck_and_rank']}, backbone "
        f"`{protocol['backbone']}`."
    )
    if any("task_mean_std" in e for e in table["means"].values()):
        head += " The task mean's ± is the sample std over seeds of each seed's task mean."
    if any(f"gap_vs_{b}" in e for e in table["means"].values() for b in GAP_BASES):
        head += (
            " '− adapter' ('− lora') is each seed's task mean minus the adapter's (LoRA's) at "
            "the same seed (mean ± sample std): MoSA's dense counterpart is the adapter, "
            "MoSA-LoRA's is LoRA."
        )
    return head


def render_markdown(table: dict[str, Any], protocol: dict[str, Any]) -> str:
    """The results table: test top-1 % (mean ± std over seeds) per task and method."""
    methods = table["methods"]
    lines = [
        *_task_rows(table, methods),
        *_mean_rows(table["means"], methods),
        *_cost_rows(table, methods),
        *_lr_rows(table, methods),
    ]
    return _heading(table, protocol) + "\n\n" + "\n".join(lines) + "\n"


def plot(table: dict[str, Any], path: Path) -> Path:
    """Grouped bars: test accuracy per task and method, with seed std as error bars."""
    import matplotlib  # heavy: only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(table["tasks"])
    methods = table["methods"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(tasks) + 2), 4.2))
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        xs, ys, es = [], [], []
        for j, task in enumerate(tasks):
            c = table["tasks"][task]["methods"].get(m)
            if c and c["test_mean"] is not None:
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                ys.append(c["test_mean"])
                es.append(c["test_std"])
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=m)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks, rotation=20, ha="right")
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(ncol=min(len(methods), 6), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_results(
    records: list[dict[str, Any]], protocol: dict[str, Any], out: Path, groups: dict[str, str]
) -> dict[str, Path]:
    """``results.json`` (records + table + protocol), ``results.md`` and ``results.png``."""
    table = summarise(records, groups)
    atomic_write_json(
        out / "results.json", {"protocol": protocol, "records": records, "table": table}
    )
    md = render_markdown(table, protocol)
    atomic_write_bytes(out / "results.md", md.encode())
    png = plot(table, out / "results.png")
    return {"json": out / "results.json", "markdown": out / "results.md", "plot": png}

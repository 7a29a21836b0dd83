"""``mosa bench study``'s tables and plots, from its records (``docs/study.json``).

Two protocols side by side. *Clean* (ours): the final model at the learning rate val chose.
*Reference* (the paper's code): the best test accuracy over epochs and learning rates, which
selects on test and is shown for comparison only.
"""

from __future__ import annotations

import io
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mosa.bench.study_plan import at_grid_end
from mosa.io import atomic_write_bytes

Records = list[dict[str, Any]]
# the trend picture: the regimes it places on each axis (setting -> x value)
EPOCH_AXIS = {"base": 8, "long": 24, "paper": 100}
DATA_AXIS = {"shots10": 10, "base": 80}  # images per class (800 images over 10 classes)
TREND_VARIANTS = ("mosa_paper", "mosa_best")


def gaps(
    records: Records, key: str = "test_acc", n_tasks: int | None = None
) -> list[dict[str, Any]]:
    """Per setting x variant: the mean of ``key`` and val over tasks (seed-averaged per task),
    and the gap of ``key`` to the adapter (LoRA for LoRA variants) with its seed spread; no
    gap for a row that has fewer than ``n_tasks`` tasks yet."""
    by: dict[tuple[str, str], dict[str, Records]] = {}
    for r in records:
        by.setdefault((r["setting"], r["variant"]), {}).setdefault(r["task"], []).append(r)
    rows = []
    for (setting, variant), all_seeds in by.items():
        tasks = _common_seeds(all_seeds)
        ref_name = "lora" if "lora" in variant else "adapter"
        ref = by.get((setting, ref_name))
        row = {"setting": setting, "variant": variant, "tasks": len(tasks)}
        row["test"] = statistics.fmean(_task_means(tasks, key))
        vals = _task_means(tasks, "val_acc")
        row["val"] = statistics.fmean(vals) if vals else None
        row["seeds"] = min(len(v) for v in tasks.values())
        row["knob"] = next(iter(tasks.values()))[0].get("knob")
        if ref and set(ref) == set(tasks) and len(tasks) >= (n_tasks or 0):
            diffs = _seed_diffs(tasks, ref, key)
            row["gap_test"] = statistics.fmean(diffs) if diffs else None
            row["gap_std"] = statistics.stdev(diffs) if len(diffs) > 1 else None
            row["gap_seeds"] = len(diffs)
            if row["val"] is not None and (val_diffs := _seed_diffs(tasks, ref, "val_acc")):
                row["gap_val"] = statistics.fmean(val_diffs)
            row["reference"] = ref_name
        rows.append(row)
    return rows


def _common_seeds(tasks: dict[str, Records]) -> dict[str, Records]:
    """Each task's records at the seeds every task has, so that a row's task means cover the
    same seeds (a row whose finals are under way would otherwise mix 3 seeds with 1)."""
    seeds = set.intersection(*({r["seed"] for r in recs} for recs in tasks.values()))
    return {t: [r for r in recs if r["seed"] in seeds] for t, recs in tasks.items()}


def _task_means(tasks: dict[str, Records], key: str) -> list[float]:
    if any(r.get(key) is None for recs in tasks.values() for r in recs):
        return []
    return [100 * statistics.fmean(r[key] for r in recs) for recs in tasks.values()]


def _seed_diffs(a: dict[str, Records], b: dict[str, Records], key: str) -> list[float]:
    """Task-mean gap of ``key`` (points) for each seed both sides have."""
    seeds = set.intersection(*[{r["seed"] for r in v} for v in (*a.values(), *b.values())])
    out = []
    for s in sorted(seeds):
        d = [100 * (_at(a[t], s)[key] - _at(b[t], s)[key]) for t in a]
        out.append(statistics.fmean(d))
    return out


def _at(recs: Records, seed: int) -> dict[str, Any]:
    return next(r for r in recs if r["seed"] == seed)


def _gap(row: dict[str, Any] | None) -> str:
    if row is None or row.get("gap_test") is None:
        return "—"
    std = row.get("gap_std")
    return f"{row['gap_test']:+.1f}" + (f" ± {std:.1f}" if std is not None else "")


def render(rows: list[dict[str, Any]], records: Records, tasks: Sequence[str]) -> str:
    """The summary table (clean protocol) and the per-task table."""
    lines = [
        "| setting | variant | knob | seeds | val % | test % | test gap to adapter/LoRA (± seed std) |",
        "|---|---|---|:---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {_name(r, len(tasks))} | {r['knob'] or ''} | {r['seeds']} | "
            f"{r['val']:.1f} | {r['test']:.1f} | {_gap(r)} |"
        )
    lines += ["", "Per task (test %, seed 0 at the lr chosen on val; lr in brackets):", ""]
    lines += [
        "| setting | variant | " + " | ".join(tasks) + " |",
        "|---|---|" + "|".join("---:" for _ in tasks) + "|",
    ]
    by: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for rec in records:
        if rec["seed"] == 0:
            by.setdefault((rec["setting"], rec["variant"]), {})[rec["task"]] = rec
    for (setting, variant), t in by.items():
        cells = [f"{100 * t[k]['test_acc']:.1f} ({t[k]['lr']:g})" if k in t else "—" for k in tasks]
        lines.append(f"| {setting} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _name(row: dict[str, Any], n_tasks: int) -> str:
    """The row's variant, marked while it misses tasks: its mean is over fewer tasks, not
    comparable to the other rows'."""
    missing = row["tasks"] < n_tasks
    return row["variant"] + (f" ({row['tasks']} of {n_tasks} tasks so far)" if missing else "")


def verdict(row: dict[str, Any]) -> str | None:
    """``beats`` / ``trails`` the dense counterpart by more than the seed spread, or
    ``level``; None for rows without a gap over several seeds."""
    gap, std = row.get("gap_test"), row.get("gap_std")
    if gap is None or std is None or not row["variant"].startswith("mosa"):
        return None
    return "beats" if gap - std > 0 else "trails" if gap + std < 0 else "level"


def render_verdicts(rows: list[dict[str, Any]]) -> str:
    """One line per row with a gap over several seeds: is it beyond the seed spread?"""
    lines = [
        f"- {r['setting']} / {r['variant']}: {_gap(r)} over {r['gap_seeds']} seeds: "
        f"{'level, within the spread, with' if v == 'level' else v} the {r['reference']}"
        for r in rows
        if (v := verdict(r)) is not None
    ]
    if not lines:
        return ""
    head = "Beyond the seed spread? (gap to the dense counterpart on test, clean protocol)"
    return "\n" + head + ":\n\n" + "\n".join(lines) + "\n"


def _run_key(r: dict[str, Any]) -> tuple[str, str, str, int]:
    return r["setting"], r["variant"], r["task"], r["seed"]


def matched_gaps(
    records: Records, reference: Records, n_tasks: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Both protocols' rows (clean, reference) over exactly the runs (task x seed) that have
    both figures, so that a row with 3 seeds on one side and 1 on the other compares one."""
    keys = {_run_key(r) for r in reference} & {_run_key(r) for r in records}
    clean = gaps([r for r in records if _run_key(r) in keys], n_tasks=n_tasks)
    return clean, gaps([r for r in reference if _run_key(r) in keys], n_tasks=n_tasks)


def render_protocols(
    clean: list[dict[str, Any]], reference: list[dict[str, Any]], n_tasks: int
) -> str:
    """Both protocols' gaps to the adapter, for the cells that have a reference figure;
    both lists from :func:`matched_gaps`."""
    if not reference:
        return ""
    by_clean = {(r["setting"], r["variant"]): r for r in clean}
    lines = [
        "",
        "Both protocols (task means; gap to the adapter ± seed std). Clean: the final model at "
        "the lr val chose. Reference: the best test accuracy over epochs and learning rates, as "
        "the paper's code reports; **selection on test, for comparison only**.",
        "",
        "| setting | variant | seeds | clean test % | clean gap | reference test % | "
        "reference gap | moved by |",
        "|---|---|:---:|---:|---:|---:|---:|---:|",
    ]
    for r in reference:
        c = by_clean.get((r["setting"], r["variant"]))
        moved = (
            f"{r['gap_test'] - c['gap_test']:+.1f}"
            if c and c.get("gap_test") is not None and r.get("gap_test") is not None
            else "—"
        )
        name = _name(r, n_tasks)
        lines.append(
            f"| {r['setting']} | {name} | {r['seeds']} | "
            f"{c['test']:.1f} | {_gap(c)} | {r['test']:.1f} | {_gap(r)} | {moved} |"
            if c
            else f"| {r['setting']} | {name} | {r['seeds']} | — | — | "
            f"{r['test']:.1f} | {_gap(r)} | — |"
        )
    return "\n".join(lines) + "\n"


def render_grid_ends(records: Records) -> str:
    """The cells whose val choice is still a grid end after the grid's extensions: their
    optimum may lie beyond what was tried."""
    ends = [
        f"{r['setting']} / {r['variant']} / {r['task']} (lr {r['lr']:g})"
        for r in records
        if r["seed"] == 0 and at_grid_end(r["lr"], map(float, r.get("val_by_lr") or {}))
    ]
    if not ends:
        return ""
    return "\nStill at a grid end on val after its extensions: " + "; ".join(ends) + ".\n"


def render_costs(costs: dict[str, float]) -> str:
    """What the per-epoch test record added to each setting's runs."""
    if not costs:
        return ""
    parts = ", ".join(f"{s} {100 * f:.0f} %" for s, f in costs.items())
    return (
        f"\nTime the per-epoch test evaluation took, as a share of its runs' wall time: {parts}.\n"
    )


def render_hours(hours: dict[str, dict[str, float]]) -> str:
    """Each setting's cost: its finished runs and the sum of their wall times."""
    if not hours:
        return ""
    parts = ", ".join(f"{s} {h['hours']:.1f} h over {h['runs']} runs" for s, h in hours.items())
    return (
        "\nRun time per setting (the sum of its finished runs' wall times, re-runs included): "
        f"{parts}.\n"
    )


def render_curves(curves: dict[str, Any]) -> str:
    if not curves:
        return ""
    lines = ["", "Plain adapter: train accuracy (%) after each epoch (chosen lr, seed 0):", ""]
    for setting, tasks in curves.items():
        for task, accs in tasks.items():
            lines.append(f"- {setting} / {task}: " + ", ".join(f"{a:g}" for a in accs))
    return "\n".join(lines) + "\n"


def train_curves(records: Records, variant: str = "adapter") -> dict[str, Any]:
    """Per setting and task: ``variant``'s train accuracy (%) after each epoch of its chosen
    seed-0 run (from its ``metrics.jsonl``), to see where the schedule saturates it."""
    curves: dict[str, Any] = {}
    for r in records:
        path = Path(r["run_dir"]) / "metrics.jsonl"
        if r["variant"] != variant or r["seed"] != 0 or not path.is_file():
            continue
        lines = path.read_text().splitlines()
        accs = [round(100 * json.loads(ln)["train_acc"], 1) for ln in lines if ln.strip()]
        curves.setdefault(r["setting"], {})[r["task"]] = accs
    return curves


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """The test gap to the adapter (or LoRA) per setting x variant, with seed std bars."""
    plt = _pyplot()
    rows = [
        r for r in rows if r.get("gap_test") is not None and r["variant"] not in ("adapter", "lora")
    ]
    ys = [r["gap_test"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.6))
    colours = ["tab:green" if y > 0 else "tab:red" for y in ys]
    errs = [r.get("gap_std") or 0.0 for r in rows]
    ax.barh(range(len(rows)), ys, xerr=errs, color=colours, capsize=2)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['setting']}: {r['variant']}" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("test top-1 gap to the plain adapter (LoRA rows: to LoRA), points, task mean")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def trend_points(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple]]]:
    """``{"epochs" | "images": {variant: [(x, gap, std), ...]}}``: the clean gap of the
    paper's MoSA and our best MoSA in each regime that has it."""
    by = {(r["setting"], r["variant"]): r for r in rows}
    out: dict[str, dict[str, list[tuple]]] = {"epochs": {}, "images": {}}
    for axis, settings in (("epochs", EPOCH_AXIS), ("images", DATA_AXIS)):
        for v in TREND_VARIANTS:
            pts = [
                (x, by[(s, v)]["gap_test"], by[(s, v)].get("gap_std") or 0.0)
                for s, x in settings.items()
                if (s, v) in by and by[(s, v)].get("gap_test") is not None
            ]
            if pts:
                out[axis][v] = sorted(pts)
    return out


def plot_trend(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """``docs/study_trend.png``: the gap to the adapter against epochs and against images
    per class, for the paper's MoSA and our best MoSA (None when no regime has a gap yet)."""
    pts = trend_points(rows)
    if not any(pts.values()):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    titles = {"epochs": "epochs (800 images)", "images": "images per class (8 / 52 epochs)"}
    for ax, (axis, series) in zip(axes, pts.items(), strict=True):
        for v, p in series.items():
            xs, ys, errs = zip(*p, strict=True)
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=v)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.minorticks_off()
        ticks = sorted((EPOCH_AXIS if axis == "epochs" else DATA_AXIS).values())
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel(titles[axis])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test gap to the adapter, points (± seed std)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)

"""Render an aggregated :class:`~mosa.results.aggregate.Table` as markdown and a bar chart."""

from __future__ import annotations

from pathlib import Path

from mosa.io import atomic_write_bytes, atomic_write_json
from mosa.results.aggregate import ResultsError, Table, build_table, collect_runs

__all__ = ["format_cell", "plot_table", "render_markdown", "write_report"]


def format_cell(mean: float, std: float, n: int, show_n: bool = False) -> str:
    """``mean ± std`` with one decimal (std only when there are several seeds)."""
    text = f"{mean:.1f} ± {std:.1f}" if n > 1 else f"{mean:.1f}"
    return f"{text} (n={n})" if show_n else text


def render_markdown(table: Table, title: str = "mosa report") -> str:
    """The report as GitHub markdown: the task x method table, aggregate rows, notes."""
    ns = {c.n for c in table.cells.values()}
    show_n = len(ns) > 1
    any_group = any(g is not None for g in table.groups.values())
    head = ["task", "train", *(["group"] if any_group else []), *table.methods]
    lines = [f"# {title}", ""]
    seeds = f"{ns.pop()} seed(s) per cell" if not show_n else "n = seeds per cell"
    lines += [
        "Test top-1 (%) of the final model: mean ± sample std (ddof=1) over seeds, "
        f"{seeds}. Where several hyper-parameter settings were run, the one with the best "
        "mean validation accuracy is reported (the test split is never used to choose). "
        "`train`: the images each row trained on (k-shot draws and smaller training sets are "
        "rows of their own, never averaged with full runs).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---:"] + (["---"] if any_group else []) + [":---:"] * len(table.methods))
        + "|",
    ]  # fmt: skip
    for row in table.rows:
        cells = []
        for m in table.methods:
            c = table.cells.get((row, m))
            cells.append(format_cell(c.mean, c.std, c.n, show_n) if c and c.values else "—")
        group = [table.groups[row] or ""] if any_group else []
        lines.append("| " + " | ".join([row, table.train.get(row, "?"), *group, *cells]) + " |")
    for label, by_method in table.aggregates.items():
        vals = [f"**{v:.1f}**" if v is not None else "—" for v in by_method.values()]
        lines.append(
            "| " + " | ".join([f"**{label}**", "", *([""] if any_group else []), *vals]) + " |"
        )
    if table.aggregates:
        lines += [
            "",
            "Aggregate rows are shown only for methods that have every task of the set "
            "(— otherwise). VTAB papers report either the mean over tasks or the mean of the "
            "three group means; both are given.",
        ]
    chosen = [(k, c) for k, c in table.cells.items() if c.candidates > 1]
    if chosen:
        lines += ["", "## Selected settings (by validation accuracy)", ""]
        lines += ["| task | method | lr | val top-1 | settings compared |", "|---|---|---|---|---|"]
        for (row, m), c in sorted(chosen):
            val = f"{c.val_mean:.1f}" if c.val_mean is not None else "—"
            lines.append(f"| {row} | {m} | {c.lr:g} | {val} | {c.candidates} |")
    if table.skipped:
        lines += ["", f"Runs without a test accuracy (not in the table): {len(table.skipped)}."]
    return "\n".join(lines) + "\n"


def plot_table(table: Table, path: str | Path, title: str = "") -> Path:
    """Grouped bar chart (tasks on x, one bar per method, error bars = std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(table.rows) + list(table.aggregates)
    methods = table.methods
    x = np.arange(len(rows))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(rows) * max(len(methods), 2)), 4.2))
    for i, m in enumerate(methods):
        means, errs = [], []
        for r in rows:
            if r in table.aggregates:
                v = table.aggregates[r].get(m)
                means.append(np.nan if v is None else v)
                errs.append(0.0)
            else:
                c = table.cells.get((r, m))
                means.append(c.mean if c and c.values else np.nan)
                errs.append(c.std if c and c.values else 0.0)
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width, means, width, yerr=errs, capsize=2, label=m
        )
    if table.aggregates and table.rows:
        ax.axvline(len(table.rows) - 0.5, color="grey", lw=0.8, ls="--")  # tasks | means
    ax.set_xticks(x)
    ax.set_xticklabels(rows, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("test top-1 (%)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, ncols=min(len(methods), 6))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_report(
    runs_dir: str | Path, out: str | Path | None = None, *, plot: bool = True
) -> tuple[Table, str, dict[str, Path]]:
    """Aggregate ``runs_dir`` and write ``<out>.md`` (default ``runs_dir/report.md``), a PNG
    chart and a JSON dump next to it. Returns (table, markdown, written paths)."""
    runs_dir = Path(runs_dir)
    table = build_table(collect_runs(runs_dir))
    md_path = Path(out) if out is not None else runs_dir / "report.md"
    if not md_path.suffix:
        md_path = md_path.with_suffix(".md")
    elif md_path.suffix.lower() in (".png", ".json"):
        raise ResultsError(
            f"--out {md_path}: give the markdown file; .png/.json are written next to it"
        )
    text = render_markdown(table, title=f"mosa report: {runs_dir}")
    written = {"markdown": md_path}
    if plot:
        png = plot_table(table, md_path.with_suffix(".png"), title=str(runs_dir))
        written["plot"] = png
        text += f"\n![test top-1 by task and method]({png.name})\n"
    atomic_write_bytes(md_path, text.encode())
    json_path = md_path.with_suffix(".json")
    atomic_write_json(json_path, table.to_dict())
    written["json"] = json_path
    return table, text, written

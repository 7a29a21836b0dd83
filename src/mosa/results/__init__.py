"""Aggregation of many runs into report tables and plots (``mosa report``)."""

from mosa.results.aggregate import (
    Cell,
    ResultsError,
    Run,
    Table,
    build_table,
    collect_runs,
    task_group,
)
from mosa.results.report import format_cell, plot_table, render_markdown, write_report

__all__ = [
    "Cell",
    "ResultsError",
    "Run",
    "Table",
    "build_table",
    "collect_runs",
    "format_cell",
    "plot_table",
    "render_markdown",
    "task_group",
    "write_report",
]

"""Train many runs: one interface (:func:`run_grid`), two executors behind it.

``local`` (the default) trains in processes on this machine; ``ray`` trains Ray tasks on a
local instance or a cluster (``pip install 'mosa[ray]'``). ``mosa sweep``, ``mosa bench
accuracy`` and ``mosa bench study`` all schedule their runs through here. The run folder is
the truth: finished runs are read back, started ones resume from their checkpoint.
"""

from mosa.executors.grid import GridResult, RunOutcome, log_line, progress_note, run_grid
from mosa.executors.options import EXECUTORS, ExecutorOptions, GridError
from mosa.executors.worker import config_differences, run_one, run_status

__all__ = [
    "EXECUTORS",
    "ExecutorOptions",
    "GridError",
    "GridResult",
    "RunOutcome",
    "config_differences",
    "log_line",
    "progress_note",
    "run_grid",
    "run_one",
    "run_status",
]

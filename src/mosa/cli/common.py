"""What every ``mosa`` subcommand shares: sub-parser set-up, argument types, result formatting."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mosa.cli.runs import CliError
from mosa.executors import EXECUTORS, ExecutorOptions

DEFAULT_DATA_ROOT = "data/vtab"

# the subparsers object ``add_subparsers`` returns (argparse names no public type for it)
Subparsers = argparse._SubParsersAction


def csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """argparse type for comma-separated lists (``--seeds 0,1,2``)."""

    def parse(text: str) -> list[Any]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
        try:
            return [kind(t) for t in items]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None

    parse.__name__ = f"list of {getattr(kind, '__name__', 'value')}"
    return parse


# the bench suites' epilogs end with where their run times are written down
RUN_TIMES = "\nrun times: docs/bench-notes.md\n"


def examples(*lines: str) -> str:
    """A help epilog listing example command lines."""
    return "examples:\n" + "\n".join(f"  {ln}" for ln in lines)


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's example lines as written."""


def add_subparser(
    subs: Subparsers,
    name: str,
    help_text: str,
    description: str,
    example_lines: Sequence[str],
    common: argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    """A sub-parser with a dedented description, examples and the shared options."""
    return subs.add_parser(
        name,
        help=help_text,
        description=textwrap.dedent(description).strip(),
        epilog=examples(*example_lines),
        formatter_class=Formatter,
        parents=[common],
    )


def check_device(name: str | None) -> str | None:
    """Check a --device value early, so a missing GPU is one clear line, not a traceback."""
    if name is None:
        return None
    if name != "auto" and not name.startswith(("cpu", "cuda", "mps", "xpu")):
        raise CliError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available here; use --device cpu")
    return name


def fmt_acc(v: Any) -> str:
    """An accuracy (fraction or percent, or a dict of them) as ``12.34%``; ``n/a`` if none."""
    if isinstance(v, dict):
        return ", ".join(f"{k} {fmt_acc(x)}" for k, x in v.items())
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{100 * v:.2f}%" if v <= 1.0 else f"{v:.2f}%"
    return "n/a"


def find(d: dict[str, Any], *keys: str) -> Any:
    """First present key, also looking one level down (e.g. ``params.trainable``)."""
    for k in keys:
        if k in d:
            return d[k]
    for v in d.values():
        if isinstance(v, dict):
            found = find(v, *keys)
            if found is not None:
                return found
    return None


def trainable_and_seconds(summary: dict[str, Any]) -> tuple[Any, Any]:
    """A run summary's trainable parameter count and wall time (None where it has none)."""
    trainable = find(summary, "trainable_params", "trainable")
    seconds = find(summary, "wall_time_s", "wall_time", "wall_s", "time_s")
    return trainable, seconds


def add_executor_arguments(p: argparse.ArgumentParser, jobs: int = 1) -> None:
    """``--executor``, ``--jobs``, ``--threads``, ``--ray-address``, per-run resources and
    ``--max-retries``: where the runs of a grid train (see :class:`ExecutorOptions`)."""
    g = p.add_argument_group("where the runs train")
    g.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=None,
        help="local: processes on this machine (default); ray: Ray tasks on a local instance "
        "or, with --ray-address, a cluster (pip install 'mosa[ray]')",
    )
    g.add_argument(
        "--jobs",
        type=int,
        default=jobs,
        help=f"runs at once on this machine (default {jobs}; 1 trains in this process); "
        "a local Ray instance gets JOBS x --cpus-per-run CPUs",
    )
    g.add_argument(
        "--threads", type=int, help="torch threads per run (default: the cores shared by --jobs)"
    )
    g.add_argument(
        "--ray-address", metavar="ADDR", help="join this Ray cluster (implies --executor ray)"
    )
    g.add_argument("--cpus-per-run", type=float, default=1.0, help="Ray: CPUs per run")
    g.add_argument(
        "--gpus-per-run", type=float, default=0.0, help="Ray: GPUs per run (0.25: four per GPU)"
    )
    g.add_argument(
        "--max-retries",
        type=int,
        default=2,
        help="times a run is tried again when its worker or node dies (default 2); a run "
        "that fails by itself is never retried",
    )


def executor_options(args: argparse.Namespace) -> ExecutorOptions:
    """The :class:`ExecutorOptions` of parsed :func:`add_executor_arguments` options."""
    executor = args.executor or ("ray" if args.ray_address else "local")
    return ExecutorOptions(
        executor=executor,
        jobs=args.jobs,
        threads=args.threads,
        ray_address=args.ray_address,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        max_retries=args.max_retries,
    )

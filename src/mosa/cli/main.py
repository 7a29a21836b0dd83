"""``mosa`` command line: train, eval, merge, data, report, sweep, recipes, bench, demo.

Each subcommand lives in its own module (``mosa.cli.<command>``) holding its sub-parser
(``add_parser``) next to its handler; this module assembles them, sets up logging and turns
bad input into one ``mosa: error: ...`` line with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from mosa._version import __version__
from mosa.backbones.zoo import BackboneError
from mosa.checkpoint import CheckpointError
from mosa.cli import bench, data, demo, evaluate, merge, recipes, report, sweep, train
from mosa.cli.common import Formatter, examples
from mosa.cli.runs import CliError, usage_message
from mosa.config import ConfigError
from mosa.data.errors import DataError
from mosa.engine.errors import TrainingError
from mosa.engine.preempt import PREEMPTED_EXIT_CODE, RunPreempted
from mosa.evaluation import UsageError
from mosa.executors import GridError
from mosa.results.aggregate import ResultsError

__all__ = ["build_parser", "main"]

# in the order ``mosa --help`` lists them
COMMANDS = (train, evaluate, merge, data, report, sweep, recipes, bench, demo)

# exceptions that mean bad input: reported in one line, exit code 2
USER_ERRORS: tuple[type[BaseException], ...] = (
    BackboneError,
    ConfigError,
    DataError,
    CheckpointError,
    FileNotFoundError,
    GridError,
    ResultsError,
    CliError,
    TrainingError,
    UsageError,
)


def one_line(e: BaseException) -> str:
    """An error as one line; in the command line's terms where the library states them."""
    text = usage_message(e) if isinstance(e, UsageError) else str(e)
    msg = " ".join(text.split())  # multi-line messages: one line
    if isinstance(e, KeyError) and len(e.args) == 1:
        msg = str(e.args[0])
    return msg or type(e).__name__


def build_parser() -> argparse.ArgumentParser:
    """The full ``mosa`` argument parser."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a --debug given before the subcommand is not reset by the subparser's default
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    p = argparse.ArgumentParser(
        prog="mosa",
        description="Mixture of Sparse Adapters (MoSA): parameter-efficient fine-tuning of "
        "timm vision backbones.",
        epilog=examples(
            "mosa demo",
            "mosa data prepare --tasks digits,fmnist_rot",
            "mosa train --config vtab/dtd method=lora optim.lr=1e-3",
            "mosa sweep --config offline/_base --tasks digits,fmnist_rot --methods mosa,adapter "
            "--seeds 0,1,2 --out runs/sweep",
            "mosa report runs/sweep",
        ),
        formatter_class=Formatter,
    )
    p.add_argument("--version", action="version", version=f"mosa {__version__}")
    p.add_argument("--debug", action="store_true", default=False, help="show tracebacks")
    subs = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subs, common)
    return p


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (callers and tests may swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _log_to_stderr(quiet: bool) -> None:
    """Show the library's progress messages (``mosa.*`` loggers) as ``mosa: ...`` lines."""
    logger = logging.getLogger("mosa")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("mosa: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # the command line owns the process's output
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``, taking stray ``KEY=VALUE`` items as overrides where a command has them."""
    args, extra = parser.parse_known_args(list(argv) if argv is not None else None)
    if extra:
        # argparse hands KEY=VALUE items that follow an option (`--config X a=1`) back as
        # unknown: they are overrides of commands that take them
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for bad input)."""
    parser = build_parser()
    args = _parse(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False))
    _log_to_stderr(quiet=bool(getattr(args, "quiet", False)))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mosa: interrupted (a run resumes from its last/ checkpoint)", file=sys.stderr)
        return 130
    except RunPreempted as e:  # SIGTERM / SIGUSR1: a scheduler asked the job to stop
        print(f"mosa: {one_line(e)}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except Exception as e:
        if debug or not isinstance(e, USER_ERRORS):
            raise
        print(f"mosa: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

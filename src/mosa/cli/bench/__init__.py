"""``mosa bench SUITE ...``: run a benchmark suite (speed, accuracy, study, executors) with its
own options. Each suite's parser lives beside this module (``mosa.cli.bench.<suite>``); what it
runs lives in :mod:`mosa.bench`, a subpackage no other part of the library imports."""

from __future__ import annotations

import argparse
import importlib

from mosa.cli.common import Subparsers, add_subparser
from mosa.cli.runs import CliError

SUITES = ("speed", "accuracy", "study", "executors")


def add_parser(subs: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``mosa bench`` to ``subs``."""
    s = add_subparser(
        subs,
        "bench",
        "benchmarks (speed, accuracy, study, executors)",
        "Run a benchmark suite; arguments after the suite name go to the suite itself.",
        [
            "mosa bench speed --device cpu --out runs/bench_speed.json",
            "mosa bench speed --help",
            "mosa bench accuracy --out runs/bench_accuracy",
            "mosa bench study --out runs/study",
            "mosa bench executors --out runs/bench_executors.json",
        ],
        common,
    )
    s.add_argument("suite", choices=SUITES)
    s.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the suite")
    s.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Hand the remaining arguments to the suite's own ``main``."""
    module = f"{__name__}.{args.suite}"
    try:
        # imported by name when run: the suite is picked on the command line, and a slimmed
        # installation may lack it (or a dependency of it)
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name not in (module, f"mosa.bench.{args.suite}", "mosa.bench"):
            raise  # the benchmark exists but a dependency of it is missing: show that
        raise CliError(
            f"'mosa bench {args.suite}' is not available in this installation ({e.name} is missing)"
        ) from None
    rest = list(args.args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    return int(mod.main(rest) or 0)

"""``mosa recipes``: list the packaged recipes, or show one resolved."""

from __future__ import annotations

import argparse
import sys

from mosa.cli.common import Subparsers, add_subparser
from mosa.recipes import dump_yaml, list_recipes, load_config, recipe_description


def add_parser(subs: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``mosa recipes`` to ``subs``."""
    s = add_subparser(
        subs,
        "recipes",
        "list the packaged recipes",
        "List the packaged recipes (published VTAB / FGVC / general recipes, offline tasks, "
        "method mixins).",
        ["mosa recipes", "mosa recipes --all", "mosa recipes --show fgvc/stanford_cars"],
        common,
    )
    s.add_argument("--all", action="store_true", help="include the _base files")
    s.add_argument("--show", metavar="NAME", help="print one recipe, bases and defaults resolved")
    s.set_defaults(func=cmd_recipes)


def cmd_recipes(args: argparse.Namespace) -> int:
    """Print one resolved recipe (--show), or every recipe with its description."""
    if args.show:
        print(dump_yaml(load_config(args.show).to_dict()), end="")
        return 0
    names = list_recipes(include_private=args.all)
    width = max(len(n) for n in names)
    for n in names:
        print(f"{n:{width}s}  {recipe_description(n)}")
    print(
        "\nmosa train --config NAME [key=value ...]; add --config methods/<method> (or "
        "method=<method>) for a baseline; mosa recipes --show NAME prints the resolved config",
        file=sys.stderr,
    )
    return 0

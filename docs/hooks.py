"""mkdocs hook: the command-line page is generated from mosa's argparse parsers, so the page
and ``--help`` never disagree."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any

from mosa.cli.main import build_parser

MARKER = "<!-- cli-reference -->"


def _commands(
    parser: argparse.ArgumentParser, prog: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(prog, parser)`` for ``parser`` and every sub-command below it, depth first."""
    yield prog, parser
    # argparse has no public accessor for sub-parsers; its actions list is the only way in
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{prog} {name}")


def cli_reference() -> str:
    """One section per command: its ``--help`` text, wrapped at 88 columns."""
    os.environ["COLUMNS"] = "88"  # argparse wraps to the terminal's width
    sections = []
    for prog, parser in _commands(build_parser(), "mosa"):
        sections.append(f"## `{prog}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    return "\n".join(sections)


def on_page_markdown(markdown: str, **_: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown

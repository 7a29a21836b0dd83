"""Every Python and shell block of the README and the docs pages runs, in page order, in a
fresh folder per page, offline, on the embedded backbone and the offline data. A block that
needs a GPU, the real data sets or the network says so in an HTML comment on the line before
it (``<!-- not run: reason -->``); its shell lines are still parsed by mosa's own argument
parser and its Python is compiled, with every ``mosa.<name>`` it uses checked to exist."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import mosa
from mosa.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.M | re.S)
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\s*$")
LANGS = ("python", "bash")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    code: str
    skip_reason: str | None


def blocks_of(path: Path) -> list[Block]:
    """The Python and bash blocks of a Markdown file, each with the reason it is not run."""
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) not in LANGS:
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.search(before)
        line = text.count("\n", 0, m.start()) + 1
        out.append(Block(path.name, line, m.group(1), m.group(2), reason and reason.group(1)))
    return out


def pages() -> list[Path]:
    docs = sorted((ROOT / "docs").glob("*.md"))
    return [ROOT / "README.md", *(p for p in docs if blocks_of(p))]


def _commands(code: str) -> list[str]:
    """The shell block's commands, continuation lines joined, comments dropped."""
    joined = code.replace("\\\n", " ")
    return [c for c in (line.split(" #")[0].strip() for line in joined.splitlines()) if c]


def _check_not_run(block: Block) -> None:
    """What can be checked without running: mosa command lines parse, Python compiles and
    names only ``mosa.<name>`` attributes that exist."""
    if block.lang == "bash":
        for cmd in _commands(block.code):
            words = shlex.split(cmd)
            if words[:1] == ["mosa"] and "$" not in cmd:
                try:
                    build_parser().parse_args(words[1:])
                except SystemExit as e:
                    pytest.fail(f"{block.page}:{block.line}: `{cmd}` does not parse ({e.code})")
        return
    tree = ast.parse(block.code, filename=f"{block.page}:{block.line}")
    for node in ast.walk(tree):
        is_mosa = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        if is_mosa and node.value.id == "mosa":
            assert hasattr(mosa, node.attr), f"{block.page}:{block.line}: no mosa.{node.attr}"


def _env(work: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "HOME": str(work),  # nothing a block writes leaks into the user's home
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p
        ),
    }


def _run(block: Block, work: Path) -> None:
    if block.lang == "python":
        cmd = [sys.executable, "-c", block.code]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", block.code]
    proc = subprocess.run(
        cmd, cwd=work, env=_env(work), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (
        f"{block.page}:{block.line} ({block.lang} block) failed with exit {proc.returncode}:\n"
        f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_every_block_of_the_page_runs(page: Path, tmp_path: Path) -> None:
    blocks = blocks_of(page)
    for block in blocks:
        if block.skip_reason:
            _check_not_run(block)
        else:
            _run(block, tmp_path)


def test_not_run_blocks_are_still_checked() -> None:
    renamed = Block("x.md", 1, "python", "import mosa\nmosa.injekt(model)\n", "needs a GPU")
    with pytest.raises(AssertionError, match="no mosa.injekt"):
        _check_not_run(renamed)
    bad = Block("x.md", 1, "bash", "mosa train --no-such-option\n", "needs a GPU")
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        _check_not_run(bad)


def test_every_block_is_run_or_says_why_not() -> None:
    found = [b for p in pages() for b in blocks_of(p)]
    assert sum(not b.skip_reason for b in found) >= 6
    assert all(b.skip_reason is None or len(b.skip_reason) > 10 for b in found)

"""``mosa bench SUITE``: each suite's parser in mosa.cli.bench, reached through the one command."""

from __future__ import annotations

import importlib

import pytest

from mosa.cli.bench import SUITES
from mosa.cli.main import main


@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_has_its_help(suite: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", suite, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mosa bench {suite}") and "--out" in out


def test_bench_speed_options_reach_the_suite(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    speed = importlib.import_module("mosa.cli.bench.speed")
    seen = {}

    def fake(device, out, **kw):
        seen.update(kw, device=device, out=out)
        return {"fake": True}

    monkeypatch.setattr(speed, "run_speed_bench", fake)
    monkeypatch.setattr(speed, "format_speed_table", lambda r: f"table {r}")
    argv = ["--quick", "--steps", "2", "--threads", "3", "--compile", "--quiet"]
    assert main(["bench", "speed", "--", *argv]) == 0
    assert seen["device"] == "cpu" and seen["out"] is None and seen["log"] is None
    assert (seen["quick"], seen["steps"], seen["threads"], seen["compile"]) == (True, 2, 3, True)
    assert capsys.readouterr().out == "table {'fake': True}\n"


@pytest.mark.parametrize("missing", ["mosa.cli.bench.study", "mosa.bench.study", "mosa.bench"])
def test_a_suite_missing_from_the_installation_is_a_one_line_error(
    missing: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def absent(name: str):
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    monkeypatch.setattr(importlib, "import_module", absent)
    assert main(["bench", "study"]) == 2
    assert f"'mosa bench study' is not available in this installation ({missing} is missing)" in (
        capsys.readouterr().err
    )


def test_a_missing_dependency_of_a_suite_is_shown_as_it_is(monkeypatch) -> None:
    def absent(name: str):
        raise ModuleNotFoundError("No module named 'ray'", name="ray")

    monkeypatch.setattr(importlib, "import_module", absent)
    with pytest.raises(ModuleNotFoundError, match="ray"):
        main(["bench", "executors"])

"""Every public name has a Google-style docstring whose example runs (doctest)."""

from __future__ import annotations

import doctest
import inspect

import pytest
import torch

import mosa

PUBLIC = [name for name in mosa.__all__ if name != "__version__"]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_docstring_has_its_sections(name: str) -> None:
    obj = getattr(mosa, name)
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"mosa.{name} has no docstring"
    is_error = isinstance(obj, type) and issubclass(obj, Exception)
    if not is_error:
        assert "Examples:" in doc and ">>> " in doc, f"mosa.{name} has no runnable example"
    if callable(obj) and not isinstance(obj, type) and inspect.signature(obj).parameters:
        assert "Args:" in doc, f"mosa.{name} documents no arguments"


@pytest.mark.parametrize("name", PUBLIC)
def test_public_docstring_example_runs(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(getattr(mosa, name), f"mosa.{name}", globs={}):
        result = runner.run(test, out=lambda s: pytest.fail(s, pytrace=False))
        assert result.failed == 0

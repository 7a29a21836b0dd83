"""The one exception type of the data layer."""

from __future__ import annotations

import os


class DataError(ValueError):
    """Bad data on disk or bad data arguments; the message names the file and what to do."""


def where(path: str | os.PathLike[str], line: int | None = None) -> str:
    """Format a location as ``path`` or ``path:line`` for error messages."""
    return f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)

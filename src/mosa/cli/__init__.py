"""Command line of mosa (``mosa`` console script, ``python -m mosa``)."""

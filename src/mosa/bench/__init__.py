"""The benchmark suites behind ``mosa bench``: ``speed`` (training and inference cost per
method), ``accuracy`` (MoSA against its baselines on real data), ``study`` (where sparse
training pays, knob by knob), ``executors`` (local against Ray), with ``reference`` (the
N-copy MoSA they compare against) and ``flops`` (analytic ViT FLOPs).

A subpackage at the top of the layering: nothing else in the library imports it, and it does
not import ``mosa.cli`` (whose ``mosa.cli.bench`` holds each suite's command line). It ships
with the package so that ``mosa bench`` works from a pip install; docs/bench-notes.md says why
and holds what the suites measured.
"""

"""Benchmarks: ``speed`` (training and inference cost per method), ``flops`` (analytic ViT FLOPs)
and ``reference`` (the N-copy MoSA the speed benchmark compares against)."""

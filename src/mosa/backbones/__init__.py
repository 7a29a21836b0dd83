"""Backbones: where methods attach in each architecture, and the project's own pretrained model."""

from mosa.backbones import zoo  # noqa: F401  (registers mosa_vit_fmnist with timm)

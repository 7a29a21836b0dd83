"""Training losses: cross-entropy and MoSA's consistency regularisation (SPEC §1.5).

Every loss is computed in float32 (float64 for a float64 model), also when the forward pass
ran under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def classification_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy with optional label smoothing (half-precision logits in float32)."""
    return F.cross_entropy(_at_least_float32(logits), targets, label_smoothing=label_smoothing)


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """The reference's consistency term (R-Drop form), in float32, batch mean:

    ``0.5 * (KL(sg[p_b] || p_a) + KL(sg[p_a] || p_b))``, each KL being
    ``F.kl_div(log_softmax(one side), softmax(other side).detach(), reduction="batchmean")``.
    So ``logits_a`` gets gradient only from the first term, ``0.5 * (p_a - p_b) / B``, and
    ``logits_b`` only from the second. The value is half the symmetric KL: symmetric in its
    arguments, non-negative, and zero when the two distributions are equal.
    """
    if logits_a.shape != logits_b.shape:
        raise ValueError(
            f"logits shapes differ: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}"
        )
    a, b = _at_least_float32(logits_a), _at_least_float32(logits_b)
    if a.dim() == 1:  # one sample: batchmean would divide by the class count
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    kl_a = F.kl_div(F.log_softmax(a, dim=-1), F.softmax(b, dim=-1).detach(), reduction="batchmean")
    kl_b = F.kl_div(F.log_softmax(b, dim=-1), F.softmax(a, dim=-1).detach(), reduction="batchmean")
    return 0.5 * (kl_a + kl_b)


def hidden_consistency(
    hidden_a: Sequence[torch.Tensor], hidden_b: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Deep consistency: MSE between the two passes' hidden states, averaged over blocks
    (the reference's sum over the collected blocks divided by their number).

    Both passes get gradient, as in the reference. The trainer scales it by
    ``consistency * deep_consistency`` (0.01 in the reference's Stanford Cars runs).
    """
    if len(hidden_a) != len(hidden_b) or not hidden_a:
        raise ValueError(
            f"need the same, non-zero number of hidden states, got {len(hidden_a)} and "
            f"{len(hidden_b)}"
        )
    terms = [
        F.mse_loss(_at_least_float32(a), _at_least_float32(b))
        for a, b in zip(hidden_a, hidden_b, strict=True)
    ]
    return torch.stack(terms).mean()


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 autocast outputs are upcast; float64 (exactness tests) stays float64
    return t if t.dtype == torch.float64 else t.float()

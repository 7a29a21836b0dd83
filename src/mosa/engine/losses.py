"""Training losses: cross-entropy and MoSA's consistency regularisation (SPEC §1.5).

Every loss is computed in float32, also when the forward pass ran under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def classification_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy with optional label smoothing."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """``KL(p_a || sg[p_b]) + KL(p_b || sg[p_a])`` averaged over the batch (``batchmean``).

    ``KL(p || q) = sum_c p_c (log p_c - log q_c)`` and ``sg`` is stop-gradient: in each term
    the FIRST distribution carries the gradient and the second one is a detached target, so
    ``logits_a`` gets gradient only from the first term and ``logits_b`` only from the second.
    The value is the symmetric KL ``KL(p_a||p_b) + KL(p_b||p_a)``: symmetric in its
    arguments, non-negative, and zero when the two distributions are equal.
    """
    if logits_a.shape != logits_b.shape:
        raise ValueError(
            f"logits shapes differ: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}"
        )
    log_a = F.log_softmax(logits_a.float(), dim=-1)
    log_b = F.log_softmax(logits_b.float(), dim=-1)
    batch = log_a.shape[0] if log_a.dim() > 1 else 1
    kl_a = (log_a.exp() * (log_a - log_b.detach())).sum() / batch
    kl_b = (log_b.exp() * (log_b - log_a.detach())).sum() / batch
    return kl_a + kl_b


def hidden_consistency(
    hidden_a: Sequence[torch.Tensor], hidden_b: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Deep consistency: MSE between the two passes' hidden states, averaged over blocks.

    Both passes get gradient (MSE is already symmetric; detaching each side in turn and
    summing would give the same gradient at twice the value). Averaging over blocks keeps
    the weight's meaning independent of how many blocks are compared.
    """
    if len(hidden_a) != len(hidden_b) or not hidden_a:
        raise ValueError(
            f"need the same, non-zero number of hidden states, got {len(hidden_a)} and "
            f"{len(hidden_b)}"
        )
    terms = [F.mse_loss(a.float(), b.float()) for a, b in zip(hidden_a, hidden_b, strict=True)]
    return torch.stack(terms).mean()

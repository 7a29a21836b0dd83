"""Consistency regularisation: values on known logits and where the gradient flows."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mosa.engine.losses import classification_loss, hidden_consistency, symmetric_kl


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Row-wise KL(p || q) of probability rows, by the textbook formula."""
    return (p * (p.log() - q.log())).sum(-1)


def test_symmetric_kl_known_value() -> None:
    a = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    b = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])
    # row 0: p = (1/2, 1/2), q = (3/4, 1/4); row 1: equal distributions contribute 0
    kl_pq = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl_qp = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    expected = 0.5 * (kl_pq + kl_qp) / 2  # R-Drop's 0.5, then the batch mean over 2 rows
    assert symmetric_kl(a, b).item() == pytest.approx(expected, rel=1e-6)


def test_symmetric_kl_is_symmetric_nonnegative_and_zero_for_equal_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 5, generator=g)
    b = torch.randn(8, 5, generator=g)
    assert symmetric_kl(a, b).item() == pytest.approx(symmetric_kl(b, a).item(), rel=1e-6)
    assert symmetric_kl(a, b).item() > 0
    assert symmetric_kl(a, a.clone()).item() == pytest.approx(0.0, abs=1e-7)
    # invariant to a per-row shift of the logits (it compares distributions)
    assert symmetric_kl(a + 3.0, b).item() == pytest.approx(symmetric_kl(a, b).item(), rel=1e-5)
    pa, pb = a.softmax(-1), b.softmax(-1)
    expected = 0.5 * (_kl(pa, pb) + _kl(pb, pa)).mean()
    assert symmetric_kl(a, b).item() == pytest.approx(expected.item(), rel=1e-5)


def test_symmetric_kl_gradient_is_the_reference_one() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    loss = symmetric_kl(a, b)
    loss.backward()
    # each side is pulled towards the other's detached distribution: d/da = 0.5 (p_a - p_b) / B
    pa, pb = a.detach().softmax(-1), b.detach().softmax(-1)
    torch.testing.assert_close(a.grad.double(), 0.5 * (pa - pb) / 4, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b.grad.double(), 0.5 * (pb - pa) / 4, rtol=1e-6, atol=1e-7)
    # the check can fail: gradient through both sides of each KL is a different gradient
    a3 = a.detach().clone().requires_grad_(True)
    q = b.detach().softmax(-1)
    (0.5 * (_kl(a3.softmax(-1), q) + _kl(q, a3.softmax(-1)))).mean().backward()
    assert not torch.allclose(a3.grad, a.grad, rtol=1e-3, atol=1e-6)
    # and the reference's own expression, written out with torch's kl_div, agrees in value
    ref = 0.5 * (
        F.kl_div(a.log_softmax(-1), b.softmax(-1).detach(), reduction="batchmean")
        + F.kl_div(b.log_softmax(-1), a.softmax(-1).detach(), reduction="batchmean")
    )
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_symmetric_kl_upcasts_bf16_and_checks_shapes() -> None:
    a = torch.randn(3, 4).bfloat16()
    assert symmetric_kl(a, a).dtype == torch.float32
    with pytest.raises(ValueError, match="shapes differ"):
        symmetric_kl(torch.zeros(2, 3), torch.zeros(2, 4))


def test_hidden_consistency_is_the_block_mean_of_mses() -> None:
    g = torch.Generator().manual_seed(2)
    h1 = [torch.randn(2, 5, 3, generator=g) for _ in range(2)]
    h2 = [torch.randn(2, 5, 3, generator=g) for _ in range(2)]
    expected = (F.mse_loss(h1[0], h2[0]) + F.mse_loss(h1[1], h2[1])) / 2
    assert hidden_consistency(h1, h2).item() == pytest.approx(expected.item(), rel=1e-6)
    assert hidden_consistency(h1, h1).item() == 0.0
    with pytest.raises(ValueError):
        hidden_consistency(h1, h2[:1])


def test_classification_loss_label_smoothing() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    y = torch.tensor([0])
    plain = classification_loss(logits, y)
    assert plain.item() == pytest.approx(F.cross_entropy(logits, y).item())
    smooth = classification_loss(logits, y, label_smoothing=0.3)
    logp = logits.log_softmax(-1)[0]
    expected = -(0.7 + 0.1) * logp[0] - 0.1 * logp[1] - 0.1 * logp[2]
    assert smooth.item() == pytest.approx(expected.item(), rel=1e-6)

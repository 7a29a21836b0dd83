"""make_partition: random, disjoint, covering and balanced expert sets for every granularity."""

from __future__ import annotations

import pytest
import torch

from mosa.adapters.partition import make_partition

GRANULARITIES = ("element", "row", "column")
# includes sizes not divisible by N, a single row, fewer columns than experts, and N > rows
SHAPES = [(8, 48), (48, 8), (7, 13), (1, 5), (16, 16), (10, 3), (3, 10)]
NUMS = [2, 3, 4, 7]


def _spread(counts: torch.Tensor) -> int:
    return int(counts.max() - counts.min())


def _counts(owner: torch.Tensor, n: int, dim: int | None = None) -> torch.Tensor:
    """Entries owned by each expert, overall (dim=None) or per row (1) / per column (0)."""
    experts = torch.arange(n).view(-1, 1, 1)
    onehot = owner.long().unsqueeze(0) == experts  # (n, rows, cols)
    if dim is None:
        return onehot.sum(dim=(1, 2))
    return onehot.sum(dim=dim + 1)  # (n, lines)


@pytest.mark.parametrize("n", NUMS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_disjoint_covering_balanced(granularity: str, shape: tuple[int, int], n: int) -> None:
    owner = make_partition(shape, n, granularity, torch.Generator().manual_seed(0))
    assert owner.shape == shape
    assert owner.dtype == torch.uint8
    # every entry belongs to exactly one expert in 0..n-1: the expert masks are disjoint
    # and their union is the whole matrix
    assert int(owner.min()) >= 0 and int(owner.max()) < n
    masks = torch.stack([owner == k for k in range(n)])
    assert torch.equal(masks.sum(0), torch.ones(shape, dtype=torch.long))
    counts = _counts(owner, n)
    assert int(counts.sum()) == shape[0] * shape[1]
    assert _spread(counts) <= 1, f"expert sizes {counts.tolist()}"


@pytest.mark.parametrize("n", NUMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_row_granularity_balances_each_row(shape: tuple[int, int], n: int) -> None:
    owner = make_partition(shape, n, "row", torch.Generator().manual_seed(1))
    per_row = _counts(owner, n, dim=1)  # (n, rows)
    assert per_row.shape == (n, shape[0])
    spread = per_row.max(0).values - per_row.min(0).values
    assert int(spread.max()) <= 1, per_row.T.tolist()


@pytest.mark.parametrize("n", NUMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_column_granularity_balances_each_column(shape: tuple[int, int], n: int) -> None:
    owner = make_partition(shape, n, "column", torch.Generator().manual_seed(2))
    per_col = _counts(owner, n, dim=0)  # (n, cols)
    assert per_col.shape == (n, shape[1])
    spread = per_col.max(0).values - per_col.min(0).values
    assert int(spread.max()) <= 1, per_col.T.tolist()


def test_element_granularity_is_not_row_balanced_by_accident() -> None:
    # element partitions shuffle over the whole matrix, so some row is unbalanced; this makes
    # the row/column tests above meaningful (they would not all pass for 'element')
    owner = make_partition((32, 32), 4, "element", torch.Generator().manual_seed(3))
    per_row = _counts(owner, 4, dim=1)
    assert int((per_row.max(0).values - per_row.min(0).values).max()) > 1


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_partition_is_random_and_seeded(granularity: str) -> None:
    def part(seed: int) -> torch.Tensor:
        return make_partition((16, 24), 4, granularity, torch.Generator().manual_seed(seed))

    assert torch.equal(part(5), part(5))
    assert not torch.equal(part(5), part(6))
    owner = part(5)
    # not the unshuffled round-robin pattern
    pattern = (torch.arange(16 * 24) % 4).view(16, 24).to(torch.uint8)
    assert not torch.equal(owner, pattern)
    assert not torch.equal(owner, pattern.view(24, 16).t())
    if granularity == "row":  # rows are shuffled independently
        assert any(not torch.equal(owner[0], owner[i]) for i in range(1, 16))
    if granularity == "column":
        assert any(not torch.equal(owner[:, 0], owner[:, j]) for j in range(1, 24))


def test_partition_uses_all_255_labels() -> None:
    owner = make_partition((17, 30), 255, "element", torch.Generator().manual_seed(0))
    counts = _counts(owner, 255)
    assert int(counts.min()) >= 2 and _spread(counts) <= 1


@pytest.mark.parametrize("n", [0, 256, -1])
def test_partition_rejects_bad_expert_count(n: int) -> None:
    with pytest.raises(ValueError, match="num_experts"):
        make_partition((4, 4), n)


def test_partition_rejects_bad_granularity() -> None:
    with pytest.raises(ValueError, match="granularity"):
        make_partition((4, 4), 2, "block")

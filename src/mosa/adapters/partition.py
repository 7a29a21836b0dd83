"""Random disjoint, covering, balanced partitions of a weight matrix into expert sets."""

from __future__ import annotations

import torch


def make_partition(
    shape: tuple[int, int],
    num_experts: int,
    granularity: str = "element",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return a uint8 ``owner`` tensor of ``shape``: ``owner[i, j]`` is the expert owning entry (i, j).

    Every entry has exactly one owner (disjoint and covering by construction). ``element``
    shuffles all entries; ``row`` / ``column`` shuffle inside each row / column. Labels are
    dealt round-robin over the shuffled order, continuing across rows (columns), so expert
    sizes differ by at most one, both per row (column) and overall.
    """
    if not 1 <= num_experts <= 255:
        raise ValueError(f"num_experts must be in 1..255, got {num_experts}")
    rows, cols = shape
    numel = rows * cols
    if granularity == "element":
        perm = torch.randperm(numel, generator=generator)
        owner = torch.empty(numel, dtype=torch.uint8)
        owner[perm] = (torch.arange(numel) % num_experts).to(torch.uint8)
        return owner.view(rows, cols)
    if granularity not in ("row", "column"):
        raise ValueError(f"granularity must be element, row or column, got {granularity!r}")
    transpose = granularity == "column"
    n_lines, line_len = (cols, rows) if transpose else (rows, cols)
    # argsort of uniform noise gives an independent random permutation per line
    perms = torch.rand(n_lines, line_len, generator=generator).argsort(dim=1)
    labels = (torch.arange(n_lines * line_len) % num_experts).view(n_lines, line_len)
    owner = torch.empty(n_lines, line_len, dtype=torch.uint8)
    owner.scatter_(1, perms, labels.to(torch.uint8))
    return owner.t().contiguous() if transpose else owner

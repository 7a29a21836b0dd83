"""Draw docs/assets/mosa_in_one_picture.png from the library's own partition code:
``python docs/make_figures.py`` (deterministic)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from mosa.adapters.partition import make_partition  # noqa: E402

OUT = Path(__file__).resolve().parent / "assets" / "mosa_in_one_picture.png"
EXPERTS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]


def main() -> None:
    g = torch.Generator().manual_seed(0)
    owner = make_partition((8, 16), 4, "element", g).long()
    trained = torch.randn(8, 16, generator=g)
    picked = 2
    fig, axes = plt.subplots(1, 3, figsize=(12, 2.9))
    axes[0].imshow(owner, cmap=ListedColormap(EXPERTS))
    axes[0].set_title("1. split: each entry of Up\nbelongs to one of N = 4 experts")
    step = torch.where(owner == picked, owner, torch.full_like(owner, -1))
    axes[1].imshow(step, cmap=ListedColormap(["#e6e6e6", *EXPERTS]), vmin=-1, vmax=3)
    axes[1].set_title(f"2. a training step picks expert {picked}:\nonly its entries get gradient")
    axes[2].imshow(trained / 4, cmap="RdBu", vmin=-1, vmax=1)
    axes[2].set_title("3. merge: the mean of the experts,\none dense Up (a plain adapter's cost)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)


if __name__ == "__main__":
    main()

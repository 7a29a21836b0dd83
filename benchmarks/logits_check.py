"""Eval logits of saved runs, to prove a refactor changed no number.

    python benchmarks/logits_check.py save RUN_DIR... --to before.safetensors
    python benchmarks/logits_check.py compare RUN_DIR... --to before.safetensors

Each run is loaded as `mosa eval` loads it (merged, as deployed, and unmerged) and scored on
one seeded batch; `compare` exits 1 unless every logit is bit-identical to the saved ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mosa.evaluation import adapter_tasks, load_for_eval


def logits_of(run: Path) -> dict[str, torch.Tensor]:
    """Logits of every task head of ``run``, merged and unmerged, on one seeded batch."""
    out = {}
    for task in adapter_tasks(run / "adapter") or [None]:
        for merge in (True, False):
            view = load_for_eval(run, task, merge=merge)
            size = view.model.pretrained_cfg.get("input_size", (3, 224, 224))
            x = torch.randn(8, *size, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                key = f"{run.name}/{task or 'single'}/{'merged' if merge else 'unmerged'}"
                out[key] = view(x).contiguous()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["save", "compare"])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--to", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    logits = {k: v for run in args.runs for k, v in logits_of(run).items()}
    if args.action == "save":
        save_file(logits, str(args.to))
        print(f"saved {len(logits)} logit tensors to {args.to}")
        return 0
    before = load_file(str(args.to))
    bad = [k for k in before if k not in logits or not torch.equal(before[k], logits[k])]
    for k in sorted(before):
        print(f"{k}: {'bit-identical' if k not in bad else 'DIFFERENT'}")
    return 1 if bad or before.keys() != logits.keys() else 0


if __name__ == "__main__":
    sys.exit(main())

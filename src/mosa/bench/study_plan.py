"""What ``mosa bench study`` trains: its settings, its variants (the paper's MoSA, one knob
changed at a time, the dense controls) and the order its blocks run in. Why these tasks and
variants: docs/bench-notes.md."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mosa.bench.accuracy import Variant
from mosa.bench.accuracy import plan_run as plan_variant
from mosa.recipes.sweep import SweepRun

STUDY_TASKS = ("digits_noisy", "fmnist_loc", "fmnist_count")
QUICK_TASKS = ("digits_noisy",)


@dataclass(frozen=True)
class Setting:
    """Conditions every variant of a block trains under."""

    name: str
    overrides: tuple[str, ...]
    lrs: tuple[float, ...]
    note: str
    variant_lrs: tuple[tuple[str, tuple[float, ...]], ...] = ()  # a variant's own grid

    def lrs_of(self, variant: str) -> tuple[float, ...]:
        """The learning-rate grid ``variant`` starts from in this setting."""
        return dict(self.variant_lrs).get(variant, self.lrs)


ADAPTER = Variant("adapter", "methods/adapter", ("optim.eps=1e-6",))
ADAPTER_CONS = Variant(
    "adapter_cons", "methods/adapter", ("optim.eps=1e-6", "optim.consistency=1.0")
)
MOSA_PAPER = Variant("mosa_paper", "methods/mosa_paper")
LORA = Variant("lora", "methods/lora", ("optim.eps=1e-6", "method.rank=8"))
LORA_CONS = Variant(
    "lora_cons", "methods/lora", ("optim.eps=1e-6", "method.rank=8", "optim.consistency=1.0")
)
MOSA_LORA_PAPER = Variant("mosa_lora_paper", "methods/mosa_lora_paper", ("method.rank=8",))
# the regime indicator (docs/bench-notes.md)
FULL = Variant("full", "methods/full", ("optim.eps=1e-6",))

# one factor at a time, each from the paper's MoSA
KNOBS: tuple[Variant, ...] = (
    Variant("mosa_n2", "methods/mosa_paper", ("method.num_experts=2",), "num_experts=2"),
    Variant("mosa_sample", "methods/mosa_paper", ("method.routing=sample",), "routing=sample"),
    Variant("mosa_share_up", "methods/mosa_paper", ("method.share=up",), "share=up"),
    Variant("mosa_share_none", "methods/mosa_paper", ("method.share=none",), "share=none"),
    Variant("mosa_no_cons", "methods/mosa_paper", ("optim.consistency=0",), "consistency=0"),
    Variant(
        "mosa_local", "methods/mosa_paper", ("optim.expert_updates=local",), "expert_updates=local"
    ),
    Variant("mosa_shared_bias", "methods/mosa_paper", ("method.bias=shared",), "bias=shared"),
    Variant("mosa_lr_x4", "methods/mosa_paper", ("optim.expert_lr_scale=4",), "expert_lr_scale=4"),
)

# the sharing levels x N where data is scarce (share=down, N=4 is the paper's MoSA itself)
SHARING: tuple[Variant, ...] = (
    KNOBS[0],  # mosa_n2
    KNOBS[2],  # mosa_share_up
    KNOBS[3],  # mosa_share_none
    Variant(
        "mosa_share_up_n2",
        "methods/mosa_paper",
        ("method.share=up", "method.num_experts=2"),
        "share=up, num_experts=2",
    ),
    Variant(
        "mosa_share_none_n2",
        "methods/mosa_paper",
        ("method.share=none", "method.num_experts=2"),
        "share=none, num_experts=2",
    ),
)

SHORT_LRS = (1e-2, 2e-2, 4e-2)
LONG_LRS = (5e-3, 1e-2, 2e-2)
PAPER_LRS = (5e-3, 1e-2, 2e-2)
FULL_LRS = (1e-4, 2e-4, 4e-4)
SETTINGS = {
    "base": Setting(
        "base",
        ("optim.epochs=8", "optim.warmup_epochs=1"),
        SHORT_LRS,
        "8 epochs, 800 images, bottleneck 8",
    ),
    "long": Setting("long", ("optim.epochs=24", "optim.warmup_epochs=3"), LONG_LRS, "24 epochs"),
    # the same number of optimizer steps as 8 epochs of 800 images (~104)
    "shots10": Setting(
        "shots10",
        ("optim.epochs=52", "optim.warmup_epochs=6", "data.shots=10"),
        SHORT_LRS,
        "10 images per class, 52 epochs",
    ),
    "b64": Setting(
        "b64",
        ("optim.epochs=8", "optim.warmup_epochs=1", "method.bottleneck=64"),
        SHORT_LRS,
        "bottleneck 64",
    ),
    # the published vtab/* schedule (recipes/_vitb16.yaml) on the study's tasks and images
    "paper": Setting(
        "paper",
        (
            "optim.epochs=100",
            "optim.warmup_epochs=10",
            "optim.batch_size=128",
            "optim.weight_decay=0.01",
        ),
        PAPER_LRS,
        "the published VTAB-1k schedule: 100 epochs, 10 warm-up, batch 128, weight decay 0.01",
        (("full", FULL_LRS),),
    ),
}
# the settings of the screen (the regime blocks come after it)
SCREEN_SETTINGS = ("base", "long", "shots10", "b64")
# (setting, variants) in the order they run: the control and the knobs first
BLOCKS: tuple[tuple[str, tuple[Variant, ...]], ...] = (
    ("base", (ADAPTER, ADAPTER_CONS, MOSA_PAPER, *KNOBS)),
    ("long", (ADAPTER, ADAPTER_CONS, MOSA_PAPER)),
    ("shots10", (ADAPTER, ADAPTER_CONS, MOSA_PAPER)),
    ("b64", (ADAPTER, ADAPTER_CONS, MOSA_PAPER)),
    ("base", (LORA, LORA_CONS, MOSA_LORA_PAPER)),
)
# --quick, a plumbing check that stays within minutes: one task, the base setting, the plain
# adapter, the paper's MoSA and its first knob (a gap and a knob row, each on its lr grid)
QUICK_BLOCK: tuple[str, tuple[Variant, ...]] = ("base", (ADAPTER, MOSA_PAPER, KNOBS[0]))
FINAL_SEEDS = (1, 2)
# the finals run after this many blocks (base, long, shots10): their answer matters most; the
# bottleneck and LoRA blocks follow
FINALS_AFTER = 3
# a cell whose val optimum sits at a grid end gets the next lr beyond it, up to this many times
MAX_EXTENSIONS = 4
COMMON = (
    "data.train_split=train800",
    "data.val_split=val200",
    "data.test_split=test",
    "optim.batch_size=64",
    "method.bottleneck=8",
)
# the cells that get both protocols' figures; their runs record the test accuracy after every
# epoch (eval.test_every_epoch), which nothing here reads to choose
PROTOCOL_SETTINGS = ("base", "long", "shots10", "paper")
PROTOCOL_VARIANTS = ("adapter", "adapter_cons", "mosa_paper", "mosa_best")
RECORD_TEST = "eval.test_every_epoch=true"


@dataclass
class Cell:
    """Runs of one setting x variant x task: the lr grid at seed 0, then extra seeds."""

    setting: str
    variant: Variant
    task: str
    grid: list[SweepRun] = field(default_factory=list)
    seeds: list[SweepRun] = field(default_factory=list)
    ref_seeds: list[SweepRun] = field(default_factory=list)  # at the lr test chose (record)


def at_grid_end(lr: float, lrs: Iterable[float]) -> bool:
    """Whether ``lr`` is the smallest or the largest of a grid of two or more: val's optimum
    may then lie beyond what was tried."""
    lrs = sorted(lrs)
    return len(lrs) > 1 and lr in (lrs[0], lrs[-1])


def plan_run(
    setting: Setting, variant: Variant, task: str, lr: float, seed: int, data_root: str, out: Path
) -> SweepRun:
    """One run's validated config and folder (``OUT/runs/<setting>/<task>/<variant>/...``)."""
    over = [f"data.root={data_root}", *COMMON, *setting.overrides]
    if variant.name in PROTOCOL_VARIANTS:
        over.append(RECORD_TEST)
    return plan_variant(variant, over, task, lr, seed, out / "runs" / setting.name)

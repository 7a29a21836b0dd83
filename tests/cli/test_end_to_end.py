"""End to end on real images: `mosa data prepare` writes digits, `mosa train` fine-tunes the
shipped backbone with every method for two epochs, and each beats chance by a clear margin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mosa.cli.main import main

WEIGHTS = Path(__file__).parents[2] / "src/mosa/backbones/weights/mosa_vit_fmnist.safetensors"
# chance is 10% on digits (797 test images: a standard error of about 1.7 points at 30%)
MIN_TEST_ACC = 0.30
LR = {"linear": 3e-2, "full": 1e-3, "adapter": 1e-2, "lora": 1e-2, "mosa": 1e-2, "mosa_lora": 1e-2}


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        pytest.skip("scikit-learn (digits) is not installed")
    assert main(["data", "prepare", "--tasks", "digits", "--out", str(root)]) == 0
    return root


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shipped backbone weights missing")
@pytest.mark.parametrize("method", list(LR))
def test_every_method_beats_chance_on_real_digits(
    method: str, digits_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / method
    argv = [
        "train",
        "--out",
        str(out),
        f"method={method}",
        f"data.root={digits_root}",
        "optim.epochs=2",
        "optim.warmup_epochs=0",
        f"optim.lr={LR[method]}",
        "device=cpu",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_acc"] >= MIN_TEST_ACC, summary["test_acc"]
    assert (out / "adapter" / "adapter.safetensors").is_file()

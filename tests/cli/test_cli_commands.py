"""Command-line behaviour: --help everywhere, one-line errors, train/resume/demo wiring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mosa.engine
from mosa.cli.main import main

SRC = Path(__file__).resolve().parents[2] / "src"

SUBCOMMANDS = [
    ["train"],
    ["eval"],
    ["merge"],
    ["data"],
    ["data", "prepare"],
    ["data", "list"],
    ["report"],
    ["sweep"],
    ["recipes"],
    ["bench"],
    ["demo"],
]


@pytest.mark.parametrize("cmd", [[], *SUBCOMMANDS], ids=lambda c: " ".join(c) or "mosa")
def test_help_exits_0_and_shows_an_example(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert f"  mosa {' '.join(cmd)}".rstrip() in out  # an example of this very command


class FakeTrain:
    def __init__(self) -> None:
        self.calls: list[tuple[object, bool]] = []
        self.progress: list[bool] = []

    def __call__(self, config, *, model=None, datasets=None, resume=False, progress=True):
        self.calls.append((config, resume))
        self.progress.append(progress)
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict()))
        summary = {
            "test_acc": 0.9 if config.method.method == "mosa" else 0.7,
            "val_acc": 0.8,
            "params": {"trainable": 1234},
            "wall_time_s": 3.0,
        }
        (out / "summary.json").write_text(json.dumps(summary))
        return summary


@pytest.fixture
def fake_train(monkeypatch):
    fake = FakeTrain()
    monkeypatch.setattr(mosa.engine, "train", fake, raising=False)
    return fake


def test_train_passes_the_resolved_config(fake_train, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--config", "offline/fmnist_rot", "optim.lr=1e-3", "method=adapter",
               "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert rc == 0
    ((cfg, resume),) = fake_train.calls
    assert resume is False
    assert (cfg.data[0].task, cfg.optim.lr, cfg.method.method) == ("fmnist_rot", 1e-3, "adapter")
    assert (cfg.out, cfg.device) == (str(out), "cpu")
    printed = capsys.readouterr().out
    assert "test top-1 70.00%" in printed and "trainable params 1,234" in printed


def test_train_without_config_runs_the_default_recipe(fake_train, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 0
    assert main(["train", "--out", "q", "--quiet"]) == 0
    assert fake_train.progress == [True, False]  # --quiet: no per-epoch lines, no bar
    (cfg, _), _ = fake_train.calls
    assert (cfg.backbone, cfg.method.method, cfg.data[0].task) == (
        "mosa_vit_fmnist",
        "mosa",
        "digits",
    )
    assert cfg.out == "runs/default/mosa"


def test_resume_reads_the_run_config(fake_train, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "offline/digits", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "optim.epochs=20"]) == 0
    cfg, resume = fake_train.calls[-1]
    assert resume is True and cfg.out == str(run) and cfg.optim.epochs == 20
    assert cfg.data[0].task == "digits"
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--config", "vtab/dtd"]) == 2
    assert "drop --config" in capsys.readouterr().err


def test_overrides_may_come_before_and_after_options(fake_train, tmp_path):
    argv = ["train", "seed=4", "--config", "offline/digits", "optim.lr=1e-3", "--out",
            str(tmp_path), "method=lora"]  # fmt: skip
    assert main(argv) == 0
    ((cfg, _),) = fake_train.calls
    assert (cfg.seed, cfg.optim.lr, cfg.method.method) == (4, 1e-3, "lora")
    assert main(["train", "--config", "offline/digits", "stray"]) == 2  # not key=value
    with pytest.raises(SystemExit) as exc:
        main(["train", "seed=1", "--config", "offline/digits", "stray"])
    assert exc.value.code == 2


def test_print_config_does_not_train(fake_train, capsys):
    assert main(["train", "--config", "vtab/dtd", "method=lora", "--print-config"]) == 0
    assert fake_train.calls == []
    out = capsys.readouterr().out
    assert "method: lora" in out and "task: dtd" in out
    assert "compile: false" in out
    assert main(["train", "--config", "vtab/dtd", "--compile", "--print-config"]) == 0
    assert "compile: true" in capsys.readouterr().out


def test_demo_trains_mosa_adapter_and_linear_and_prints_three_rows(
    fake_train, tmp_path, monkeypatch, capsys
):
    import mosa.data.prepare as prepare

    prepared = []
    monkeypatch.setattr(prepare, "prepare_tasks", lambda out, tasks, seed=0: prepared.append(tasks))
    rc = main(["demo", "--out", str(tmp_path / "demo"), "--data", str(tmp_path / "data"),
               "--epochs", "2"])  # fmt: skip
    assert rc == 0
    assert prepared == [["digits"]]
    assert [c.method.method for c, _ in fake_train.calls] == ["mosa", "adapter", "linear"]
    assert all(c.optim.epochs == 2 and c.data[0].root == str(tmp_path / "data")
               for c, _ in fake_train.calls)  # fmt: skip
    out = capsys.readouterr().out
    rows = [ln.split()[0] for ln in out.splitlines() if ln.endswith("s") and "%" in ln]
    assert rows == ["mosa", "adapter", "linear"]
    assert "90.00%" in out and "70.00%" in out
    assert str(tmp_path / "demo" / "mosa" / "adapter") in out
    assert main(["demo", "--out", str(tmp_path / "demo"), "--data", str(tmp_path / "data"),
                 "--epochs", "2"]) == 0  # fmt: skip
    assert len(fake_train.calls) == 3  # finished runs are reused


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--config", "nope/nope"], "is neither a file nor a packaged recipe"),
        (["train", "optim.lrr=1"], "did you mean 'optim.lr'"),
        (["train", "--config", "vtab/dtd", "data.5.task=x"], "index out of range"),
        (["merge", "{tmp}", "--out", "{tmp}/o"], "neither an adapter folder"),
        (["eval", "{tmp}/missing"], "does not exist"),
        (["eval", "{tmp}", "--data", "vtab:only"], "neither an adapter folder"),
        (["data", "prepare", "--tasks", "nosuchtask", "--out", "{tmp}/d"], "unknown project task"),
        (["sweep", "--config", "offline/_base", "--tasks", "a,a", "--out", "{tmp}/s"], "twice"),
        (["train", "--device", "tpu9"], "use auto, cpu, cuda"),
    ],
)
def test_bad_input_is_one_line_on_stderr_with_exit_2(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err.startswith("mosa: error: ")
    assert captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    assert message in captured.err


def test_backbone_weights_that_cannot_be_read_are_one_line_with_exit_2(
    tmp_path, monkeypatch, capsys
):
    from mosa.backbones.zoo import load_backbone

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")

    def train(cfg, **kwargs):  # the engine's first step: the backbone with its weights
        return load_backbone("mosa_vit_fmnist", num_classes=10, weights=str(bad))

    monkeypatch.setattr(mosa.engine, "train", train, raising=False)
    assert main(["train", "--out", str(tmp_path / "run"), f"weights={bad}"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("mosa: error")]
    assert len(err) == 1 and err[0].startswith("mosa: error: could not read "), err
    assert "weights_only=False" not in err[0]  # never advise loading code from a weights file


def test_debug_shows_the_exception(tmp_path):
    from mosa.config import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "train", "optim.lrr=1"])
    with pytest.raises(ConfigError):
        main(["train", "optim.lrr=1", "--debug"])


def test_python_dash_m_mosa(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    res = subprocess.run(
        [sys.executable, "-m", "mosa", "train", "--config", "vtab/dtd", "optim.lrr=1"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert res.stderr.startswith("mosa: error: unknown key 'optim.lrr'")


def test_recipes_lists_and_shows(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "vtab/dtd" in out and "fgvc/stanford_cars" in out and "_base" not in out
    assert main(["recipes", "--show", "fgvc/stanford_cars"]) == 0
    shown = capsys.readouterr().out
    assert "num_experts: 2" in shown and "share: up" in shown

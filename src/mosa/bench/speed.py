"""``mosa bench speed``: training and inference cost of every method on one backbone, in one run.

Training variants (same backbone weights, input and batch): ``linear`` (head only), ``adapter``,
``mosa`` (consistency off), ``mosa_consistency`` (two passes per step, run as the engine runs
them: one forward on the doubled batch with per-half expert picks; symmetric KL, CE on pass 1),
``mosa_sparse_adamw``, ``lora``, ``mosa_lora`` and ``mosa_reference`` (the N-copy
implementation of :mod:`mosa.bench.reference`). For each: median time of the engine's training
step (:func:`mosa.engine.step.train_step`: forward, backward and an AdamW step), peak memory,
trainable and stored parameter counts and AdamW state size. Inference throughput (eval, no
grad) for the backbone alone, ``adapter`` and the merged ``mosa``, ``lora`` and ``mosa_lora``.
Ratios to ``adapter`` (training) and to the backbone (inference) are all "time or memory of
the variant / the baseline's": lower is better (:mod:`mosa.bench.tables`).

``compile`` adds ``<variant>_compiled`` rows (``torch.compile``, default inductor backend) for
``adapter``, ``mosa``, ``mosa_consistency``, ``lora`` and ``mosa_lora``, timed in the same
interleaved rounds as the eager rows, with the compiled/eager ratio per method. Every row also
reports the fraction of the machine's matmul rate (measured in the same run, same threads) that
its step reaches, from the step's matmul FLOPs.

The command line is ``mosa bench speed`` (:mod:`mosa.cli.bench.speed`).
"""

from __future__ import annotations

import functools
import json
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

import mosa
from mosa.bench.memory import (
    MEMORY_METHOD_CPU,
    MEMORY_METHOD_CUDA,
    measure_step_memory,
    optimizer_state_bytes,
)
from mosa.bench.presets import (
    INFER_VARIANTS,
    LR,
    PRESETS,
    WEIGHT_DECAY,
    Preset,
    method_settings,
    preset_name,
)
from mosa.bench.projection import split_projection_bench
from mosa.bench.tables import (
    OTHER_RATIOS,
    PAIRED_RATIOS,
    RATIOS,
    TARGETS,
    compiled_ratios,
    ratio_table,
    targets_met,
)
from mosa.bench.timing import median, quartiles, time_interleaved
from mosa.bench.utilisation import counted_flops, flop_section
from mosa.bench.variants import (
    Variant,
    build_backbone,
    build_variants,
    count_params,
    describe,
    embed_dim,
    input_size,
    model_info,
    stepper,
    stored_counts,
    tokens_per_image,
)
from mosa.engine.evaluate import autocast
from mosa.engine.records import device_name

__all__ = ["SpeedRun", "run_speed_bench"]

Say = Callable[[str], None]
Rows = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class SpeedRun:
    """What one run measures on: the preset's values with the caller's overrides applied."""

    preset_name: str
    preset: Preset
    device: torch.device
    model: str
    overrides: dict[str, Any]
    img_size: int | None
    batch: int
    rounds: int
    method: dict[str, Any]
    amp: torch.dtype | None

    @classmethod
    def resolve(
        cls,
        device: str,
        model: str | None,
        batch_size: int | None,
        img_size: int | None,
        steps: int | None,
        quick: bool,
    ) -> SpeedRun:
        """Defaults from the device's preset (``quick``: the tiny one). A ``model`` of one's
        own drops the preset's size overrides; ``steps`` sets the timed training rounds."""
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but torch.cuda.is_available() is False")
        name = preset_name(dev, quick)
        preset = PRESETS[name]
        img = img_size if img_size is not None else (preset.img_size if model is None else None)
        run = cls(
            preset_name=name,
            preset=preset,
            device=dev,
            model=model or preset.model,
            overrides=dict(preset.model_kwargs) if model is None else {},
            img_size=img,
            batch=batch_size or preset.batch_size,
            rounds=steps if steps is not None else preset.steps,
            method=method_settings(preset),
            amp=preset.amp_dtype if dev.type == "cuda" else None,
        )
        if run.rounds < 1 or run.batch < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {run.rounds} and {run.batch}")
        return run


def _restores_thread_count(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The thread count is process-wide: put it back after ``fn`` whatever ``fn`` set."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        prev_threads = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(prev_threads)

    return wrapper


@_restores_thread_count
def run_speed_bench(
    device: str,
    out: str | None,
    *,
    model: str | None = None,
    batch_size: int | None = None,
    img_size: int | None = None,
    steps: int | None = None,
    quick: bool = False,
    seed: int = 0,
    threads: int | None = None,
    compile: bool = False,
    log: Say | None = None,
) -> dict[str, Any]:
    """Run the benchmark, write the JSON to ``out`` (if given) and return the result dict.

    Defaults come from a preset (:data:`mosa.bench.presets.PRESETS`): ``cuda`` (ViT-B/16, 224
    px, batch 128, bf16 autocast), ``cpu`` (a 6-block ViT-Ti-like model at 32 px, patch 8,
    batch 32, float32, 1 thread) or ``quick`` (a tiny model, a few steps: plumbing only).
    ``model`` names any timm model (random weights). ``threads``: CPU intra-op threads; on
    CPU the default is 1 (why: docs/bench-notes.md). ``compile``: add the ``torch.compile``
    rows (their compilation happens in the warm-up).
    """
    t_start = time.perf_counter()
    say = log or (lambda _msg: None)
    run = SpeedRun.resolve(device, model, batch_size, img_size, steps, quick)
    dev = run.device
    rng = random.Random(seed)
    if threads is not None or dev.type == "cpu":
        torch.set_num_threads(threads or 1)
    torch.manual_seed(seed)
    base = build_backbone(run.model, run.overrides, run.img_size, run.preset.num_classes).to(dev)
    chans, h, w = input_size(base)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(run.batch, chans, h, w, generator=gen).to(dev)
    y = torch.randint(run.preset.num_classes, (run.batch,), generator=gen).to(dev)
    variants = build_variants(base, run.method, dev, compile)
    say(f"[speed] {run.model} {h}x{w}, batch {run.batch}, {dev.type}, {len(variants)} variants")
    step_flops = counted_flops({n: v.model for n, v in variants.items()}, x, y)
    rows, times = _training_rows(variants, x, y, run, rng, say)
    _inference_rows(rows, variants, x, run, rng, say)
    projection = _projection(base, run, rng, say)
    flops = flop_section(
        base, rows, run.method["bottleneck"], run.batch, dev, run.amp, run.preset, step_flops
    )
    result = _result(run, _settings(run, base, (chans, h, w), seed), rows, times, flops, projection)
    result["elapsed_s"] = time.perf_counter() - t_start
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    return result


def _projection(base: nn.Module, run: SpeedRun, rng: random.Random, say: Say) -> dict[str, Any]:
    """Where a split projection's time goes, at the adapter Up shape of this run."""
    tokens = tokens_per_image(base)
    say("[speed] split projection micro-benchmark")
    return split_projection_bench(
        run.batch * tokens if tokens else run.batch * 197,
        run.method["bottleneck"],
        embed_dim(base),
        run.method["num_experts"],
        run.device,
        run.amp,
        rounds=max(5, min(2 * run.rounds, 60)),
        rng=rng,
    )


def _settings(
    run: SpeedRun, base: nn.Module, image: tuple[int, int, int], seed: int
) -> dict[str, Any]:
    """The run's settings as the JSON reports them."""
    amp = run.amp
    return {
        "preset": run.preset_name,
        "model": model_info(base, run.model, run.overrides),
        "method": run.method,
        "batch_size": run.batch,
        "input_shape": [run.batch, *image],
        "dtype": f"autocast({str(amp).replace('torch.', '')})" if amp else "float32",
        "steps": run.rounds,
        "warmup_steps": run.preset.warmup,
        "infer_steps": run.preset.infer_steps,
        **_method_text(seed, run.preset.warmup),
    }


def _result(
    run: SpeedRun,
    settings: dict[str, Any],
    rows: Rows,
    times: dict[str, list[float]],
    flops: dict[str, Any] | None,
    projection: dict[str, Any],
) -> dict[str, Any]:
    """The benchmark's JSON document: environment, run settings, rows and every ratio."""
    dev = run.device
    ratios = ratio_table(RATIOS, rows)
    return {
        "schema": "mosa.bench.speed/1",
        "device": dev.type,
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "mosa": mosa.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        **settings,
        "optimizer": f"AdamW(lr={LR}, weight_decay={WEIGHT_DECAY})",
        "memory_method": MEMORY_METHOD_CUDA if dev.type == "cuda" else MEMORY_METHOD_CPU,
        "rows": list(rows.values()),
        "ratios": ratios,
        "paired_ratios": ratio_table(PAIRED_RATIOS, rows, times),
        "compiled_vs_eager": compiled_ratios(rows, times),
        "other_ratios": ratio_table(OTHER_RATIOS, rows),
        "targets": dict(TARGETS),
        "targets_met": targets_met(ratios),
        "flops": flops,
        "split_projection": projection,
        "notes": _notes(dev),
    }


def _method_text(seed: int, warmup: int) -> dict[str, str]:
    return {
        "timing_method": (
            "median of per-step wall times (device synchronised before and after each step); "
            "a training step is the engine's (mosa.engine.step.train_step): zero_grad + forward "
            "(for consistency: one forward on the doubled batch, each half with its own picks) "
            "+ loss + backward + AdamW step; inference is one eval forward under inference_mode"
        ),
        "order": (
            f"interleaved: every round runs each variant once in a freshly shuffled order "
            f"(seed {seed}), {warmup} warm-up rounds not recorded; medians over rounds, so "
            "slow drift or noise in machine load does not favour any one variant"
        ),
    }


def _notes(dev: torch.device) -> list[str]:
    notes = [
        "ratios are (variant time or memory) / (baseline's): lower is better; the inference "
        "ratios are time ratios, i.e. baseline img/s / variant img/s",
        "optimizer_state_bytes is measured after all timed steps (steady state); "
        "optimizer_state_bytes_after_first_step after one step, where the reference has state "
        "only for the experts that step picked",
        "stored_params counts every tensor element an adapter checkpoint holds (MoSA's uint8 "
        "owner index included; the reference's masks are not saved, as in its code)",
        "the linear row's inference throughput is the frozen backbone alone (backbone + head)",
    ]
    if dev.type == "cpu":
        notes.append("CPU timings on a shared machine are noisy; use the CUDA run for the targets")
    return notes


def _json_default(o: object) -> object:
    if isinstance(o, torch.dtype):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _training_rows(
    variants: dict[str, Variant],
    x: torch.Tensor,
    y: torch.Tensor,
    run: SpeedRun,
    rng: random.Random,
    say: Say,
) -> tuple[Rows, dict[str, list[float]]]:
    """Step times (interleaved rounds), memory, counts and optimizer state of every variant."""
    first_state: dict[str, int] = {}

    def record_first_state() -> None:
        first_state.update({n: optimizer_state_bytes(v.optimizer) for n, v in variants.items()})

    warmup = run.preset.warmup
    say(f"[speed] training: {warmup} warm-up + {run.rounds} timed rounds")
    times = time_interleaved(
        {n: stepper(v, x, y, run.amp) for n, v in variants.items()},
        run.rounds,
        warmup,
        run.device,
        rng,
        say,
        after_first=record_first_state,
    )
    # memory, counts, optimizer state (state is at its steady size after the rounds)
    say("[speed] memory: one measured step per variant")
    rows: Rows = {}
    for n, v in variants.items():
        step = stepper(v, x, y, run.amp)
        memory = measure_step_memory(v.model, v.optimizer, step, run.device, x, y)
        rows[n] = _training_row(n, v, times[n], x.shape[0], memory, first_state.get(n))
    return rows, times


def _training_row(
    n: str,
    v: Variant,
    times: list[float],
    batch: int,
    memory: tuple[int, int | None],
    first_state: int | None,
) -> dict[str, Any]:
    """One variant's row: step time statistics, memory, counts and optimizer state."""
    resident, transient = memory
    stored, stored_b = stored_counts(n, v.model)
    med = median(times)
    q1, q3 = quartiles(times)
    return {
        "variant": n,
        "description": describe(n),
        "train_step_s": med,
        "train_step_s_q1": q1,
        "train_step_s_q3": q3,
        "train_step_s_min": min(times) if times else None,
        "train_step_times_s": times,
        "train_img_s": batch / med if med else None,
        "peak_mem_bytes": resident + transient if transient is not None else None,
        "resident_bytes": resident,
        "step_peak_above_resident_bytes": transient,
        "trainable_params": count_params(v.model, trainable_only=True),
        "stored_params": stored,
        "stored_bytes": stored_b,
        "optimizer_state_bytes": optimizer_state_bytes(v.optimizer),
        "optimizer_state_bytes_after_first_step": first_state,
        "infer_img_s": None,
        "infer_of": None,
    }


def _inference_rows(
    rows: Rows,
    variants: dict[str, Variant],
    x: torch.Tensor,
    run: SpeedRun,
    rng: random.Random,
    say: Say,
) -> None:
    """Inference img/s of the backbone, the adapter and the merged methods, into ``rows``."""
    dev, amp = run.device, run.amp
    for n in [k for k in variants if k not in INFER_VARIANTS]:
        del variants[n]  # free device memory before inference
    infer_models: dict[str, nn.Module] = {}
    for n, kind in INFER_VARIANTS.items():
        m = variants[n].model
        variants[n].optimizer.state.clear()
        if kind == "merged":
            mosa.merge(m)
        infer_models[n] = m.eval()
        rows[n]["infer_of"] = kind
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    def inferer(m: nn.Module) -> Callable[[], None]:
        def run_once() -> None:
            with torch.inference_mode(), autocast(dev, amp):
                m(x)

        return run_once

    rounds = run.preset.infer_steps
    say(f"[speed] inference: 3 warm-up + {rounds} timed rounds")
    itimes = time_interleaved(
        {n: inferer(m) for n, m in infer_models.items()}, rounds, 3, dev, rng, say
    )
    for n, ts in itimes.items():
        med = median(ts)
        rows[n]["infer_img_s"] = x.shape[0] / med if med else None

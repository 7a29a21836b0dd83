"""``mosa bench speed``: training and inference cost of every method on one backbone, in one run.

Training variants (same backbone weights, input and batch): ``linear`` (head only), ``adapter``,
``mosa`` (consistency off), ``mosa_consistency`` (two passes per step, run as the engine runs
them: one forward on the doubled batch with per-half expert picks; symmetric KL, CE on pass 1),
``lora``, ``mosa_lora`` and ``mosa_reference`` (the N-copy implementation of
:mod:`mosa.bench.reference`). For each: median training-step time (forward, backward and an AdamW
step), peak memory, trainable and stored parameter counts and AdamW state size. Inference
throughput (eval, no grad) for the backbone alone, ``adapter`` and the merged ``mosa``, ``lora``
and ``mosa_lora``. Ratios to ``adapter`` (training) and to the backbone (inference) are all
"time or memory of the variant / the baseline's": lower is better.

``--compile`` adds ``<variant>_compiled`` rows (``torch.compile``, default inductor backend) for
``adapter``, ``mosa``, ``mosa_consistency``, ``lora`` and ``mosa_lora``, timed in the same
interleaved rounds as the eager rows, with the compiled/eager ratio per method. Every row also
reports the fraction of the machine's matmul rate (measured in the same run, same threads) that
its step reaches, from the step's matmul FLOPs.

Run ``python -m mosa.bench.speed --device cpu --out speed.json`` (or ``--device cuda``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

import mosa
from mosa.adapters.sparse import MoSALinear
from mosa.bench.flops import ViTShape, measure_matmul_rate, vit_train_flops
from mosa.bench.reference import ReferenceSplitLinear, inject_reference, reference_state_dict
from mosa.engine.losses import symmetric_kl
from mosa.engine.records import device_name
from mosa.model import adapter_state_dict, draw_routes, forward_twice

# ------------------------------------------------------------------------------------ settings

TRAIN_VARIANTS: dict[str, str] = {
    "linear": "head only; frozen backbone (its inference row is the backbone alone)",
    "adapter": "AdaptFormer parallel adapter",
    "mosa": "MoSA adapter (one tensor + owner index), consistency off",
    "mosa_consistency": "MoSA, 2 passes (one doubled-batch forward) + symmetric KL, CE on pass 1",
    "mosa_sparse_adamw": "MoSA with the engine's expert-local AdamW (optim.expert_updates=local)",
    "lora": "LoRA on q and v",
    "mosa_lora": "MoSA-LoRA on q and v",
    "mosa_reference": "reference-style MoSA: N expert copies + merge copy, grads masked",
}
# methods that --compile adds a compiled row for (named "<method>_compiled")
COMPILED_VARIANTS = ("adapter", "mosa", "mosa_consistency", "lora", "mosa_lora")
COMPILED_SUFFIX = "_compiled"
# inference variant -> what is timed
INFER_VARIANTS: dict[str, str] = {
    "linear": "backbone",
    "adapter": "adapter",
    "mosa": "merged",
    "lora": "merged",
    "mosa_lora": "merged",
}
RATIO_KEYS = (
    "mosa_step_vs_adapter",
    "mosa_mem_vs_adapter",
    "mosa_consistency_step_vs_adapter",
    "mosa_merged_infer_vs_adapter",
    "mosa_lora_merged_infer_vs_backbone",
    "reference_step_vs_adapter",
    "reference_mem_vs_adapter",
)
TARGETS = {
    "mosa_step_vs_adapter": 1.05,
    "mosa_mem_vs_adapter": 1.02,
    "mosa_consistency_step_vs_adapter": 2.05,
    "mosa_merged_infer_vs_adapter": 1.02,
    "mosa_lora_merged_infer_vs_backbone": 1.02,
}
LR, WEIGHT_DECAY = 1e-3, 0.01

MEMORY_METHOD_CUDA = (
    "peak_mem_bytes = bytes resident before the step (parameters, buffers, AdamW state, input "
    "batch; gradients freed by zero_grad(set_to_none=True)) + the step's peak allocation above "
    "that: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus "
    "memory_allocated() before the step (allocated, not reserved, bytes)"
)
MEMORY_METHOD_CPU = (
    "peak_mem_bytes = bytes resident before the step (parameters, buffers, AdamW state, input "
    "batch; gradients freed by zero_grad(set_to_none=True)) + the step's peak allocation above "
    "that, read from torch's CPU allocator: one step run under torch.profiler with "
    "profile_memory=True, whose allocation events carry the allocator's running total of live "
    "bytes; the peak of that total minus its value before the step. This is the CPU analogue of "
    "CUDA max_memory_allocated (exact tensor bytes, intermediates inside ops included); RSS is "
    "blurred by malloc caching and by other processes, and tracemalloc does not see torch's "
    "allocations"
)


@dataclass(frozen=True)
class Preset:
    """Backbone and run lengths for one kind of run."""

    model: str
    model_kwargs: dict[str, Any]
    img_size: int
    batch_size: int
    steps: int  # timed training rounds (one step per variant per round)
    warmup: int  # untimed rounds before them
    infer_steps: int
    num_classes: int
    amp_dtype: torch.dtype | None  # autocast dtype; None = the parameters' float32
    matmul_n: int
    matmul_iters: int
    method: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    # ViT-B/16 at 224 with the paper's batch, bf16 autocast: about a minute on an H100
    "cuda": Preset(
        model="vit_base_patch16_224",
        model_kwargs={},
        img_size=224,
        batch_size=128,
        steps=60,
        warmup=8,
        infer_steps=50,
        num_classes=100,
        amp_dtype=torch.bfloat16,
        matmul_n=8192,
        matmul_iters=50,
    ),
    # ViT-Ti-like (width 192, 3 heads, depth 6) at 32 px, patch 8 (17 tokens): ~1 min on 1 core
    "cpu": Preset(
        model="vit_tiny_patch16_224",
        model_kwargs={"patch_size": 8, "depth": 6},
        img_size=32,
        batch_size=32,
        steps=60,
        warmup=3,
        infer_steps=30,
        num_classes=100,
        amp_dtype=None,
        matmul_n=1024,
        matmul_iters=20,
    ),
    # plumbing checks: seconds
    "quick": Preset(
        model="vit_tiny_patch16_224",
        model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
        img_size=32,
        batch_size=4,
        steps=3,
        warmup=1,
        infer_steps=3,
        num_classes=10,
        amp_dtype=None,
        matmul_n=128,
        matmul_iters=2,
        method={"bottleneck": 8, "rank": 4},
    ),
}


# ------------------------------------------------------------------------------------ helpers


@dataclass
class Variant:
    """One trained configuration: its model, optimizer and step settings."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    consistency: bool = False
    tracker: Any = None  # engine ExpertTracker feeding SparseAdamW its expert masks
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # e.g. torch.compile(model)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train_step(
    v: Variant, x: torch.Tensor, y: torch.Tensor, device: torch.device, dtype: torch.dtype | None
) -> None:
    """One training step: forward (both consistency passes at once), loss, backward, AdamW step."""
    v.optimizer.zero_grad(set_to_none=True)
    if v.tracker is not None:
        v.tracker.reset()
    forward = v.model if v.forward is None else v.forward
    with _autocast(device, dtype):
        if v.consistency:  # the engine's way: both passes as one forward on a doubled batch
            logits, logits2 = forward_twice(v.model, x, forward)
        else:
            draw_routes(v.model, x.shape[0])  # as the engine: picks drawn outside the forward
            logits, logits2 = forward(x), None
    loss = F.cross_entropy(logits.float(), y)
    if logits2 is not None:
        loss = loss + symmetric_kl(logits, logits2)
    loss.backward()
    if v.tracker is not None:
        v.optimizer.set_active(v.tracker.masks())
    v.optimizer.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], None]],
    rounds: int,
    warmup: int,
    device: torch.device,
    rng: random.Random,
    log: Callable[[str], None] | None = None,
    after_first: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Per-call times of every function, interleaved: each round calls every function once, in
    a freshly shuffled order, so drift in machine load or clocks spreads over all variants
    instead of favouring the ones measured first or last. The first ``warmup`` rounds are not
    recorded."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(warmup + rounds):
        rng.shuffle(order)
        for name in order:
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
        if r == 0 and after_first is not None:
            after_first()
        if log is not None and (r + 1) % max(1, (warmup + rounds) // 5) == 0:
            log(f"  round {r + 1}/{warmup + rounds}")
    return times


def _storage_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (shared storage counted once)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if t is None:
            continue
        st = t.untyped_storage()
        seen[(str(st.device), st.data_ptr())] = st.nbytes()
    return sum(seen.values())


def _optimizer_tensors(opt: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                yield v


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (AdamW: exp_avg, exp_avg_sq, step)."""
    return _storage_bytes(_optimizer_tensors(opt))


def resident_bytes(v: Variant, *extra: torch.Tensor) -> int:
    """Bytes live between steps: parameters, buffers, gradients, optimizer state, ``extra``."""
    m = v.model
    return _storage_bytes(
        [
            *m.parameters(),
            *m.buffers(),
            *(p.grad for p in m.parameters()),
            *_optimizer_tensors(v.optimizer),
            *extra,
        ]
    )


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null (C++ logging bypasses ``sys.stderr``)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_step_peak(fn: Callable[[], None]) -> int | None:
    """Peak bytes allocated by ``fn`` above what was live before it, from torch's CPU allocator
    (its running total, reported to the profiler with every allocation and free)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    # the native profiler logs a few lines to fd 2 when it starts and stops: silence only those
    with _native_stderr_silenced():
        prof.start()
    try:
        fn()
    finally:
        with _native_stderr_silenced():
            prof.stop()
    try:
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
    except (AttributeError, RuntimeError):  # private profiler API changed
        return None
    events: list[tuple[int, int, int]] = []
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            f = e.extra_fields
            events.append((e.start_time_ns, int(f.alloc_size), int(f.total_allocated)))
    if not events:
        return 0
    events.sort()
    # the total counts only allocations made while some profiler ran; what matters is its rise
    before = events[0][2] - events[0][1]
    return max(0, max(e[2] for e in events) - before)


def measure_step_memory(
    v: Variant, step: Callable[[], None], device: torch.device, *extra: torch.Tensor
) -> tuple[int, int | None]:
    """(resident bytes before the step, the step's peak allocation above them)."""
    v.optimizer.zero_grad(set_to_none=True)
    resident = resident_bytes(v, *extra)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return resident, torch.cuda.max_memory_allocated(device) - base
    return resident, cpu_step_peak(step)


def count_params(m: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad or not trainable_only)


def stored_counts(name: str, model: nn.Module) -> tuple[int, int]:
    """(elements, bytes) an adapter checkpoint of this variant holds (index buffers included)."""
    sd = reference_state_dict(model) if name == "mosa_reference" else adapter_state_dict(model)
    return sum(t.numel() for t in sd.values()), sum(t.nbytes for t in sd.values())


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _quantiles(xs: list[float]) -> tuple[float | None, float | None]:
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (None, None)
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def split_projection_bench(
    rows: int,
    in_features: int,
    out_features: int,
    num_experts: int,
    device: torch.device,
    dtype: torch.dtype | None,
    rounds: int = 20,
    calls: int = 20,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """Forward+backward time of one projection ``in -> out`` on ``rows`` rows: dense
    ``nn.Linear``, mosa's :class:`MoSALinear` (zero init, as a split Up) and the reference's N
    copies, plus the pieces of MoSALinear's training forward timed alone (expert draw, mask,
    masked weight). Each sample is ``calls`` back-to-back calls, so GPU launch overhead shows
    only where it is not hidden behind the matmuls, as in a real step."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=gen).to(device).requires_grad_(True)
    dense = nn.Linear(in_features, out_features).to(device)
    split = MoSALinear(in_features, out_features, num_experts=num_experts).to(device)
    owner = split.owner.cpu()
    ref = ReferenceSplitLinear(
        in_features, out_features, num_experts=num_experts, init="zero", owner=owner, seed=0
    ).to(device)

    def fwd_bwd(mod: nn.Module) -> Callable[[], None]:
        def run() -> None:
            for _ in range(calls):
                with _autocast(device, dtype):
                    out = mod(x)
                out.float().sum().backward()

        return run

    def piece(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(calls):
                fn()

        return run

    fns = {
        "dense_linear": fwd_bwd(dense),
        "mosa_linear": fwd_bwd(split),
        "reference_linear": fwd_bwd(ref),
        "draw_expert": piece(lambda: int(split.draw(1))),
        "owner_eq_k": piece(lambda: split.owner == 1),
        "weight_times_mask": piece(lambda: split.expert_weight(1)),
    }
    t = time_interleaved(fns, rounds, 2, device, rng or random.Random(0))
    # best of the rounds: the least disturbed estimate of a few-microsecond cost, which on a
    # shared machine a median can miss when most samples catch a scheduler preemption
    per_call_us = {n: min(v) / calls * 1e6 for n, v in t.items()}
    return {
        "shape": {"rows": rows, "in": in_features, "out": out_features},
        "dtype": str(dtype or torch.float32).replace("torch.", ""),
        "statistic": f"best of {rounds} samples of {calls} back-to-back calls",
        "per_call_us": per_call_us,
        "per_call_us_median": {n: statistics.median(v) / calls * 1e6 for n, v in t.items()},
        "mosa_vs_dense": _ratio(per_call_us["mosa_linear"], per_call_us["dense_linear"]),
        "reference_vs_dense": _ratio(per_call_us["reference_linear"], per_call_us["dense_linear"]),
    }


def _tokens_per_image(base: nn.Module) -> int | None:
    try:
        return ViTShape.from_model(base).tokens
    except (TypeError, AttributeError):
        return None


def _embed_dim(base: nn.Module) -> int:
    return int(getattr(base, "embed_dim", None) or getattr(base, "num_features", 768))


# ------------------------------------------------------------------------------------ building


def _build_backbone(
    name: str, kwargs: dict[str, Any], img_size: int | None, num_classes: int
) -> nn.Module:
    kw = dict(kwargs)
    if img_size is not None:
        kw["img_size"] = img_size
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)


def _build_variant(
    name: str, base: nn.Module, method: dict[str, Any], device: torch.device
) -> Variant:
    model = copy.deepcopy(base)
    if name == "mosa_reference":
        inject_reference(
            model,
            bottleneck=method["bottleneck"],
            num_experts=method["num_experts"],
            share=method["share"],
            seed=method["seed"],
        )
    else:
        m = "mosa" if name in ("mosa_consistency", "mosa_sparse_adamw") else name
        mosa.inject(model, mosa.MethodConfig(method=m, **method))
    model.to(device).train()
    if name == "mosa_sparse_adamw":
        from mosa.engine.config import OptimConfig
        from mosa.engine.optim import ExpertTracker, build_optimizer

        ocfg = OptimConfig(lr=LR, weight_decay=WEIGHT_DECAY, expert_updates="local")
        opt = build_optimizer(model, ocfg)
        return Variant(name, model, opt, tracker=ExpertTracker(model))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    return Variant(name, model, opt, consistency=name == "mosa_consistency")


def _model_info(base: nn.Module, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {"name": name, "overrides": kwargs, "params": count_params(base)}
    pe = getattr(base, "patch_embed", None)
    if pe is not None and hasattr(pe, "img_size"):
        info["img_size"] = list(pe.img_size)
        info["patch_size"] = list(pe.patch_size)
    for attr in ("embed_dim", "num_classes", "num_prefix_tokens"):
        if hasattr(base, attr):
            info[attr] = int(getattr(base, attr))
    blocks = getattr(base, "blocks", None)
    if blocks is not None:
        info["depth"] = len(blocks)
        attn = getattr(blocks[0], "attn", None)
        if attn is not None and hasattr(attn, "num_heads"):
            info["num_heads"] = int(attn.num_heads)
    return info


def _input_size(base: nn.Module) -> tuple[int, int, int]:
    cfg = getattr(base, "pretrained_cfg", {}) or {}
    pe = getattr(base, "patch_embed", None)
    if pe is not None and getattr(pe, "img_size", None) is not None:
        return int(pe.proj.in_channels), int(pe.img_size[0]), int(pe.img_size[1])
    c, h, w = cfg.get("input_size", (3, 224, 224))
    return int(c), int(h), int(w)


# ------------------------------------------------------------------------------------ the run


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
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark, write the JSON to ``out`` (if given) and return the result dict.

    Defaults come from a preset: ``cuda`` (ViT-B/16, 224 px, batch 128, bf16 autocast), ``cpu``
    (a 6-block ViT-Ti-like model at 32 px, patch 8, batch 32, float32, 1 thread) or ``quick`` (a tiny
    model, a few steps: plumbing only). ``model`` names any timm model (random weights) and
    drops the preset's size overrides; ``steps`` sets the number of timed training rounds.
    ``threads``: CPU intra-op threads; on CPU the default is 1, because on a shared machine
    multi-threaded steps stall at every OpenMP barrier whenever another process holds a core,
    which swings step times by 2-3x and swamps the differences being measured.
    ``compile``: add the ``torch.compile`` rows (their compilation happens in the warm-up).
    """
    t_start = time.perf_counter()
    say = log or (lambda _msg: None)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch.cuda.is_available() is False")
    preset_name = "quick" if quick else ("cuda" if dev.type == "cuda" else "cpu")
    preset = PRESETS[preset_name]
    name = model or preset.model
    overrides = dict(preset.model_kwargs) if model is None else {}
    img = img_size if img_size is not None else (preset.img_size if model is None else None)
    batch = batch_size or preset.batch_size
    rounds = steps if steps is not None else preset.steps
    if rounds < 1 or batch < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {rounds} and {batch}")
    # shared biases: the single-tensor layout at exactly the adapter's trainable parameters
    # (the paper's per-expert biases add (N-1)·out per split projection; see mosa.summary)
    method = {
        "bottleneck": 16,
        "rank": 16,
        "num_experts": 4,
        "share": "down",
        "seed": 3407,
        "bias": "shared",
    }
    method.update(preset.method)
    amp = preset.amp_dtype if dev.type == "cuda" else None
    rng = random.Random(seed)
    if threads is not None or dev.type == "cpu":
        torch.set_num_threads(threads or 1)

    torch.manual_seed(seed)
    base = _build_backbone(name, overrides, img, preset.num_classes).to(dev)
    chans, h, w = _input_size(base)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, chans, h, w, generator=gen).to(dev)
    y = torch.randint(preset.num_classes, (batch,), generator=gen).to(dev)
    variants = _build_variants(base, method, dev, compile)
    say(f"[speed] {name} {h}x{w}, batch {batch}, {dev.type}, {len(variants)} variants")
    step_flops = _counted_flops(variants, x, y)
    rows, times = _training_rows(variants, x, y, dev, amp, rounds, preset.warmup, rng, say)
    _inference_rows(rows, variants, x, dev, amp, preset.infer_steps, rng, say)

    # ---- where a split projection's time goes, at the adapter Up shape of this run
    tokens = _tokens_per_image(base)
    say("[speed] split projection micro-benchmark")
    projection = split_projection_bench(
        batch * tokens if tokens else batch * 197,
        method["bottleneck"],
        _embed_dim(base),
        method["num_experts"],
        dev,
        amp,
        rounds=max(5, min(2 * rounds, 60)),
        rng=rng,
    )
    flops = _flop_section(base, rows, method["bottleneck"], batch, dev, amp, preset, step_flops)
    run = {
        "preset": preset_name,
        "model": _model_info(base, name, overrides),
        "method": method,
        "batch_size": batch,
        "input_shape": [batch, chans, h, w],
        "dtype": f"autocast({str(amp).replace('torch.', '')})" if amp else "float32",
        "steps": rounds,
        "warmup_steps": preset.warmup,
        "infer_steps": preset.infer_steps,
        **_method_text(seed, preset.warmup),
    }
    result = _result(dev, run, rows, times, flops, projection)
    result["elapsed_s"] = time.perf_counter() - t_start
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    return result


def _result(
    dev: torch.device,
    run: dict[str, Any],
    rows: dict[str, dict[str, Any]],
    times: dict[str, list[float]],
    flops: dict[str, Any] | None,
    projection: dict[str, Any],
) -> dict[str, Any]:
    """The benchmark's JSON document: environment, run settings, rows and every ratio."""
    ratios = _ratios(rows)
    return {
        "schema": "mosa.bench.speed/1",
        "device": dev.type,
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "mosa": mosa.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        **run,
        "optimizer": f"AdamW(lr={LR}, weight_decay={WEIGHT_DECAY})",
        "memory_method": MEMORY_METHOD_CUDA if dev.type == "cuda" else MEMORY_METHOD_CPU,
        "rows": list(rows.values()),
        "ratios": ratios,
        "paired_ratios": _paired_ratios(times),
        "compiled_vs_eager": _compiled_ratios(rows, times),
        "other_ratios": _other_ratios(rows),
        "targets": dict(TARGETS),
        "targets_met": {
            k: (None if ratios[k] is None else bool(ratios[k] <= t)) for k, t in TARGETS.items()
        },
        "flops": flops,
        "split_projection": projection,
        "notes": _notes(dev),
    }


def _method_text(seed: int, warmup: int) -> dict[str, str]:
    return {
        "timing_method": (
            "median of per-step wall times (device synchronised before and after each step); "
            "a training step is zero_grad + forward (for consistency: one forward on the "
            "doubled batch, each half with its own picks) + "
            "loss + backward + AdamW step; inference is one eval forward under inference_mode"
        ),
        "order": (
            f"interleaved: every round runs each variant once in a freshly shuffled order "
            f"(seed {seed}), {warmup} warm-up rounds not recorded; medians over rounds, so "
            "slow drift or noise in machine load does not favour any one variant"
        ),
    }


def _build_variants(
    base: nn.Module, method: dict[str, Any], dev: torch.device, compile: bool
) -> dict[str, Variant]:
    """Every training variant on a copy of ``base``; with ``compile`` also the compiled rows."""
    variants = {n: _build_variant(n, base, method, dev) for n in TRAIN_VARIANTS}
    if compile:
        for n in COMPILED_VARIANTS:
            v = _build_variant(n, base, method, dev)
            v.name, v.forward = n + COMPILED_SUFFIX, torch.compile(v.model)
            variants[v.name] = v
    return variants


def _training_rows(
    variants: dict[str, Variant],
    x: torch.Tensor,
    y: torch.Tensor,
    dev: torch.device,
    amp: torch.dtype | None,
    rounds: int,
    warmup: int,
    rng: random.Random,
    say: Callable[[str], None],
) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]]]:
    """Step times (interleaved rounds), memory, counts and optimizer state of every variant."""

    def stepper(v: Variant) -> Callable[[], None]:
        return lambda: train_step(v, x, y, dev, amp)

    first_state: dict[str, int] = {}

    def record_first_state() -> None:
        first_state.update({n: optimizer_state_bytes(v.optimizer) for n, v in variants.items()})

    say(f"[speed] training: {warmup} warm-up + {rounds} timed rounds")
    times = time_interleaved(
        {n: stepper(v) for n, v in variants.items()},
        rounds,
        warmup,
        dev,
        rng,
        say,
        after_first=record_first_state,
    )
    # memory, counts, optimizer state (state is at its steady size after the rounds)
    say("[speed] memory: one measured step per variant")
    rows: dict[str, dict[str, Any]] = {}
    for n, v in variants.items():
        resident, transient = measure_step_memory(v, stepper(v), dev, x, y)
        stored, stored_b = stored_counts(n, v.model)
        med = _median(times[n])
        q1, q3 = _quantiles(times[n])
        rows[n] = {
            "variant": n,
            "description": _description(n),
            "train_step_s": med,
            "train_step_s_q1": q1,
            "train_step_s_q3": q3,
            "train_step_s_min": min(times[n]) if times[n] else None,
            "train_step_times_s": times[n],
            "train_img_s": x.shape[0] / med if med else None,
            "peak_mem_bytes": resident + transient if transient is not None else None,
            "resident_bytes": resident,
            "step_peak_above_resident_bytes": transient,
            "trainable_params": count_params(v.model, trainable_only=True),
            "stored_params": stored,
            "stored_bytes": stored_b,
            "optimizer_state_bytes": optimizer_state_bytes(v.optimizer),
            "optimizer_state_bytes_after_first_step": first_state.get(n),
            "infer_img_s": None,
            "infer_of": None,
        }
    return rows, times


def _inference_rows(
    rows: dict[str, dict[str, Any]],
    variants: dict[str, Variant],
    x: torch.Tensor,
    dev: torch.device,
    amp: torch.dtype | None,
    infer_rounds: int,
    rng: random.Random,
    say: Callable[[str], None],
) -> None:
    """Inference img/s of the backbone, the adapter and the merged methods, into ``rows``."""
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
        def run() -> None:
            with torch.inference_mode(), _autocast(dev, amp):
                m(x)

        return run

    say(f"[speed] inference: 3 warm-up + {infer_rounds} timed rounds")
    itimes = time_interleaved(
        {n: inferer(m) for n, m in infer_models.items()}, infer_rounds, 3, dev, rng, say
    )
    for n, ts in itimes.items():
        med = _median(ts)
        rows[n]["infer_img_s"] = x.shape[0] / med if med else None


def _json_default(o: object) -> object:
    if isinstance(o, torch.dtype):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


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


def _ratios(rows: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def r(a: str, b: str, key: str) -> float | None:
        return _ratio(rows[a][key], rows[b][key])

    return {
        "mosa_step_vs_adapter": r("mosa", "adapter", "train_step_s"),
        "mosa_mem_vs_adapter": r("mosa", "adapter", "peak_mem_bytes"),
        "mosa_consistency_step_vs_adapter": r("mosa_consistency", "adapter", "train_step_s"),
        # time ratios: baseline img/s over variant img/s
        "mosa_merged_infer_vs_adapter": r("adapter", "mosa", "infer_img_s"),
        "mosa_lora_merged_infer_vs_backbone": r("linear", "mosa_lora", "infer_img_s"),
        "reference_step_vs_adapter": r("mosa_reference", "adapter", "train_step_s"),
        "reference_mem_vs_adapter": r("mosa_reference", "adapter", "peak_mem_bytes"),
    }


def _paired_ratios(times: dict[str, list[float]]) -> dict[str, float | None]:
    """Median over rounds of the per-round time ratio. Each round runs every variant once, so
    a ratio inside one round cancels load that changes between rounds (a check on the
    ratio-of-medians in ``ratios``)."""

    def r(a: str, b: str) -> float | None:
        return _paired_ratio(times, a, b)

    return {
        "mosa_step_vs_adapter": r("mosa", "adapter"),
        "mosa_consistency_step_vs_adapter": r("mosa_consistency", "adapter"),
        "reference_step_vs_adapter": r("mosa_reference", "adapter"),
        "lora_step_vs_adapter": r("lora", "adapter"),
        "mosa_lora_step_vs_lora": r("mosa_lora", "lora"),
    }


def _other_ratios(rows: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def r(a: str, b: str, key: str) -> float | None:
        return _ratio(rows[a][key], rows[b][key])

    return {
        "linear_step_vs_adapter": r("linear", "adapter", "train_step_s"),
        "lora_step_vs_adapter": r("lora", "adapter", "train_step_s"),
        "mosa_lora_step_vs_lora": r("mosa_lora", "lora", "train_step_s"),
        "mosa_lora_mem_vs_lora": r("mosa_lora", "lora", "peak_mem_bytes"),
        "mosa_step_vs_reference": r("mosa", "mosa_reference", "train_step_s"),
        "mosa_sparse_adamw_step_vs_adapter": r("mosa_sparse_adamw", "adapter", "train_step_s"),
        "mosa_sparse_adamw_mem_vs_adapter": r("mosa_sparse_adamw", "adapter", "peak_mem_bytes"),
        "mosa_mem_vs_reference": r("mosa", "mosa_reference", "peak_mem_bytes"),
        "adapter_infer_vs_backbone": r("linear", "adapter", "infer_img_s"),
        "lora_merged_infer_vs_backbone": r("linear", "lora", "infer_img_s"),
        "reference_trainable_vs_mosa": r("mosa_reference", "mosa", "trainable_params"),
        "reference_stored_vs_mosa": r("mosa_reference", "mosa", "stored_params"),
        "reference_optimizer_state_vs_mosa": r("mosa_reference", "mosa", "optimizer_state_bytes"),
    }


def _counted_flops(
    variants: dict[str, Variant], x: torch.Tensor, y: torch.Tensor
) -> dict[str, int]:
    """FLOPs of one eager forward + backward, counted by torch's FlopCounterMode, for the rows
    the analytic ViT count does not cover (LoRA's q/v branches)."""
    from torch.utils.flop_counter import FlopCounterMode

    out: dict[str, int] = {}
    for n in ("lora", "mosa_lora"):
        if n not in variants:
            continue
        model = variants[n].model
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(model(x).float(), y).backward()
        model.zero_grad(set_to_none=True)
        out[n] = int(counter.get_total_flops())
    return out


def _flop_section(
    base: nn.Module,
    rows: dict[str, dict[str, Any]],
    bottleneck: int,
    batch: int,
    dev: torch.device,
    amp: torch.dtype | None,
    preset: Preset,
    counted: dict[str, int],
) -> dict[str, Any] | None:
    """Matmul FLOPs per step (analytic, or ``counted`` by torch), the matmul rate measured now,
    and the fraction of it that each row's step reaches."""
    try:
        shape = ViTShape.from_model(base)
    except (TypeError, AttributeError):
        return None
    dtype = amp or torch.float32
    rate = measure_matmul_rate(dev, dtype, preset.matmul_n, preset.matmul_iters)
    adapter = vit_train_flops(shape, batch, bottleneck)
    analytic = {
        "linear": vit_train_flops(shape, batch, None),
        "adapter": adapter,
        "mosa": adapter,
        "mosa_sparse_adamw": adapter,
        "mosa_reference": adapter,
        "mosa_consistency": vit_train_flops(shape, batch, bottleneck, passes=2),
    }
    per_variant: dict[str, Any] = {}
    for n, row in rows.items():
        method = n.removesuffix(COMPILED_SUFFIX)
        total = analytic[method].total if method in analytic else counted.get(method)
        if total is None:
            continue
        step = row["train_step_s"]
        achieved = total / step if step else None
        per_variant[n] = {
            "train_flops_per_step": total,
            "flops_from": "analytic" if method in analytic else "torch FlopCounterMode",
            "train_img_s": row["train_img_s"],
            "achieved_flops_per_s": achieved,
            "fraction_of_ideal": achieved / rate if achieved else None,
        }
        row["train_flops_per_step"] = total
        row["train_flop_fraction"] = per_variant[n]["fraction_of_ideal"]
    return {
        "what": (
            "matmul FLOPs only: forward + activation-gradient backward with a frozen backbone "
            "(no backbone weight gradients; attention matmuls cost 2x forward backward; the "
            "patch embedding and block 0's backbone ops need no backward); adapter and head "
            "weight gradients included; LoRA rows counted by torch.utils.flop_counter"
        ),
        "shape": {**shape.__dict__, "tokens": shape.tokens},
        "adapter_train_step": adapter.to_dict(),
        "matmul_rate_flops_per_s": rate,
        "matmul": f"{preset.matmul_n}^3 {str(dtype).replace('torch.', '')}, "
        f"{preset.matmul_iters} reps, {torch.get_num_threads()} CPU thread(s)",
        "per_variant": per_variant,
    }


def _description(name: str) -> str:
    method = name.removesuffix(COMPILED_SUFFIX)
    return TRAIN_VARIANTS[method] + ("; torch.compile" if method != name else "")


def _compiled_ratios(
    rows: dict[str, dict[str, Any]], times: dict[str, list[float]]
) -> dict[str, dict[str, float | None]]:
    """Compiled over eager step time per method: ratio of medians and median per-round ratio."""
    out: dict[str, dict[str, float | None]] = {}
    for n in COMPILED_VARIANTS:
        c = n + COMPILED_SUFFIX
        if c in rows:
            out[n] = {
                "step": _ratio(rows[c]["train_step_s"], rows[n]["train_step_s"]),
                "paired": _paired_ratio(times, c, n),
            }
    return out


def _paired_ratio(times: dict[str, list[float]], a: str, b: str) -> float | None:
    """Median over rounds of ``a``'s time over ``b``'s in the same round."""
    pairs = [x / y for x, y in zip(times[a], times[b], strict=True) if y > 0]
    return statistics.median(pairs) if pairs else None


# ------------------------------------------------------------------------------------ output


def _fmt(v: float | None, spec: str, scale: float = 1.0) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v * scale, spec)


def format_speed_table(result: dict[str, Any]) -> str:
    """A human-readable report of a :func:`run_speed_bench` result."""
    rows = {r["variant"]: r for r in result["rows"]}
    m = result["model"]
    ad = rows["adapter"]
    bb = rows["linear"]
    lines = [
        f"mosa speed benchmark: {m['name']} (img {m.get('img_size')}, patch "
        f"{m.get('patch_size')}, width {m.get('embed_dim')}, depth {m.get('depth')}), "
        f"batch {result['batch_size']}, {result['dtype']} on {result['device']} "
        f"({result['device_name']}), torch {result['torch']}",
        f"training: median of {result['steps']} steps after {result['warmup_steps']} warm-up "
        f"rounds, AdamW step included; {result['order'].split(':')[0]} order "
        "(each round runs every variant once, freshly shuffled)",
        "",
        f"{'variant':<27}{'step ms':>9}{'q1-q3 ms':>14}{'min ms':>8}{'x adapt':>8}{'peak MiB':>10}"
        f"{'x adapt':>8}{'trainable':>11}{'stored':>10}{'opt KiB':>9}",
    ]
    for n, r in rows.items():
        q = f"{_fmt(r['train_step_s_q1'], '.1f', 1e3)}-{_fmt(r['train_step_s_q3'], '.1f', 1e3)}"
        lines.append(
            f"{n:<27}{_fmt(r['train_step_s'], '.1f', 1e3):>9}{q:>14}"
            f"{_fmt(r.get('train_step_s_min'), '.1f', 1e3):>8}"
            f"{_fmt(_ratio(r['train_step_s'], ad['train_step_s']), '.3f'):>8}"
            f"{_fmt(r['peak_mem_bytes'], '.1f', 1 / 2**20):>10}"
            f"{_fmt(_ratio(r['peak_mem_bytes'], ad['peak_mem_bytes']), '.3f'):>8}"
            f"{r['trainable_params']:>11,}{r['stored_params']:>10,}"
            f"{_fmt(r['optimizer_state_bytes'], '.1f', 1 / 1024):>9}"
        )
    lines += ["", f"inference (eval, no grad, {result['infer_steps']} interleaved rounds):"]
    lines.append(f"{'variant':<26}{'img/s':>10}{'time x backbone':>17}")
    for n, r in rows.items():
        if r["infer_img_s"] is None:
            continue
        label = "backbone" if n == "linear" else f"{n} ({r['infer_of']})"
        lines.append(
            f"{label:<26}{_fmt(r['infer_img_s'], '.1f'):>10}"
            f"{_fmt(_ratio(bb['infer_img_s'], r['infer_img_s']), '.3f'):>17}"
        )
    lines += ["", "ratios (lower is better):"]
    for k, v in result["ratios"].items():
        t = result["targets"].get(k)
        met = result["targets_met"].get(k)
        tail = f"  target <= {t}: {'met' if met else 'NOT met'}" if t is not None else ""
        lines.append(f"  {k:<38}{_fmt(v, '.3f'):>8}{tail}")
    for n, r in (result.get("compiled_vs_eager") or {}).items():
        lines.append(
            f"  {n + ' compiled / eager step':<38}{_fmt(r['step'], '.3f'):>8}"
            f"  (paired {_fmt(r['paired'], '.3f')})"
        )
    pr = result.get("paired_ratios") or {}
    if pr:
        lines.append(
            "paired (median of per-round ratios): "
            + ", ".join(f"{k} {_fmt(v, '.3f')}" for k, v in pr.items())
        )
    sp = result.get("split_projection")
    if sp:
        us = sp["per_call_us"]
        sh = sp["shape"]
        lines += [
            "",
            f"split projection {sh['rows']}x{sh['in']} -> {sh['out']} ({sp['dtype']}), "
            f"fwd+bwd per call ({sp['statistic']}): "
            + ", ".join(
                f"{k} {_fmt(us[k], '.1f')} us"
                for k in ("dense_linear", "mosa_linear", "reference_linear")
            ),
            "  pieces of MoSALinear's training forward: "
            + ", ".join(
                f"{k} {_fmt(us[k], '.1f')} us"
                for k in ("draw_expert", "owner_eq_k", "weight_times_mask")
            ),
        ]
    fl = result.get("flops")
    if fl:
        lines += [
            "",
            f"FLOPs (matmul, frozen backbone): measured matmul rate "
            f"{fl['matmul_rate_flops_per_s'] / 1e12:.2f} TFLOP/s ({fl['matmul']})",
        ]
        for n, p in fl["per_variant"].items():
            lines.append(
                f"  {n:<26}{p['train_flops_per_step'] / 1e9:>10.1f} GFLOP/step"
                f"{_fmt(p['train_img_s'], '.1f'):>10} img/s"
                f"{_fmt(p['fraction_of_ideal'], '.3f'):>8} of ideal"
            )
    lines += ["", f"memory: {result['memory_method']}"]
    lines += [f"note: {n}" for n in result["notes"]]
    lines.append(f"elapsed {result['elapsed_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m mosa.bench.speed --device cpu --out FILE.json``."""
    p = argparse.ArgumentParser(prog="mosa bench speed", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--out", default=None, help="write the JSON result here")
    p.add_argument("--model", default=None, help="timm model name (random weights)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed training rounds")
    p.add_argument("--quick", action="store_true", help="tiny model, few steps (plumbing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 on cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument(
        "--compile", action="store_true", help="add torch.compile rows beside the eager ones"
    )
    a = p.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result = run_speed_bench(
        a.device,
        a.out,
        model=a.model,
        batch_size=a.batch_size,
        img_size=a.img_size,
        steps=a.steps,
        quick=a.quick,
        seed=a.seed,
        threads=a.threads,
        compile=a.compile,
        log=None if a.quiet else log,
    )
    print(format_speed_table(result))
    if a.out:
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

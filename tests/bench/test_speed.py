"""The speed benchmark's plumbing, the reference-style MoSA, and the FLOP accounting.

Nothing here asserts a speed: timings on a shared CPU mean nothing at this size. The benchmark
itself runs once, on a tiny model, for a few steps.
"""

from __future__ import annotations

import functools
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import mosa
from mosa.adapters.sparse import MoSALinear
from mosa.bench.flops import ViTShape, vit_forward_flops, vit_train_flops
from mosa.bench.memory import cpu_step_peak
from mosa.bench.presets import COMPILED_SUFFIX, COMPILED_VARIANTS, INFER_VARIANTS, TRAIN_VARIANTS
from mosa.bench.reference import (
    ReferenceMoSAAdapter,
    ReferenceSplitLinear,
    inject_reference,
    merge_reference,
    reference_state_dict,
)
from mosa.bench.speed_report import format_speed_table
from mosa.bench.tables import RATIO_KEYS, TARGETS
from mosa.bench.timing import time_interleaved
from mosa.cli.main import main

ROW_KEYS = (
    "variant",
    "train_step_s",
    "peak_mem_bytes",
    "trainable_params",
    "stored_params",
    "optimizer_state_bytes",
    "infer_img_s",
)
N = 4


def _tiny_vit(**kw: Any) -> torch.nn.Module:
    args = dict(img_size=8, patch_size=4, embed_dim=8, depth=3, num_heads=2, num_classes=10)
    args.update(kw)
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args)


# ------------------------------------------------------------------------------ the benchmark


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    """One quick run through the CLI entry point: (JSON read back, rows by variant)."""
    out = tmp_path_factory.mktemp("speed") / "speed.json"
    argv = ["--device", "cpu", "--quick", "--steps", "2", "--quiet", "--out", str(out)]
    rc = main(["bench", "speed", *argv])
    assert rc == 0
    result = json.loads(Path(out).read_text())
    return result, {r["variant"]: r for r in result["rows"]}


def test_json_has_every_row_and_field(bench: tuple[dict[str, Any], dict[str, Any]]) -> None:
    result, rows = bench
    assert list(rows) == list(TRAIN_VARIANTS)
    assert {"linear", "adapter", "mosa", "mosa_consistency", "lora", "mosa_lora"} <= set(rows)
    for r in rows.values():
        for k in ROW_KEYS:
            assert k in r, (r["variant"], k)
        assert r["train_step_s"] > 0 and r["peak_mem_bytes"] > 0
        assert r["optimizer_state_bytes"] > 0
        assert len(r["train_step_times_s"]) == result["steps"] == 2
    for n, r in rows.items():
        if n in INFER_VARIANTS:
            assert r["infer_img_s"] > 0
        else:
            assert r["infer_img_s"] is None
    for k in ("device", "torch", "model", "batch_size", "dtype", "steps", "memory_method"):
        assert result[k] not in (None, ""), k
    assert result["device"] == "cpu"
    assert "interleaved" in result["order"]


def test_ratio_keys_exact_finite_positive(bench: tuple[dict[str, Any], dict[str, Any]]) -> None:
    result, rows = bench
    ratios = result["ratios"]
    assert set(ratios) == set(RATIO_KEYS)
    for k, v in ratios.items():
        assert isinstance(v, float) and math.isfinite(v) and v > 0, k
    # definitions: time or memory of the variant over the baseline's (inference via img/s)
    assert ratios["mosa_step_vs_adapter"] == pytest.approx(
        rows["mosa"]["train_step_s"] / rows["adapter"]["train_step_s"]
    )
    assert ratios["mosa_merged_infer_vs_adapter"] == pytest.approx(
        rows["adapter"]["infer_img_s"] / rows["mosa"]["infer_img_s"]
    )
    assert ratios["mosa_lora_merged_infer_vs_backbone"] == pytest.approx(
        rows["linear"]["infer_img_s"] / rows["mosa_lora"]["infer_img_s"]
    )
    assert set(result["targets_met"]) == set(TARGETS)


def test_parameter_and_state_counts_consistent(
    bench: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    result, rows = bench
    assert rows["mosa"]["trainable_params"] == rows["adapter"]["trainable_params"]
    assert rows["mosa_consistency"]["trainable_params"] == rows["adapter"]["trainable_params"]
    assert rows["mosa_lora"]["trainable_params"] == rows["lora"]["trainable_params"]
    assert rows["mosa"]["optimizer_state_bytes"] == rows["adapter"]["optimizer_state_bytes"]
    # mosa stores the adapter plus a one-element-per-entry owner index of each split Up
    m = result["method"]
    dim, depth = result["model"]["embed_dim"], result["model"]["depth"]
    split = depth * m["bottleneck"] * dim
    assert rows["mosa"]["stored_params"] == rows["adapter"]["stored_params"] + split
    # the reference trains N copies of each split Up (weight and bias) instead of one
    extra = depth * (N - 1) * (m["bottleneck"] * dim + dim)
    assert rows["mosa_reference"]["trainable_params"] == rows["adapter"]["trainable_params"] + extra
    assert rows["mosa_reference"]["stored_params"] > rows["mosa"]["stored_params"]
    # AdamW keeps two float32 moments per trainable element (plus a step scalar per tensor);
    # the reference's unpicked experts get state only once picked (a quick run may miss some)
    for n, r in rows.items():
        if n != "mosa_reference":
            assert 8 * r["trainable_params"] <= r["optimizer_state_bytes"]
            assert r["optimizer_state_bytes"] < 8 * r["trainable_params"] + 4096
    ref = rows["mosa_reference"]
    assert ref["optimizer_state_bytes_after_first_step"] == rows["mosa"]["optimizer_state_bytes"]
    assert ref["optimizer_state_bytes"] <= 8 * ref["trainable_params"] + 4096
    assert rows["linear"]["trainable_params"] < rows["adapter"]["trainable_params"]


def test_format_table_mentions_every_variant(
    bench: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    result, rows = bench
    text = format_speed_table(result)
    for n in rows:
        assert n in text
    for k in RATIO_KEYS:
        assert k in text
    assert "interleaved" in text


def test_flop_section_present_for_vit(bench: tuple[dict[str, Any], dict[str, Any]]) -> None:
    result, _ = bench
    fl = result["flops"]
    assert fl["matmul_rate_flops_per_s"] > 0
    for p in fl["per_variant"].values():
        assert p["train_flops_per_step"] > 0 and p["fraction_of_ideal"] > 0


# ------------------------------------------------------------------------------ helpers


def test_time_interleaved_counts_and_shuffles() -> None:
    calls: list[str] = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abcd"}
    times = time_interleaved(fns, 5, 2, torch.device("cpu"), random.Random(0))
    assert {k: len(v) for k, v in times.items()} == {k: 5 for k in "abcd"}
    rounds = [tuple(calls[i : i + 4]) for i in range(0, len(calls), 4)]
    assert len(rounds) == 7 and all(sorted(r) == list("abcd") for r in rounds)
    assert len(set(rounds)) > 1  # the order changes between rounds


def test_cpu_step_peak_sees_torch_allocations() -> None:
    n = 1_000_000

    def fn() -> None:
        a = torch.ones(n)  # 4 MB, live with b
        b = torch.ones(n)
        del a, b
        torch.ones(n // 2)

    peak = cpu_step_peak(fn)
    assert peak is not None
    assert 8 * n <= peak < 8 * n + 100_000


# ------------------------------------------------------------------------------ reference MoSA


def _expert_mean_output(adapter: ReferenceMoSAAdapter, x: torch.Tensor) -> torch.Tensor:
    """Mean over experts of the adapter's output with that expert forced in every split
    projection (dropout off). With one split projection (``share`` down or up) the adapter is
    linear in the split weight, so this equals the merged adapter's output."""
    n = next(m for m in adapter.modules() if isinstance(m, ReferenceSplitLinear)).num_experts
    outs = []
    for k in range(n):
        h = adapter.norm(x)
        for proj in (adapter.down, adapter.up):
            split = isinstance(proj, ReferenceSplitLinear)
            h = proj.forward_expert(h, k) if split else proj(h)
            if proj is adapter.down:
                h = adapter.act(h)
        outs.append(h * adapter.scale)
    return torch.stack(outs).mean(0)


def _split_linear(init: str = "zero") -> tuple[ReferenceSplitLinear, torch.Tensor]:
    owner = torch.randperm(6 * 4).remainder(N).to(torch.uint8).view(6, 4)
    torch.manual_seed(0)
    return ReferenceSplitLinear(4, 6, num_experts=N, init=init, owner=owner, seed=1), owner


def test_reference_gradient_mask_and_update() -> None:
    ref, owner = _split_linear()
    opt = torch.optim.AdamW(ref.parameters(), lr=0.1, weight_decay=0.01)
    before = [e.weight.detach().clone() for e in ref.experts]
    x = torch.randn(5, 4)
    ref.train()
    (ref(x) * torch.randn(5, 6)).sum().backward()
    k = ref.last_expert
    assert k is not None
    g = ref.experts[k].weight.grad
    assert g is not None
    assert torch.all(g[owner != k] == 0)  # masked after accumulation
    assert torch.any(g[owner == k] != 0)
    for i, e in enumerate(ref.experts):
        if i != k:
            assert e.weight.grad is None  # not picked: no gradient at all
    ref.experts[k].bias.grad = None  # isolate the weight update
    opt.step()
    for i, e in enumerate(ref.experts):
        changed = e.weight.detach() != before[i]
        if i == k:
            assert torch.any(changed) and not torch.any(changed[owner != k])
        else:
            assert not torch.any(changed)


def test_reference_merge_is_mean_of_experts_and_matches_mosalinear() -> None:
    ref, owner = _split_linear()
    theta = torch.randn(6, 4)
    with torch.no_grad():
        for i, e in enumerate(ref.experts):  # what sparse training leaves: W0=0 off the mask
            e.weight.copy_(theta * (owner == i))
            e.bias.copy_(torch.randn(6))
    merge_reference(ref)
    mean_w = torch.stack([e.weight for e in ref.experts]).mean(0)
    mean_b = torch.stack([e.bias for e in ref.experts]).mean(0)
    torch.testing.assert_close(ref.merged.weight, mean_w)
    torch.testing.assert_close(ref.merged.bias, mean_b)
    # the same experts held as mosa's single tensor + owner index merge to the same weight
    ours = MoSALinear(4, 6, num_experts=N)
    with torch.no_grad():
        ours.owner.copy_(owner)
        ours.weight.copy_(theta)
    torch.testing.assert_close(ours.merged_weight(), ref.merged.weight)


def test_reference_merged_adapter_equals_mean_of_expert_outputs() -> None:
    torch.manual_seed(0)
    ad = ReferenceMoSAAdapter(8, bottleneck=3, num_experts=N, dropout=0.0)
    with torch.no_grad():
        for i, e in enumerate(ad.up.experts):
            e.weight.copy_(torch.randn_like(e.weight) * ad.up.masks[i])
            e.bias.normal_()
    merge_reference(ad)
    x = torch.randn(2, 5, 8)
    ad.eval()
    torch.testing.assert_close(ad(x), _expert_mean_output(ad, x))


def test_reference_model_trains_merges_and_counts() -> None:
    model = inject_reference(_tiny_vit(), bottleneck=2, num_experts=N, dropout=0.0)
    ads = [m for m in model.modules() if isinstance(m, ReferenceMoSAAdapter)]
    assert len(ads) == 3 and all(isinstance(a.up, ReferenceSplitLinear) for a in ads)
    assert isinstance(ads[0].down, torch.nn.Linear)  # share="down": dense Down
    # zero-initialised Up: the model computes exactly the plain backbone
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    torch.testing.assert_close(model(x), _tiny_vit().eval()(x))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=0.05)
    model.train()
    for _ in range(6):
        opt.zero_grad(set_to_none=True)
        model(x).logsumexp(-1).sum().backward()
        opt.step()
    merge_reference(model)
    model.eval()
    for a in ads:
        mean = torch.stack([e.weight for e in a.up.experts]).mean(0)
        torch.testing.assert_close(a.up.merged.weight, mean)
        h = torch.randn(2, 5, 8)
        torch.testing.assert_close(a(h), _expert_mean_output(a, h))
    # per split projection the reference stores N expert copies plus a merge copy (float32),
    # mosa one float32 tensor plus a uint8 owner index: ~N times the bytes
    ours = mosa.inject(_tiny_vit(), mosa.MethodConfig(method="mosa", bottleneck=2, bias="shared"))
    splits = [m for m in ours.modules() if isinstance(m, MoSALinear)]
    ours_b = sum(t.nbytes for m in splits for t in m.state_dict().values())
    ref_b = sum(t.nbytes for a in ads for t in a.up.state_dict().values())
    ref_w = sum(e.weight.numel() for a in ads for e in [*a.up.experts, a.up.merged])
    assert ref_w == (N + 1) * sum(m.weight.numel() for m in splits)
    assert ref_b >= 0.9 * N * ours_b
    stored = sum(t.numel() for t in reference_state_dict(model).values())
    assert stored > mosa.summary(ours)["stored"]


# ------------------------------------------------------------------------------ FLOPs


def test_flops_hand_count() -> None:
    shape = ViTShape(
        grid=(2, 2),
        patch=(4, 4),
        in_chans=3,
        embed_dim=8,
        depth=2,
        mlp_hidden=32,
        num_prefix_tokens=1,
        num_classes=10,
    )
    assert shape.tokens == 5
    fwd = vit_forward_flops(shape, bottleneck=2)
    assert fwd == {
        "patch_embed": 2 * 4 * 48 * 8,  # 4 patches, 3*4*4 inputs, 8 outputs
        "qkv": 2 * (2 * 5 * 8 * 24),
        "attn_scores": 2 * (2 * 5 * 5 * 8),
        "attn_values": 2 * (2 * 5 * 5 * 8),
        "proj": 2 * (2 * 5 * 8 * 8),
        "fc1": 2 * (2 * 5 * 8 * 32),
        "fc2": 2 * (2 * 5 * 32 * 8),
        "head": 2 * 8 * 10,
        "adapter": 2 * (2 * 5 * 8 * 2 + 2 * 5 * 2 * 8),
    }
    c = vit_train_flops(shape, batch=3, bottleneck=2)
    assert c.forward_total == 3 * 20832
    # block 1 only: qkv, proj, fc1, fc2 once; both attention matmuls twice; head w+x grads;
    # adapters: weight and input grads in both blocks
    assert c.backward == {
        "patch_embed": 0,
        "qkv": 3 * 1920,
        "attn_scores": 3 * 800,
        "attn_values": 3 * 800,
        "proj": 3 * 640,
        "fc1": 3 * 2560,
        "fc2": 3 * 2560,
        "head": 3 * 320,
        "adapter": 3 * 1280,
    }
    assert c.total == 3 * (20832 + 10880)
    probe = vit_train_flops(shape, batch=1, bottleneck=None)
    assert probe.forward_total == 20832 - 640 and probe.backward == {"head": 160}
    assert vit_train_flops(shape, 1, 2, passes=2).total == 2 * (20832 + 10880)


@pytest.mark.parametrize("method", ["adapter", "mosa", "linear"])
def test_flops_match_torch_flop_counter(method: str) -> None:
    model = _tiny_vit()
    for b in model.blocks:
        b.attn.fused_attn = False  # explicit matmuls, which the counter sees
    mosa.inject(model, mosa.MethodConfig(method=method, bottleneck=2, dropout=0.0))
    x = torch.randn(2, 3, 8, 8)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    expected = vit_train_flops(
        ViTShape.from_model(model), 2, None if method == "linear" else 2
    ).total
    assert counter.get_total_flops() == expected


def test_compile_adds_rows_ratios_and_flop_fractions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # plumbing only: dynamo's eager backend (inductor would spend minutes compiling on CPU)
    compile_eager = functools.partial(torch.compile, backend="eager")
    monkeypatch.setattr(torch, "compile", compile_eager)
    out = tmp_path / "speed.json"
    argv = ["--quick", "--steps", "2", "--quiet", "--compile", "--out", str(out)]
    assert main(["bench", "speed", *argv]) == 0
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    compiled = [n + COMPILED_SUFFIX for n in COMPILED_VARIANTS]
    assert list(rows) == [*TRAIN_VARIANTS, *compiled]
    for n in COMPILED_VARIANTS:
        r = result["compiled_vs_eager"][n]
        step = rows[n + COMPILED_SUFFIX]["train_step_s"] / rows[n]["train_step_s"]
        assert r["step"] == pytest.approx(step) and r["paired"] > 0
    # every row, eager or compiled, gets its step's share of the matmul rate measured in the run
    per = result["flops"]["per_variant"]
    assert set(per) == set(rows)
    rate = result["flops"]["matmul_rate_flops_per_s"]
    for n, p in per.items():
        expected = p["train_flops_per_step"] / rows[n]["train_step_s"] / rate
        assert p["fraction_of_ideal"] == pytest.approx(expected), n
    assert per["lora"]["flops_from"] == "torch FlopCounterMode"
    assert per["adapter_compiled"]["flops_from"] == "analytic"
    assert per["lora"]["train_flops_per_step"] > per["linear"]["train_flops_per_step"]

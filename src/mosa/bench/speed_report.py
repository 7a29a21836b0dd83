"""The text report of a ``mosa bench speed`` result (what the command prints)."""

from __future__ import annotations

import math
from typing import Any

from mosa.bench.tables import ratio

__all__ = ["format_speed_table"]

Row = dict[str, Any]


def _fmt(v: float | None, spec: str, scale: float = 1.0) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v * scale, spec)


def _header(result: dict[str, Any]) -> list[str]:
    m = result["model"]
    return [
        f"mosa speed benchmark: {m['name']} (img {m.get('img_size')}, patch "
        f"{m.get('patch_size')}, width {m.get('embed_dim')}, depth {m.get('depth')}), "
        f"batch {result['batch_size']}, {result['dtype']} on {result['device']} "
        f"({result['device_name']}), torch {result['torch']}",
        f"training: median of {result['steps']} steps after {result['warmup_steps']} warm-up "
        f"rounds, AdamW step included; {result['order'].split(':')[0]} order "
        "(each round runs every variant once, freshly shuffled)",
        "",
    ]


def _training(rows: dict[str, Row]) -> list[str]:
    ad = rows["adapter"]
    lines = [
        f"{'variant':<27}{'step ms':>9}{'q1-q3 ms':>14}{'min ms':>8}{'x adapt':>8}{'peak MiB':>10}"
        f"{'x adapt':>8}{'trainable':>11}{'stored':>10}{'opt KiB':>9}",
    ]
    for n, r in rows.items():
        q = f"{_fmt(r['train_step_s_q1'], '.1f', 1e3)}-{_fmt(r['train_step_s_q3'], '.1f', 1e3)}"
        lines.append(
            f"{n:<27}{_fmt(r['train_step_s'], '.1f', 1e3):>9}{q:>14}"
            f"{_fmt(r.get('train_step_s_min'), '.1f', 1e3):>8}"
            f"{_fmt(ratio(r['train_step_s'], ad['train_step_s']), '.3f'):>8}"
            f"{_fmt(r['peak_mem_bytes'], '.1f', 1 / 2**20):>10}"
            f"{_fmt(ratio(r['peak_mem_bytes'], ad['peak_mem_bytes']), '.3f'):>8}"
            f"{r['trainable_params']:>11,}{r['stored_params']:>10,}"
            f"{_fmt(r['optimizer_state_bytes'], '.1f', 1 / 1024):>9}"
        )
    return lines


def _inference(rows: dict[str, Row], infer_steps: int) -> list[str]:
    bb = rows["linear"]
    lines = ["", f"inference (eval, no grad, {infer_steps} interleaved rounds):"]
    lines.append(f"{'variant':<26}{'img/s':>10}{'time x backbone':>17}")
    for n, r in rows.items():
        if r["infer_img_s"] is None:
            continue
        label = "backbone" if n == "linear" else f"{n} ({r['infer_of']})"
        lines.append(
            f"{label:<26}{_fmt(r['infer_img_s'], '.1f'):>10}"
            f"{_fmt(ratio(bb['infer_img_s'], r['infer_img_s']), '.3f'):>17}"
        )
    return lines


def _ratios(result: dict[str, Any]) -> list[str]:
    lines = ["", "ratios (lower is better):"]
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
    return lines


def _projection(sp: dict[str, Any] | None) -> list[str]:
    if not sp:
        return []
    us = sp["per_call_us"]
    sh = sp["shape"]

    def listed(keys: tuple[str, ...]) -> str:
        return ", ".join(f"{k} {_fmt(us[k], '.1f')} us" for k in keys)

    return [
        "",
        f"split projection {sh['rows']}x{sh['in']} -> {sh['out']} ({sp['dtype']}), "
        f"fwd+bwd per call ({sp['statistic']}): "
        + listed(("dense_linear", "mosa_linear", "reference_linear")),
        "  pieces of MoSALinear's training forward: "
        + listed(("draw_expert", "owner_eq_k", "weight_times_mask")),
    ]


def _flops(fl: dict[str, Any] | None) -> list[str]:
    if not fl:
        return []
    lines = [
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
    return lines


def format_speed_table(result: dict[str, Any]) -> str:
    """A human-readable report of a :func:`mosa.bench.speed.run_speed_bench` result."""
    rows = {r["variant"]: r for r in result["rows"]}
    lines = [
        *_header(result),
        *_training(rows),
        *_inference(rows, result["infer_steps"]),
        *_ratios(result),
        *_projection(result.get("split_projection")),
        *_flops(result.get("flops")),
        "",
        f"memory: {result['memory_method']}",
        *[f"note: {n}" for n in result["notes"]],
        f"elapsed {result['elapsed_s']:.0f} s",
    ]
    return "\n".join(lines)

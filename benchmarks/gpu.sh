#!/usr/bin/env bash
# GPU speed benchmark, in one go (well under 8 minutes on one H100-class GPU):
#   ViT-B/16 (random weights), 224 px, batch 128, bf16 autocast: training step time, peak memory,
#   parameter and AdamW-state sizes of linear / adapter / mosa (consistency off and on) / lora /
#   mosa_lora / reference-style N-copy MoSA; inference img/s of the backbone, adapter and the
#   merged methods; images/s and the fraction of the measured bf16 matmul rate (8192^3) reached
#   by frozen-backbone training, from an analytic FLOP count (mosa.bench.flops); with --compile,
#   torch.compile (inductor) rows for adapter / mosa / mosa with consistency / lora / mosa_lora
#   beside the eager ones, timed in the same interleaved rounds, and each one's compiled/eager
#   ratio (compilation happens in the warm-up rounds, untimed).
# Writes $OUT/speed_cuda.json and .txt when OUT is set, else runs/. Extra arguments go to
# `python -m mosa bench speed` (e.g. --steps 80). PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi
out_dir="${OUT:-runs}"
mkdir -p "$out_dir"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"

if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh: torch sees no CUDA device; run the CPU benchmark instead:" >&2
    echo "  PYTHONPATH=src $py -m mosa bench speed --device cpu --out runs/speed_cpu.json" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm \
    --format=csv,noheader || true

# eager rows take about a minute, compiling five variants a few more; the limit keeps the whole
# script inside 9 minutes
timeout 500 "$py" -m mosa bench speed --device cuda --compile --out "$out_dir/speed_cuda.json" "$@" \
    | tee "$out_dir/speed_cuda.txt"

"$py" - "$out_dir/speed_cuda.json" <<'PY'
import json
import sys

r = json.load(open(sys.argv[1]))
fl = r["flops"]
print(f"\nViT-B/16 frozen-backbone training on {r['device_name']} ({r['dtype']}, batch "
      f"{r['batch_size']}); measured matmul rate {fl['matmul_rate_flops_per_s'] / 1e12:.0f} "
      f"TFLOP/s ({fl['matmul']}):")
for name, p in fl["per_variant"].items():
    print(f"  {name:<26} {p['train_img_s']:8.1f} img/s  "
          f"{p['achieved_flops_per_s'] / 1e12:7.1f} TFLOP/s  "
          f"{100 * p['fraction_of_ideal']:5.1f}% of ideal")
for name, c in r.get("compiled_vs_eager", {}).items():
    print(f"  {name}: compiled / eager step time {c['step']:.3f} (paired {c['paired']:.3f})")
met = r["targets_met"]
print("targets: " + ", ".join(f"{k} {r['ratios'][k]:.3f} {'ok' if v else 'MISSED'}"
                               for k, v in met.items()))
print(f"wrote {sys.argv[1]}")
PY

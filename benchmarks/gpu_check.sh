#!/usr/bin/env bash
# The GPU check of issue 15, in under 8 minutes on one CUDA GPU:
#   1. train_throughput.py on the GPU: img/s of the tutorial loop, caetune fp32,
#      caetune bf16 and fused K=4, for the large (Nm=32, Nn=2560) and small
#      (Nm=8, Nn=160) models, with the fp32 and bf16 matmul peaks (~3 min);
#   2. gpu_packing.py: trials per hour with 1 vs 4 trials per GPU (~4 min).
# Outputs go to OUT (default benchmarks/results/gpu_check_DATE); paste the
# two tables into README.md. Usage:
#   benchmarks/gpu_check.sh [OUT]      # on the GPU machine, from the repository root
#   benchmarks/gpu_check.sh --help     # this text; checks the scripts parse, runs nothing
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python="python3"

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    "$python" "$here/train_throughput.py" --help > /dev/null
    "$python" "$here/gpu_packing.py" --help > /dev/null
    echo "(both benchmark scripts parse their flags)"
    exit 0
fi

out="${1:-$here/results/gpu_check_$(date -u +%Y-%m-%d_%H%M)}"
mkdir -p "$out"
"$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' || {
    echo "gpu_check: no CUDA device is visible; this check is for a GPU machine" >&2
    exit 2
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" || true
cat "$out/gpu.txt" 2>/dev/null || true

# 8 s per loop and model: 5 loops x 2 models, plus the peaks, stay near 3 minutes.
timeout 280 "$python" "$here/train_throughput.py" --device cuda --seconds 8 --images 8192 \
    --json "$out/train_throughput.json" | tee "$out/train_throughput.md"

# 16 trials of 3 epochs per packing; two packings.
timeout 260 "$python" "$here/gpu_packing.py" --trials 16 --n-epochs 3 \
    --json "$out/gpu_packing.json" | tee "$out/gpu_packing.md"

echo "gpu_check: results in $out"

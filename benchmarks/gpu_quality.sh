#!/usr/bin/env bash
# The quality benchmark on a lent GPU machine, sized to fit one device call (~8 min): every
# preset x seeds 0, 1, 2 x both data sets, MINUTES (default 2) of training each, JOBS
# (default 6) runs side by side on the one GPU. Run from the repository root:
#
#   bash benchmarks/gpu_quality.sh OUT_DIR SIM_H5
#
# SIM_H5: abtem_three_region.h5, carried into the checkout (the ../shared beside it does not
# travel). OUT_DIR receives the printed tables and benchmarks/results/quality.cuda.json. The
# run is stopped at LIMIT seconds (default 540); the JSON holds every run finished by then.
set -o pipefail
OUT_DIR=${1:-bench_out}
SIM=${2:-../shared/data/sim/abtem_three_region.h5}
MINUTES=${MINUTES:-2} JOBS=${JOBS:-6} LIMIT=${LIMIT:-540}
mkdir -p "$OUT_DIR"
source benchmarks/device_env.sh
[ -f "$SIM" ] || { echo "no simulation file at $SIM" >&2; exit 2; }
nvidia-smi -L
timeout "$LIMIT" python3 benchmarks/quality.py --device cuda --minutes "$MINUTES" \
    --seeds 0,1,2 --jobs "$JOBS" --sim-path "$SIM" 2>&1 | tee "$OUT_DIR/quality_cuda.txt"
cp benchmarks/results/quality.cuda.json "$OUT_DIR"/ 2>/dev/null

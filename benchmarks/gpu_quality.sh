#!/usr/bin/env bash
# The quality benchmark family on a lent GPU machine, sized to fit one device call (~8 min):
# the presets regions and seed x seeds 0, 1, 2 x SETS (default: five sets of the family, one
# per structure and a low dose), MINUTES (default 1) of training each, JOBS (default 6) runs
# side by side on the one GPU; the baselines run first on the CPU cores. From the repository
# root:
#
#   bash benchmarks/gpu_quality.sh OUT_DIR SIM_H5
#
# SIM_H5: abtem_three_region.h5, carried into the checkout (the ../shared beside it does not
# travel). OUT_DIR receives the printed tables and benchmarks/results/quality/cuda.json. The
# run is stopped at LIMIT seconds (default 540); the JSON holds every run finished by then.
set -o pipefail
OUT_DIR=${1:-bench_out}
SIM=${2:-../shared/data/sim/abtem_three_region.h5}
MINUTES=${MINUTES:-1} JOBS=${JOBS:-6} LIMIT=${LIMIT:-540}
SETS=${SETS:-sim-300,sample-300,rotation-2e3,rotation-200,precipitate-2e3}
mkdir -p "$OUT_DIR"
source benchmarks/device_env.sh
[ -f "$SIM" ] || { echo "no simulation file at $SIM" >&2; exit 2; }
nvidia-smi -L
timeout "$LIMIT" python3 benchmarks/quality/run.py --device cuda --minutes "$MINUTES" \
    --sets "$SETS" --presets regions,seed --seeds 0,1,2 --jobs "$JOBS" --sim-path "$SIM" 2>&1 \
    | tee "$OUT_DIR/quality_cuda.txt"
cp benchmarks/results/quality/cuda.json "$OUT_DIR"/ 2>/dev/null

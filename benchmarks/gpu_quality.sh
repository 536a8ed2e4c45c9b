#!/usr/bin/env bash
# The embedding-quality runs that need a GPU's optimiser steps (docs/model.md, "Next steps"),
# prepared to fit one device call: the neighbour-loss screen (prior + parametric-UMAP term,
# lambda 0.1, Adam 1e-4) scored at 200, 500 and 1000 steps, and `prior` and `graph` through the
# engine at 0.5 and 2 minutes, each over seeds 0, 1, 2 on the sample and the simulation, all at
# once (ten processes).
#
#   bash benchmarks/gpu_quality.sh OUT_DIR SIM_H5
#
# SIM_H5: abtem_three_region.h5, carried into the checkout (the ../shared beside it does not
# travel). Each run is stopped at LIMIT seconds (default 480) and prints every mark as it goes,
# so a stopped run still reports its earlier marks. DEVICE, MARKS and BUDGETS override the
# defaults (a CPU dry run: DEVICE=cpu MARKS=2 BUDGETS=0.05).
set -o pipefail
OUT_DIR=${1:-bench_out}
SIM=${2:-../shared/data/sim/abtem_three_region.h5}
DEVICE=${DEVICE:-cuda} MARKS=${MARKS:-200,500,1000} BUDGETS=${BUDGETS:-0.5,2} LIMIT=${LIMIT:-480}
mkdir -p "$OUT_DIR"
source benchmarks/device_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # ten processes share the machine's cores
[ -f "$SIM" ] || { echo "no simulation file at $SIM" >&2; exit 2; }
[ "$DEVICE" = cpu ] || nvidia-smi -L
for data in sample sim; do
    for seed in 0 1 2; do
        timeout "$LIMIT" python3 benchmarks/screen_neighbour_loss.py "$data" --seed "$seed" \
            --device "$DEVICE" --step-marks "$MARKS" --sim-path "$SIM" \
            > "$OUT_DIR/neighbour_${data}_seed$seed.log" 2>&1 &
    done
done
for preset in prior graph; do
    for data in sample sim; do
        timeout "$LIMIT" python3 benchmarks/eval_presets.py --presets "$preset" --datasets "$data" \
            --device "$DEVICE" --budgets "$BUDGETS" --seeds 0,1,2 --detector-bin 2 \
            --sim-path "$SIM" --out "$OUT_DIR/${preset}_$data" > "$OUT_DIR/${preset}_$data.log" 2>&1 &
    done
done
wait
grep -h "steps:" "$OUT_DIR"/neighbour_*.log
for log in "$OUT_DIR"/prior_*.log "$OUT_DIR"/graph_*.log; do tail -n 6 "$log"; done

#!/usr/bin/env bash
# CUDA checks in one go, for a lent GPU machine (~5 min): the cuda-marked tests, then the
# training / embedding throughput benchmark without and with torch.compile. Run from the
# repository root; pass an output folder (default ./bench_out), which receives the test
# summary, the printed tables and the results JSON. Missing pure-Python packages (dask,
# partd, locket) may be provided as wheels in ./.whl (device_env.sh).
#
#   bash benchmarks/gpu_checks.sh "$OUT"
set -o pipefail
OUT_DIR=${1:-bench_out}
mkdir -p "$OUT_DIR"
source benchmarks/device_env.sh
nvidia-smi -L
timeout 150 python3 -m pytest tests/training/test_cuda.py -q -p no:cacheprovider -rA 2>&1 \
    | tail -15 | tee "$OUT_DIR/cuda_tests.txt"
timeout 240 python3 benchmarks/bench_train.py --device cuda --sizes 32 64 128 --steps 10 \
    --skip-memory 2>&1 | tee "$OUT_DIR/bench_train_cuda.txt"
timeout 150 python3 benchmarks/bench_train.py --device cuda --sizes 64 128 --steps 10 --compile \
    --presets seed regions --skip-memory 2>&1 | tee "$OUT_DIR/bench_train_cuda_compile.txt"
cp benchmarks/results/bench_train.cuda*.json "$OUT_DIR"/ 2>/dev/null

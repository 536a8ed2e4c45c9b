#!/usr/bin/env bash
# CUDA checks in one go (for a lent GPU machine): the cuda-marked tests, then the training /
# embedding benchmark with and without torch.compile. Run from the repository root; pass an
# output folder (default ./bench_out). Missing pure-Python packages (dask, partd, locket) may
# be provided as wheels in ./.whl (device_env.sh).
set -o pipefail
OUT_DIR=${1:-bench_out}
mkdir -p "$OUT_DIR"
source benchmarks/device_env.sh
nvidia-smi -L
timeout 150 python3 -m pytest tests/training/test_cuda.py -q -p no:cacheprovider -rA 2>&1 | tail -15 | tee "$OUT_DIR/cuda_tests.txt"
timeout 240 python3 benchmarks/bench_train.py --device cuda --batch-size 128 --steps 10 \
    --skip-memory --json "$OUT_DIR/bench_cuda.json" 2>&1 | tee "$OUT_DIR/bench_cuda.txt"
timeout 150 python3 benchmarks/bench_train.py --device cuda --batch-size 128 --steps 10 --compile \
    --presets seed fast --sizes 64 128 --skip-memory 2>&1 | tee "$OUT_DIR/bench_cuda_compile.txt"

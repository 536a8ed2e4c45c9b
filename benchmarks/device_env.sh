# Sourced by the device scripts (gpu_checks.sh, gpu_quality.sh), from the repository root:
# installs pure-Python packages the GPU image lacks (dask, partd, locket) from wheels carried in
# ./.whl, and puts this checkout's sources on the path. Unbuffered, so a script stopped at its
# time limit still leaves its output.
if ls .whl/dask-*.whl >/dev/null 2>&1 && ! python3 -c "import dask" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/dask-*.whl .whl/partd-*.whl .whl/locket-*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH} PYTHONUNBUFFERED=1

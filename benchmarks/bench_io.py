"""Out-of-core benchmark: virtual BF + ADF + mean pattern over a chunked uint16 HDF5 file.

Writes a synthetic scan (default 256x256 positions x 128x128 pixels, 2 GiB as uint16), then in one run:
1. a plain sequential h5py read of the whole dataset, chunk row by chunk row (the baseline),
2. ``open_dataset`` (timed: opening must be instant) and one chunked pass computing virtual
   bright field, annular dark field and the mean pattern,
and prints elapsed time, GB/s and peak resident memory of each, side by side, with ratios.
Each stage runs in a fresh subprocess so its peak RSS is its own.

    python benchmarks/bench_io.py            # 2 GiB in a temporary folder, deleted afterwards
    python benchmarks/bench_io.py --small    # 64x64 x 128x128 (128 MiB)
    python benchmarks/bench_io.py --scan 256 512   # 4 GiB
    python benchmarks/bench_io.py --path /data/bench.h5 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_file(path: Path, scan: tuple[int, int], det: tuple[int, int], chunk_rows: int) -> float:
    import h5py

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:det[0], 0:det[1]]
    r = np.hypot(yy - det[0] / 2, xx - det[1] / 2)
    beam = (r < det[0] / 10) * 200.0 + 5.0 * np.exp(-r / (det[0] / 6))
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", shape=(*scan, *det), dtype=np.uint16,
                              chunks=(1, min(16, scan[1]), *det))
        ds.attrs["scan_step"] = (0.5, 0.5)
        ds.attrs["scan_unit"] = "nm"
        for y0 in range(0, scan[0], chunk_rows):
            rows = min(chunk_rows, scan[0] - y0)
            block = rng.poisson(beam, size=(rows, scan[1], *det)).astype(np.uint16)
            ds[y0:y0 + rows] = block
    return time.perf_counter() - t0


class _PeakRSS:
    """Samples this process's RSS every 5 ms in a thread (``ru_maxrss`` survives exec on Linux,
    so a child would report the parent's peak)."""

    def __init__(self) -> None:
        import threading

        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self._proc.memory_info().rss)


_MONITOR: _PeakRSS | None = None


def _peak_rss_bytes() -> int:
    assert _MONITOR is not None
    return max(_MONITOR.peak, _MONITOR._proc.memory_info().rss)


def _rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def stage_plain(path: str) -> dict:
    import h5py

    rss_start = _rss_now()
    t0 = time.perf_counter()
    total = 0.0
    with h5py.File(path, "r") as f:
        ds = f["data"]
        for y in range(ds.shape[0]):  # one scan row per read: the simplest out-of-core loop
            total += float(ds[y].sum(dtype=np.float64))
    return {"elapsed": time.perf_counter() - t0, "peak_rss": _peak_rss_bytes(), "check": total,
            "rss_start": rss_start}


def stage_project(path: str) -> dict:
    from napari_4dstem_autoencoder.data.virtual import navigator_images
    from napari_4dstem_autoencoder.data import open_dataset

    rss_start = _rss_now()
    t0 = time.perf_counter()
    ds = open_dataset(path)
    t_open = time.perf_counter() - t0
    rss_open = _peak_rss_bytes()
    t1 = time.perf_counter()
    out = navigator_images(ds)
    elapsed = time.perf_counter() - t1
    ds.close()
    return {"open": t_open, "rss_after_open": rss_open, "elapsed": elapsed,
            "peak_rss": _peak_rss_bytes(), "check": float(out["mean_pattern"].sum() * ds.n_patterns),
            "chunk_bytes": int(np.prod(ds.data.chunksize)) * ds.dtype.itemsize, "rss_start": rss_start}


def run_stage(name: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--stage", name, "--path", str(path)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scan", type=int, nargs=2, default=(256, 256))
    parser.add_argument("--detector", type=int, nargs=2, default=(128, 128))
    parser.add_argument("--small", action="store_true", help="64x64 scan (128 MiB)")
    parser.add_argument("--path", type=Path, help="where to write the file (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the file afterwards")
    parser.add_argument("--stage", choices=("plain", "project"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        global _MONITOR
        _MONITOR = _PeakRSS()
        result = stage_plain(str(args.path)) if args.stage == "plain" else stage_project(str(args.path))
        print(json.dumps(result))
        return
    scan = (64, 64) if args.small else tuple(args.scan)
    det = tuple(args.detector)
    tmp = None
    path = args.path
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_io_")
        path = Path(tmp.name) / "bench.h5"
    nbytes = int(np.prod(scan) * np.prod(det) * 2)
    try:
        print(f"file {path}: {scan[0]}x{scan[1]} positions x {det[0]}x{det[1]} uint16 = {nbytes / 2**30:.2f} GiB")
        t_write = write_file(path, scan, det, chunk_rows=8)
        print(f"written in {t_write:.1f} s; cpus {os.cpu_count()}, "
              f"dask threads default, page cache not dropped (both reads see the same cache state)")
        plain = run_stage("plain", path)
        proj = run_stage("project", path)
        gb = nbytes / 1e9
        print(f"{'':32s}{'elapsed s':>10s}{'GB/s':>8s}{'peak RSS MiB':>14s}{'RSS before MiB':>16s}")
        for label, r in (("plain h5py sequential sum", plain), ("project BF+ADF+mean, one pass", proj)):
            print(f"{label:32s}{r['elapsed']:10.2f}{gb / r['elapsed']:8.2f}"
                  f"{r['peak_rss'] / 2**20:14.0f}{r['rss_start'] / 2**20:16.0f}")
        print(f"open_dataset: {proj['open'] * 1e3:.1f} ms, RSS after open {proj['rss_after_open'] / 2**20:.0f} MiB; "
              f"dask chunk {proj['chunk_bytes'] / 2**20:.0f} MiB")
        print(f"ratio project/plain throughput: {plain['elapsed'] / proj['elapsed']:.2f}; "
              f"peak RSS / file size: {proj['peak_rss'] / nbytes:.3f} "
              f"(growth over imports: {(proj['peak_rss'] - proj['rss_start']) / nbytes:.3f})")
        rel = abs(proj["check"] - plain["check"]) / max(plain["check"], 1.0)
        print(f"sum check (mean pattern x N vs plain sum): relative difference {rel:.2e}")
    finally:
        if tmp is not None:
            tmp.cleanup()
        elif not args.keep and path.exists():
            path.unlink()


if __name__ == "__main__":
    main()

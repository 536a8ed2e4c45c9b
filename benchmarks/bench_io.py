"""Out-of-core reading: virtual BF + ADF + mean pattern in one chunked pass over a uint16 HDF5
file, against a plain sequential h5py read of the same file, side by side in one run.

Writes a synthetic scan (default 256x256 positions x 128x128 pixels, 2 GiB as uint16), then:

1. plain: a sequential h5py read of the whole dataset, one scan row per read (the baseline);
2. project: ``data.open_dataset`` (timed: opening must be instant) and one chunked pass of
   ``data.virtual.navigator_images`` (bright field, annular dark field, mean pattern).

Each stage runs in a fresh process so its peak resident memory (sampled every 5 ms) is its
own. Printed: seconds, GB/s and peak RSS of each, the throughput ratio project / plain, and
a check that both read the same data (the mean pattern x N against the plain sum).

    python benchmarks/bench_io.py            # 2 GiB in a temporary folder: ~1-2 min on 2 cores
    python benchmarks/bench_io.py --quick    # 64x64 x 128x128 (128 MiB): ~6 s

Writes ``benchmarks/results/bench_io.json``. ``--scan 256 512`` makes 4 GiB; ``--path`` puts
the file elsewhere (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import Column, print_table, ratio, run_isolated, save, settings_of  # noqa: E402


def write_file(path: Path, scan: tuple[int, int], det: tuple[int, int], chunk_rows: int = 8
               ) -> float:
    """A Poisson-noisy direct beam with a diffuse halo at every position; seconds taken."""
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
            ds[y0:y0 + rows] = rng.poisson(beam, size=(rows, scan[1], *det)).astype(np.uint16)
    return time.perf_counter() - t0


class PeakRSS:
    """This process's peak RSS, sampled every 5 ms in a thread (``ru_maxrss`` survives exec on
    Linux, so a child would report its parent's peak)."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.start = self.now()
        self._peak = self.start
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def now(self) -> int:
        return self._proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self.now())

    @property
    def peak(self) -> int:
        return max(self._peak, self.now())


def stage_plain(path: str, rss: PeakRSS) -> dict:
    import h5py

    t0 = time.perf_counter()
    total = 0.0
    with h5py.File(path, "r") as f:
        ds = f["data"]
        for y in range(ds.shape[0]):  # one scan row per read: the simplest out-of-core loop
            total += float(ds[y].sum(dtype=np.float64))
    return {"seconds": time.perf_counter() - t0, "peak_rss": rss.peak, "check": total}


def stage_project(path: str, rss: PeakRSS) -> dict:
    from napari_4dstem_autoencoder.data import open_dataset
    from napari_4dstem_autoencoder.data.virtual import navigator_images

    t0 = time.perf_counter()
    ds = open_dataset(path)
    t_open = time.perf_counter() - t0
    rss_open = rss.peak
    t1 = time.perf_counter()
    out = navigator_images(ds)
    seconds = time.perf_counter() - t1
    ds.close()
    return {"seconds": seconds, "peak_rss": rss.peak, "open_ms": t_open * 1e3,
            "rss_after_open": rss_open,
            "check": float(out["mean_pattern"].sum() * ds.n_patterns),
            "chunk_mb": int(np.prod(ds.data.chunksize)) * ds.dtype.itemsize / 2**20}


STAGES = {"plain": ("plain h5py, one row per read", stage_plain),
          "project": ("open_dataset + BF/ADF/mean pass", stage_project)}


def run_stage(name: str, path: Path, nbytes: int) -> dict:
    """One stage in a fresh process, as a row (memory in MiB)."""
    result = run_isolated(Path(__file__), ["--stage", name, "--path", str(path)])
    row = {"stage": name, "what": STAGES[name][0], "seconds": result["seconds"],
           "gb_per_s": nbytes / 1e9 / result["seconds"],
           "peak_rss_mb": result["peak_rss"] / 2**20, "rss_start_mb": result["rss_start"] / 2**20,
           "check": result["check"]}
    for k in ("open_ms", "chunk_mb"):
        if k in result:
            row[k] = result[k]
    if "rss_after_open" in result:
        row["rss_after_open_mb"] = result["rss_after_open"] / 2**20
    return row


COLUMNS = [Column("stage"), Column("what"), Column("seconds", ".2f", "s"),
           Column("gb_per_s", ".2f", "GB/s"), Column("peak_rss_mb", ".0f", "peak RSS MiB"),
           Column("rss_start_mb", ".0f", "RSS at start MiB"), Column("open_ms", ".1f", "open ms"),
           Column("rss_after_open_mb", ".0f", "RSS after open MiB"),
           Column("chunk_mb", ".0f", "dask chunk MiB")]


def measure(path: Path, scan: tuple[int, int], det: tuple[int, int]) -> tuple[list, dict]:
    nbytes = int(np.prod(scan) * np.prod(det) * 2)
    print(f"file {path}: {scan[0]}x{scan[1]} positions x {det[0]}x{det[1]} uint16 = "
          f"{nbytes / 2**30:.2f} GiB", flush=True)
    t_write = write_file(path, scan, det)
    print(f"written in {t_write:.1f} s (page cache not dropped: both reads see the same state)")
    plain, proj = (run_stage(name, path, nbytes) for name in STAGES)
    summary = {"file_gib": nbytes / 2**30, "write_seconds": t_write,
               "project_over_plain_throughput": ratio(plain["seconds"], proj["seconds"]),
               "peak_rss_over_file": proj["peak_rss_mb"] * 2**20 / nbytes,
               "sum_check_rel_diff": abs(proj["check"] - plain["check"]) / max(plain["check"], 1.0)}
    return [plain, proj], summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: a 64x64 scan (128 MiB)")
    p.add_argument("--scan", type=int, nargs=2, default=None, help="default 256 256")
    p.add_argument("--detector", type=int, nargs=2, default=(128, 128))
    p.add_argument("--path", type=Path, help="where to write the file (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the file afterwards")
    p.add_argument("--stage", choices=tuple(STAGES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.scan = args.scan or ((64, 64) if args.quick else (256, 256))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.stage:
        rss = PeakRSS()
        result = STAGES[args.stage][1](str(args.path), rss)
        print(json.dumps({**result, "rss_start": rss.start}))
        return
    with tempfile.TemporaryDirectory(prefix="bench_io_") as tmp:
        path = args.path or Path(tmp) / "bench.h5"
        try:
            rows, summary = measure(path, tuple(args.scan), tuple(args.detector))
        finally:
            if args.path is not None and not args.keep and path.exists():
                path.unlink()
    print_table(rows, COLUMNS)
    print(f"project / plain throughput: {summary['project_over_plain_throughput']:.2f}; peak RSS "
          f"/ file size: {summary['peak_rss_over_file']:.3f}; sum check (mean pattern x N vs "
          f"plain sum): relative difference {summary['sum_check_rel_diff']:.2e}")
    out = save("bench_io", rows, key=["stage"], device=None, settings=settings_of(args),
               quick=args.quick, summary=[summary])
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

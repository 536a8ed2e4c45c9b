"""Out-of-core reading at disk speed: the package's one-pass navigator (virtual BF + ADF + mean
pattern) and its training-data read, against a plain sequential read of the same file, per
format, side by side in one run.

Writes one synthetic uint16 scan (default 256x256 positions x 128x128 pixels, 2 GiB) in each
format: HDF5 chunked like a detector writes it (one chunk = 16 patterns of a scan row), HDF5
contiguous, Merlin .mib (+ .hdr, big-endian counts behind 384-byte frame headers) and .npy. Then,
per format, each stage in a fresh process (so its peak resident memory is its own):

1. ``plain``: the simplest sequential read of the whole file, one scan row per read, summed
   (h5py ``ds[y]``; the .npy memory map's row; the row's .mib frames with ``readinto``);
2. ``navigator``: ``open_dataset`` (timed: opening must be instant) + ``navigator_images``;
3. ``train_read``: the raw read ``CachedPatterns.load`` does, ``training.data.read_patterns``
   over a training split (90 % of the positions, sorted at random), no preprocessing;
4. ``train_load``: the whole ``CachedPatterns.load`` of that split, preprocessed (log +
   normalise, detector binned 2x so the cache is a quarter of the file, as in docs/model.md's
   protocol): reading and preprocessing overlap, so this shows what preprocessing costs.

Page cache: the files are just written and read again at once, nothing is dropped. Every stage
runs ``--repeat`` times (default 3, the plain read and the package's stages taking turns;
``train_load`` once) and the fastest run is reported: every figure is a warm-cache read of a
file that fits in RAM, the plain read's and the package's alike. Throughput is pattern bytes
per second; the ratios are package / plain of the same format in this run. Memory: peak RSS over the RSS after
imports, against what the package keeps in flight (two read blocks; for ``train_load`` also
the cache it builds).

    python benchmarks/bench_io.py            # 4 x 2 GiB in a temporary folder: 4-10 min on 2 cores
    python benchmarks/bench_io.py --quick    # 64x64 x 128x128 (4 x 128 MiB): ~1 min

Writes ``benchmarks/results/bench_io.json``. ``--formats h5 npy`` picks formats; ``--scan 256
512`` makes 4 GiB files; ``--path DIR`` puts the files there (``--keep`` keeps them).
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

FORMATS = {"h5": "HDF5, chunks of 16 patterns", "h5c": "HDF5, contiguous",
           "mib": "Merlin .mib + .hdr", "npy": ".npy"}
SUFFIX = {"h5": ".h5", "h5c": ".contiguous.h5", "mib": ".mib", "npy": ".npy"}
BATCH_ROWS = 8  # scan rows generated (and written) at a time


def _pool(scan: tuple[int, int], det: tuple[int, int]) -> list[np.ndarray]:
    """Four distinct random batches of ``BATCH_ROWS`` scan rows: a Poisson-noisy direct beam
    with a diffuse halo at every position."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:det[0], 0:det[1]]
    r = np.hypot(yy - det[0] / 2, xx - det[1] / 2)
    beam = (r < det[0] / 10) * 200.0 + 5.0 * np.exp(-r / (det[0] / 6))
    rows = min(BATCH_ROWS, scan[0])
    return [rng.poisson(beam, size=(rows, scan[1], *det)).astype(np.uint16) for _ in range(4)]


def batches(pool: list[np.ndarray], scan: tuple[int, int]):
    """(first row, rows) over the scan: the pool's batches in turn (the values do not matter to
    a read, and drawing 2 GiB of Poisson counts per format would take longer than the
    benchmark)."""
    rows = pool[0].shape[0]
    for n, y0 in enumerate(range(0, scan[0], rows)):
        yield y0, pool[n % len(pool)][:min(rows, scan[0] - y0)]


class _Rows:
    """The scan as an array-like that ``write_mib`` slices by rows."""

    def __init__(self, pool: list[np.ndarray], scan: tuple[int, int], det: tuple[int, int]
                 ) -> None:
        self.shape, self.dtype = (*scan, *det), np.dtype(np.uint16)
        self._rows = dict(batches(pool, scan))

    def __getitem__(self, key: slice) -> np.ndarray:
        return self._rows[key.start]


def write_files(folder: Path, scan: tuple[int, int], det: tuple[int, int],
                formats: list[str]) -> dict[str, tuple[Path, float]]:
    """Every format's file; path and seconds taken each."""
    import h5py

    from napari_4dstem_autoencoder.data.mib import write_mib

    out = {}
    pool = _pool(scan, det)
    for fmt in formats:
        path = folder / f"bench{SUFFIX[fmt]}"
        t0 = time.perf_counter()
        if fmt in ("h5", "h5c"):
            with h5py.File(path, "w") as f:
                ds = f.create_dataset("data", shape=(*scan, *det), dtype=np.uint16,
                                      chunks=(1, min(16, scan[1]), *det) if fmt == "h5" else None)
                ds.attrs["scan_step"] = (0.5, 0.5)
                ds.attrs["scan_unit"] = "nm"
                for y0, b in batches(pool, scan):
                    ds[y0:y0 + len(b)] = b
        elif fmt == "npy":
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(*scan, *det))
            for y0, b in batches(pool, scan):
                mm[y0:y0 + len(b)] = b
            mm.flush()
            del mm
        else:
            write_mib(path, _Rows(pool, scan, det), rows_per_write=BATCH_ROWS)
        out[fmt] = (path, time.perf_counter() - t0)
    return out


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

    def reset(self) -> None:
        """Start counting from now (after the imports)."""
        self.start = self._peak = self.now()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self.now())

    @property
    def peak(self) -> int:
        return max(self._peak, self.now())


# -- stages (each in its own process) -------------------------------------------------------

def stage_plain(path: Path, fmt: str, rss: PeakRSS) -> dict:
    total = 0.0
    if fmt in ("h5", "h5c"):
        import h5py

        rss.reset()
        t0 = time.perf_counter()
        with h5py.File(path, "r") as f:
            ds = f["data"]
            for y in range(ds.shape[0]):  # one scan row per read: the simplest out-of-core loop
                total += float(ds[y].sum(dtype=np.float64))
    elif fmt == "npy":
        rss.reset()
        t0 = time.perf_counter()
        mm = np.load(path, mmap_mode="r")
        for y in range(mm.shape[0]):
            total += float(mm[y].sum(dtype=np.float64))
        del mm
    else:
        from napari_4dstem_autoencoder.data.mib import mib_frame_layout

        rss.reset()
        t0 = time.perf_counter()
        head, qy, qx, frame_bytes = mib_frame_layout(path)
        frame = np.dtype([("header", f"S{head}"), ("data", ">u2", (qy, qx))])
        assert frame.itemsize == frame_bytes
        rx = int(path.with_suffix(".hdr").read_text().split("Frames per Trigger (Number):")[1]
                 .split()[0])
        buf = np.empty(rx, dtype=frame)
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(memoryview(buf).cast("B")) == buf.nbytes:
                total += float(buf["data"].sum(dtype=np.float64))
    return {"seconds": time.perf_counter() - t0, "peak_rss": rss.peak, "check": total}


def stage_navigator(path: Path, fmt: str, rss: PeakRSS) -> dict:
    from napari_4dstem_autoencoder.data import open_dataset
    from napari_4dstem_autoencoder.data.virtual import READ_BLOCK_BYTES, navigator_images

    rss.reset()
    t0 = time.perf_counter()
    ds = open_dataset(path)
    t_open = time.perf_counter() - t0
    rss_open = rss.peak
    t1 = time.perf_counter()
    out = navigator_images(ds)
    seconds = time.perf_counter() - t1
    ds.close()
    return {"seconds": seconds, "peak_rss": rss.peak, "open_ms": t_open * 1e3,
            "rss_after_open": rss_open, "in_flight": 2 * READ_BLOCK_BYTES,
            "check": float(out["mean_pattern"].sum() * ds.n_patterns)}


def _training_split(ds):
    from napari_4dstem_autoencoder.training.data import split_positions

    return split_positions(ds.n_patterns, None, 0.1, seed=0).train


def stage_train_read(path: Path, fmt: str, rss: PeakRSS) -> dict:
    from napari_4dstem_autoencoder.data import open_dataset
    from napari_4dstem_autoencoder.data.virtual import READ_BLOCK_BYTES
    from napari_4dstem_autoencoder.training.data import read_patterns

    ds = open_dataset(path)
    train = _training_split(ds)
    rss.reset()
    t0 = time.perf_counter()
    total, got = 0.0, 0
    for where, raw in read_patterns(ds, train):
        total += float(raw[:, 0, 0].sum(dtype=np.float64))  # touch every pattern, cheaply
        got += len(where)
    seconds = time.perf_counter() - t0
    assert got == train.size
    ds.close()
    return {"seconds": seconds, "peak_rss": rss.peak, "in_flight": 2 * READ_BLOCK_BYTES,
            "fraction": train.size / ds.n_patterns, "check": None}


def stage_train_load(path: Path, fmt: str, rss: PeakRSS) -> dict:
    from napari_4dstem_autoencoder.data import open_dataset
    from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig
    from napari_4dstem_autoencoder.data.virtual import READ_BLOCK_BYTES
    from napari_4dstem_autoencoder.training.data import (CachedPatterns, fit_preprocessor_on,
                                                         reference_positions)

    ds = open_dataset(path)
    train = _training_split(ds)
    prep = fit_preprocessor_on(ds.patterns(reference_positions(train)),
                               PreprocessConfig(detector_bin=2), ds.name)
    rss.reset()
    t0 = time.perf_counter()
    cache = CachedPatterns.load(ds, prep, train)
    seconds = time.perf_counter() - t0
    ds.close()
    return {"seconds": seconds, "peak_rss": rss.peak,
            "in_flight": 2 * READ_BLOCK_BYTES + cache.data.numel() * 4,
            "fraction": train.size / ds.n_patterns, "check": None}


STAGES = {"plain": ("plain sequential read, one row per read", stage_plain),
          "navigator": ("open_dataset + navigator_images (BF, ADF, mean)", stage_navigator),
          "train_read": ("read_patterns, 90 % training split", stage_train_read),
          "train_load": ("CachedPatterns.load, + log/normalise/bin 2", stage_train_load)}


def run_stage(name: str, fmt: str, path: Path, nbytes: int) -> dict:
    """One stage in a fresh process, as a row (memory in MiB)."""
    result = run_isolated(Path(__file__), ["--stage", name, "--format", fmt,
                                           "--file", str(path)])
    read = nbytes * result.get("fraction", 1.0)
    row = {"format": fmt, "stage": name, "what": STAGES[name][0], "seconds": result["seconds"],
           "mb_per_s": read / 1e6 / result["seconds"],
           "peak_rss_mb": (result["peak_rss"] - result["rss_start"]) / 2**20,
           "check": result["check"]}
    if "in_flight" in result:
        row["in_flight_mb"] = result["in_flight"] / 2**20
    if "open_ms" in result:
        row["open_ms"] = result["open_ms"]
    return row


COLUMNS = [Column("format"), Column("stage"), Column("what"), Column("seconds", ".2f", "s"),
           Column("mb_per_s", ".0f", "MB/s"), Column("vs_plain", ".2f", "/ plain"),
           Column("peak_rss_mb", ".0f", "peak RSS MiB"),
           Column("in_flight_mb", ".0f", "held MiB"), Column("open_ms", ".1f", "open ms")]


def measure(folder: Path, scan: tuple[int, int], det: tuple[int, int], formats: list[str],
            repeat: int) -> tuple[list, list]:
    nbytes = int(np.prod(scan) * np.prod(det) * 2)
    print(f"{len(formats)} files of {scan[0]}x{scan[1]} positions x {det[0]}x{det[1]} uint16 = "
          f"{nbytes / 2**30:.2f} GiB each (pattern data), in {folder}", flush=True)
    files = write_files(folder, scan, det, formats)
    for fmt, (path, seconds) in files.items():
        print(f"  {fmt}: {path.name}, {path.stat().st_size / 2**30:.2f} GiB, written in "
              f"{seconds:.1f} s")
    print("page cache: not dropped; fastest of", repeat, "runs per stage (warm, for every "
          "stage alike)", flush=True)
    rows, summary = [], []
    for fmt in formats:
        path = files[fmt][0]
        best: dict[str, dict] = {}
        for rep in range(repeat):
            for name in STAGES:  # the plain read and the package's stages take turns
                if name == "train_load" and rep:
                    continue  # CPU-bound preprocessing, tens of seconds: once is enough
                row = run_stage(name, fmt, path, nbytes)
                if name not in best or row["seconds"] < best[name]["seconds"]:
                    best[name] = row
        plain = best["plain"]
        for name in STAGES:
            best[name]["vs_plain"] = ratio(best[name]["mb_per_s"], plain["mb_per_s"])
            rows.append(best[name])
        nav = best["navigator"]
        summary.append({
            "format": fmt, "file_gib": nbytes / 2**30,
            "file_bytes": path.stat().st_size,
            "plain_mb_per_s": plain["mb_per_s"],
            "navigator_over_plain": nav["vs_plain"],
            "train_read_over_plain": best["train_read"]["vs_plain"],
            "train_load_over_plain": best["train_load"]["vs_plain"],
            "navigator_peak_rss_mb": nav["peak_rss_mb"],
            "train_read_peak_rss_mb": best["train_read"]["peak_rss_mb"],
            "sum_check_rel_diff": abs(nav["check"] - plain["check"]) / max(plain["check"], 1.0)})
        print(f"  {fmt}: plain {plain['mb_per_s']:.0f} MB/s; navigator / plain "
              f"{nav['vs_plain']:.2f}, train_read / plain {best['train_read']['vs_plain']:.2f}",
              flush=True)
    return rows, summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: a 64x64 scan (128 MiB)")
    p.add_argument("--scan", type=int, nargs=2, default=None, help="default 256 256")
    p.add_argument("--detector", type=int, nargs=2, default=(128, 128))
    p.add_argument("--formats", nargs="+", choices=tuple(FORMATS), default=list(FORMATS))
    p.add_argument("--repeat", type=int, default=3, help="runs per stage; the fastest counts")
    p.add_argument("--path", type=Path, help="folder for the files (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the files afterwards")
    p.add_argument("--stage", choices=tuple(STAGES), help=argparse.SUPPRESS)
    p.add_argument("--format", choices=tuple(FORMATS), help=argparse.SUPPRESS)
    p.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.scan = args.scan or ((64, 64) if args.quick else (256, 256))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.stage:
        rss = PeakRSS()
        result = STAGES[args.stage][1](args.file, args.format, rss)
        print(json.dumps({**result, "rss_start": rss.start}))
        return
    with tempfile.TemporaryDirectory(prefix="bench_io_") as tmp:
        folder = args.path or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            rows, summary = measure(folder, tuple(args.scan), tuple(args.detector),
                                    list(args.formats), max(1, args.repeat))
        finally:
            if args.path is not None and not args.keep:
                for suffix in SUFFIX.values():
                    for f in (folder / f"bench{suffix}", folder / "bench.hdr"):
                        if f.exists():
                            f.unlink()
    print()
    print_table(rows, COLUMNS)
    print("\nper format: navigator / plain, train_read / plain (throughput, same run); peak RSS "
          "MiB over the RSS after imports; sum check (mean pattern x N vs plain sum)")
    for s in summary:
        print(f"  {s['format']:4s} navigator {s['navigator_over_plain']:.2f}  train_read "
              f"{s['train_read_over_plain']:.2f}  train_load {s['train_load_over_plain']:.2f}  "
              f"peak RSS {s['navigator_peak_rss_mb']:.0f} / {s['train_read_peak_rss_mb']:.0f} "
              f"MiB  sum check {s['sum_check_rel_diff']:.1e}")
    out = save("bench_io", rows, key=["format", "stage"], device=None,
               settings=settings_of(args), quick=args.quick, summary=summary)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

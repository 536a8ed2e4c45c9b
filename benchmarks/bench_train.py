"""Training and embedding throughput: the engine against a naive fp32 loop, and each preset
against the seed document's, side by side in one run.

For each preset (default: all of ``training.presets.PRESETS``) and pattern size:

- naive train: the seed document's loop (``embed(x)`` then ``model(x)``: two encoder passes,
  fp32, tensors already in memory), loss from ``objective.Objective`` fitted like the engine's;
- engine train: ``training.engine.train`` on a synthetic in-memory scan (one encoder pass; on
  CUDA bf16 autocast + channels_last, and ``torch.compile(dynamic=False)`` with
  ``--compile``), from its own ``BatchEnd`` events (data loading included);
- naive embed: ``model.embed`` over tensors in memory, fp32;
- engine embed: ``inference.embedding.embed_and_score`` over the lazy scan (reading and
  preprocessing included), per batch from its progress callback.

Figures are medians over the timed steps, in patterns per second; ratios are engine / naive
and engine train / the seed preset's engine train at the same size. Then, in a fresh process,
two scans stored as HDF5, of ``--mem-file`` MiB and twice that, are embedded and the growth of
peak resident memory of each is printed (bounded memory: it must not grow with the file).

    python benchmarks/bench_train.py                 # CPU: ~5 min on 2 cores; --quick: ~40 s
    python benchmarks/bench_train.py --device cuda   # add --compile for torch.compile

Writes ``benchmarks/results/bench_train.<device>[.compile].json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import (Column, median, print_table, ratio, run_isolated, save,  # noqa: E402
                     settings_of)

from napari_4dstem_autoencoder.data.dataset import Dataset4D  # noqa: E402
from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor  # noqa: E402
from napari_4dstem_autoencoder.inference.embedding import embed_and_score  # noqa: E402
from napari_4dstem_autoencoder.model.autoencoder import Autoencoder  # noqa: E402
from napari_4dstem_autoencoder.model.summary import macs_per_pattern  # noqa: E402
from napari_4dstem_autoencoder.objective import Objective  # noqa: E402
from napari_4dstem_autoencoder.training.config import TrainConfig  # noqa: E402
from napari_4dstem_autoencoder.training.device import resolve_device  # noqa: E402
from napari_4dstem_autoencoder.training.engine import train  # noqa: E402
from napari_4dstem_autoencoder.training.events import BatchEnd, Failed  # noqa: E402
from napari_4dstem_autoencoder.training.presets import PRESETS, Preset  # noqa: E402

#: positions of the synthetic scan at least (so the graph teacher has a graph to fit)
MIN_POSITIONS = 256


def synthetic_scan(n_positions: int, size: int, seed: int = 0) -> np.ndarray:
    """(1, N, size, size) uint16 discs of two radii with Poisson noise."""
    rng = np.random.default_rng(seed)
    q = np.mgrid[0:size, 0:size] - size / 2
    r2 = (q ** 2).sum(0)
    out = np.empty((1, n_positions, size, size), dtype=np.uint16)
    for i in range(n_positions):
        radius = size * (0.1 if i % 2 else 0.2)
        out[0, i] = rng.poisson((r2 < radius**2) * 300.0 + 3.0)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_setup(preset: Preset, x_all: torch.Tensor, device: torch.device
                ) -> tuple[Autoencoder, Objective]:
    """The preset's model and objective, fitted on the patterns as the engine fits them."""
    torch.manual_seed(0)
    model = Autoencoder(out_shape=tuple(x_all.shape[-2:]), config=preset.model)
    if preset.model.output_prior != "none":
        model.set_output_prior(x_all[:, 0].mean(dim=0))
    objective = Objective(preset.objective, preset.model.latent_dim)
    objective.fit(x_all[:1024, 0])
    return model.to(device), objective.to(device)


def naive_train(preset: Preset, x_all: torch.Tensor, args: argparse.Namespace,
                device: torch.device) -> list[float]:
    model, objective = naive_setup(preset, x_all, device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch, rates = args.batch_size, []
    for i in range(args.warmup + args.steps):
        x = x_all[(i * batch) % len(x_all):][:batch].to(device)
        sync(device)
        t = time.perf_counter()
        z = model.embed(x)  # the seed document's usage: the encoder twice per step
        x_hat = model(x)
        loss = objective(x, x_hat, z)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(device)
        if i >= args.warmup:
            rates.append(batch / (time.perf_counter() - t))
    return rates


@torch.inference_mode()
def naive_embed(preset: Preset, x_all: torch.Tensor, args: argparse.Namespace,
                device: torch.device) -> list[float]:
    model = Autoencoder(out_shape=tuple(x_all.shape[-2:]), config=preset.model).to(device).eval()
    x = x_all[:args.batch_size].to(device)
    rates = []
    for i in range(args.warmup + args.steps):
        sync(device)
        t = time.perf_counter()
        model.embed(x)
        sync(device)
        if i >= args.warmup:
            rates.append(len(x) / (time.perf_counter() - t))
    return rates


def engine_train(name: str, dataset: Dataset4D, args: argparse.Namespace) -> list[float]:
    """Rates of the engine's timed steps; the run is stopped after them."""
    config = TrainConfig(preset=name, epochs=1, batch_size=args.batch_size, val_fraction=0.0,
                         device=args.device, preview_max_positions=0, compile=args.compile,
                         lr_schedule="constant", bn_recalibration_patterns=0, seed=0)
    stop = threading.Event()
    rates = []
    for event in train(dataset, config, stop=stop):
        if isinstance(event, Failed):
            raise RuntimeError(event.reason)
        if isinstance(event, BatchEnd):
            if event.global_step > args.warmup:
                rates.append(event.patterns_per_second)
            if event.global_step >= args.warmup + args.steps:
                stop.set()
    return rates


def engine_embed(preset: Preset, dataset: Dataset4D, prep: Preprocessor,
                 args: argparse.Namespace, device: torch.device) -> list[float]:
    """Per-batch rates of one ``embed_and_score`` pass over the first positions of the lazy
    scan, from its progress callback (the first ``warmup`` batches left out)."""
    model = Autoencoder(out_shape=prep.output_shape(dataset.detector_shape), config=preset.model)
    n = (args.warmup + args.steps + 1) * args.batch_size
    marks: list[tuple[int, float]] = []
    embed_and_score(model, prep, dataset.with_data(dataset.data[:, :n]),
                    batch_size=args.batch_size, device=device, score=False,
                    progress=lambda done, _total: marks.append((done, time.perf_counter())))
    rates = [(d1 - d0) / (t1 - t0) for (d0, t0), (d1, t1) in zip(marks[:-1], marks[1:])]
    return rates[args.warmup:]


def measure(name: str, size: int, raw: np.ndarray, args: argparse.Namespace,
            device: torch.device) -> dict:
    preset = PRESETS[name]
    dataset = Dataset4D(da.from_array(raw, chunks=(1, args.batch_size, -1, -1)))
    prep = Preprocessor.fit(dataset, PreprocessConfig())
    x_all = torch.from_numpy(prep.transform_patterns(raw[0])).unsqueeze(1)
    macs = macs_per_pattern(Autoencoder(out_shape=(size, size), config=preset.model),
                            (1, size, size))["total"]
    row = {"measure": "throughput", "preset": name, "size": size, "gmacs": macs / 1e9,
           "naive_train": median(naive_train(preset, x_all, args, device)),
           "engine_train": median(engine_train(name, dataset, args)),
           "naive_embed": median(naive_embed(preset, x_all, args, device)),
           "engine_embed": median(engine_embed(preset, dataset, prep, args, device))}
    row["train_ratio"] = ratio(row["engine_train"], row["naive_train"])
    row["embed_ratio"] = ratio(row["engine_embed"], row["naive_embed"])
    return row


THROUGHPUT_COLUMNS = [
    Column("preset"), Column("size"), Column("gmacs", ".2f", "GMAC/pattern"),
    Column("naive_train", ".2f", "naive train/s"), Column("engine_train", ".2f", "engine train/s"),
    Column("train_ratio", ".2f", "engine/naive"), Column("vs_seed", ".2f", "vs seed"),
    Column("naive_embed", ".1f", "naive embed/s"), Column("engine_embed", ".1f", "engine embed/s"),
    Column("embed_ratio", ".2f", "engine/naive"),
]


def throughput(args: argparse.Namespace) -> list[dict]:
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the naive loop is "fp32 (TF32)"
        torch.backends.cudnn.allow_tf32 = True
    n = max(MIN_POSITIONS, (args.steps + args.warmup + 1) * args.batch_size)
    rows = []
    for size in args.sizes:
        raw = synthetic_scan(n, size)
        at_size = [measure(name, size, raw, args, device) for name in args.presets]
        seed_rate = next((r["engine_train"] for r in at_size if r["preset"] == "seed"), None)
        for row in at_size:
            row["vs_seed"] = ratio(row["engine_train"], seed_rate) if seed_rate else None
        rows += at_size
    print_table(rows, THROUGHPUT_COLUMNS,
                f"patterns/s, medians of {args.steps} timed steps (+{args.warmup} warm-up), "
                f"batch {args.batch_size}, device {device}"
                + (", engine compiled" if args.compile else ""))
    return rows


# -- larger-than-memory embedding ---------------------------------------------------------

def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS counter (VmHWM) from the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def write_big_scan(path: Path, size_mb: float, detector: int) -> tuple[int, int]:
    """An HDF5 scan of uint16 patterns of at least ``size_mb``, written row by row."""
    import h5py

    n = int(size_mb * 1024**2 / (detector * detector * 2)) + 1
    rx = 32
    ry = -(-n // rx)
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        d = f.create_dataset("data", shape=(ry, rx, detector, detector), dtype=np.uint16,
                             chunks=(1, 8, detector, detector))
        for r in range(ry):
            d[r] = rng.poisson(5.0, size=(rx, detector, detector)).astype(np.uint16)
    return ry, rx


def embed_file(path: Path, args: argparse.Namespace, device: torch.device) -> dict:
    from napari_4dstem_autoencoder.data import open_dataset

    ds = open_dataset(path)
    prep = Preprocessor.fit(ds, PreprocessConfig(detector_bin=args.mem_bin), max_patterns=256)
    model = Autoencoder(out_shape=prep.output_shape(ds.detector_shape),
                        config=PRESETS[args.mem_preset].model)
    before = _status_mb("VmRSS")
    reset_peak_rss()
    t = time.perf_counter()
    emb = embed_and_score(model, prep, ds, batch_size=args.batch_size * 4, device=device,
                          score=False).embeddings
    seconds = time.perf_counter() - t
    growth = _status_mb("VmHWM") - before
    ds.close()
    return {"positions": int(np.prod(emb.shape[:2])), "seconds": seconds,
            "patterns_per_s": np.prod(emb.shape[:2]) / seconds, "rss_before_mb": before,
            "peak_growth_mb": growth}


def memory_stage(args: argparse.Namespace) -> list[dict]:
    """Embed on-disk scans of ``--mem-file`` MiB and twice that in this (fresh) process."""
    device = resolve_device(args.device)
    args.mem_bin = max(1, args.mem_detector // args.mem_input)
    # one small embedding first, so one-off allocations (thread pools, oneDNN scratch) are
    # not counted as the big scan's
    warm = Dataset4D(da.from_array(synthetic_scan(args.batch_size * 4, args.mem_detector)))
    warm_prep = Preprocessor.fit(warm, PreprocessConfig(detector_bin=args.mem_bin))
    embed_and_score(Autoencoder(out_shape=warm_prep.output_shape(warm.detector_shape),
                                config=PRESETS[args.mem_preset].model),
                    warm_prep, warm, batch_size=args.batch_size * 4, device=device, score=False)
    rows = []
    for factor in (1, 2):
        with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
            path = Path(tmp) / "big_scan.h5"
            write_big_scan(path, factor * args.mem_file, args.mem_detector)
            row = {"file_x": factor, "file_mb": path.stat().st_size / 1024**2,
                   **embed_file(path, args, device)}
        row["growth_per_file_mb"] = row["peak_growth_mb"] / row["file_mb"]
        rows.append(row)
    return rows


MEMORY_COLUMNS = [
    Column("file_x", "d", "file"), Column("file_mb", ".0f", "file MiB"),
    Column("positions"), Column("seconds", ".1f", "s"),
    Column("patterns_per_s", ".1f", "patterns/s"), Column("rss_before_mb", ".0f", "RSS before MiB"),
    Column("peak_growth_mb", ".0f", "peak growth MiB"),
    Column("growth_per_file_mb", ".3f", "growth/file"),
]


def memory(args: argparse.Namespace) -> list[dict]:
    stage_args = ["--stage-memory", "--device", args.device, "--batch-size", str(args.batch_size),
                  "--mem-file", str(args.mem_file), "--mem-detector", str(args.mem_detector),
                  "--mem-input", str(args.mem_input), "--mem-preset", args.mem_preset]
    if args.tmpdir:
        stage_args += ["--tmpdir", args.tmpdir]
    rows = run_isolated(Path(__file__), stage_args)
    for row in rows:
        row["measure"] = "memory"
    print_table(rows, MEMORY_COLUMNS,
                f"larger-than-memory embed: {args.mem_detector}x{args.mem_detector} uint16 on disk "
                f"(HDF5), binned to {args.mem_input}x{args.mem_input}, preset {args.mem_preset}, "
                f"batch {args.batch_size * 4}; peak growth, 2x file / 1x file: "
                f"{ratio(rows[1]['peak_growth_mb'], rows[0]['peak_growth_mb']):.2f} (bounded: ~1)")
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 32x32 only, 2 timed steps, batch 2 on CPU, smaller files")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="default 32 64")
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--batch-size", type=int, default=None,
                   help="default 4 on CPU (2 with --quick), 128 on CUDA")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 5 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile", action="store_true",
                   help="engine uses torch.compile(dynamic=False)")
    p.add_argument("--mem-file", type=float, default=None, metavar="MB",
                   help="size of the smaller on-disk scan (default 256, 128 with --quick); the "
                        "other is twice as large")
    p.add_argument("--mem-detector", type=int, default=512,
                   help="detector pixels of the on-disk scan (binned down to --mem-input)")
    p.add_argument("--mem-input", type=int, default=32, help="network input size after binning")
    p.add_argument("--mem-preset", default="continuous", choices=list(PRESETS))
    p.add_argument("--tmpdir", default=None, help="where the on-disk scans go (default: /tmp)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--stage-memory", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    gpu = resolve_device(args.device).type == "cuda"
    args.batch_size = args.batch_size or (128 if gpu else 2 if args.quick else 4)
    args.steps = args.steps or (2 if args.quick else 20 if gpu else 5)
    args.sizes = args.sizes or ([32] if args.quick else [32, 64])
    args.mem_file = args.mem_file or (128.0 if args.quick else 256.0)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.stage_memory:
        print(json.dumps(memory_stage(args)))
        return
    rows = throughput(args)
    if not args.skip_memory:
        rows += memory(args)
    device = str(resolve_device(args.device))
    name = f"bench_train.{resolve_device(args.device).type}" + (".compile" if args.compile else "")
    path = save(name, rows, key=["measure", "preset", "size", "file_x"], device=device,
                settings=settings_of(args), quick=args.quick)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

"""Training and embedding throughput: the engine against a naive fp32 loop, side by side.

For each preset in ``model.config.PRESETS`` and each pattern size (default 64 and 128):

- naive train: the seed document's loop (``embed(x)`` then ``model(x)``: two encoder passes,
  fp32, tensors already in memory);
- engine train: ``training.engine.train`` on a synthetic in-memory scan (one encoder pass;
  on CUDA bf16 autocast + channels_last, and ``torch.compile(dynamic=False)`` with
  ``--compile``), measured from its own ``BatchEnd`` events (data loading included);
- naive embed: ``model.embed`` over in-memory tensors, fp32;
- engine embed: ``inference.embedding.embed_dataset`` over the lazy scan (reading and
  preprocessing included).

Figures are medians over the timed steps, in patterns per second, with the ratio
engine / naive. Then, in a fresh process, a scan stored on disk as HDF5 and larger than
``--mem-cap`` is embedded and the peak resident memory is printed next to the file size.

    python benchmarks/bench_train.py                    # CPU, ~5 min on 2 cores
    python benchmarks/bench_train.py --device cuda --compile --batch-size 128 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np
import torch

from napari_4dstem_autoencoder.inference.embedding import embed_dataset
from napari_4dstem_autoencoder.data.dataset import Dataset4D
from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor
from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
from napari_4dstem_autoencoder.model.config import PRESETS
from napari_4dstem_autoencoder.training.config import TrainConfig
from napari_4dstem_autoencoder.training.device import resolve_device
from napari_4dstem_autoencoder.training.engine import train
from napari_4dstem_autoencoder.training.events import BatchEnd, Failed


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


def naive_train(preset: str, size: int, batch: int, steps: int, warmup: int,
                device: torch.device, x_all: torch.Tensor) -> float:
    torch.manual_seed(0)
    model = Autoencoder(out_shape=(size, size), config=preset).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rates = []
    for i in range(warmup + steps):
        x = x_all[(i * batch) % len(x_all):][:batch].to(device)
        sync(device)
        t = time.perf_counter()
        z = model.embed(x)  # the seed document's usage: encoder twice per step
        x_hat = model(x)
        loss = model.compute_loss(x, x_hat, z)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(device)
        if i >= warmup:
            rates.append(batch / (time.perf_counter() - t))
    return statistics.median(rates)


@torch.no_grad()
def naive_embed(preset: str, size: int, batch: int, steps: int, device: torch.device,
                x_all: torch.Tensor) -> float:
    model = Autoencoder(out_shape=(size, size), config=preset).to(device).eval()
    rates = []
    for i in range(steps + 1):
        x = x_all[:batch].to(device)
        sync(device)
        t = time.perf_counter()
        model.embed(x)
        sync(device)
        if i:
            rates.append(batch / (time.perf_counter() - t))
    return statistics.median(rates)


def engine_train(preset: str, dataset: Dataset4D, batch: int, steps: int, warmup: int,
                 args: argparse.Namespace) -> float:
    config = TrainConfig(preset=preset, epochs=1, batch_size=batch, val_fraction=0.0,
                         train_subset=(steps + warmup) * batch, device=args.device,
                         preview_every_seconds=None, compile=args.compile, seed=0)
    rates = []
    for event in train(dataset, config):
        if isinstance(event, BatchEnd) and event.step >= warmup:
            rates.append(event.patterns_per_second)
        elif isinstance(event, Failed):
            raise RuntimeError(event.reason)
    return statistics.median(rates)


def engine_embed(preset: str, dataset: Dataset4D, prep: Preprocessor, size: int, batch: int,
                 device: torch.device) -> float:
    model = Autoencoder(out_shape=(size, size), config=preset)
    embed_dataset(model, prep, dataset.with_data(dataset.data[:, :batch]), batch_size=batch,
                  device=device)  # warm up
    t = time.perf_counter()
    embed_dataset(model, prep, dataset, batch_size=batch, device=device)
    return dataset.n_patterns / (time.perf_counter() - t)


def throughput(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the naive loop is "fp32 (TF32)"
        torch.backends.cudnn.allow_tf32 = True
    batch = args.batch_size
    n = (args.steps + args.warmup) * batch
    print(f"device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", torch {torch.__version__}, threads {torch.get_num_threads()}, batch {batch}, "
          f"timed steps {args.steps} (+{args.warmup} warm-up)")
    print("engine: one encoder pass/step"
          + (", bf16 autocast + channels_last" if device.type == "cuda" else ", fp32")
          + (", torch.compile(dynamic=False)" if args.compile else ""))
    header = (f"{'preset':<10}{'size':>6}{'naive train':>13}{'engine train':>14}{'ratio':>8}"
              f"{'naive embed':>13}{'engine embed':>14}{'ratio':>8}")
    print(header)
    print("-" * len(header))
    results = []
    for size in args.sizes:
        raw = synthetic_scan(n, size)
        dataset = Dataset4D(da.from_array(raw, chunks=(1, batch, -1, -1)))
        prep = Preprocessor.fit(dataset, PreprocessConfig())
        x_all = torch.from_numpy(prep.transform_patterns(raw[0])).unsqueeze(1)
        for preset in args.presets:
            row = {"preset": preset, "size": size}
            row["naive_train"] = naive_train(preset, size, batch, args.steps, args.warmup, device, x_all)
            row["engine_train"] = engine_train(preset, dataset, batch, args.steps, args.warmup, args)
            row["naive_embed"] = naive_embed(preset, size, batch, args.steps, device, x_all)
            row["engine_embed"] = engine_embed(preset, dataset, prep, size, batch, device)
            results.append(row)
            print(f"{preset:<10}{size:>6}{row['naive_train']:>13.2f}{row['engine_train']:>14.2f}"
                  f"{row['engine_train'] / row['naive_train']:>7.2f}x"
                  f"{row['naive_embed']:>13.1f}{row['engine_embed']:>14.1f}"
                  f"{row['engine_embed'] / row['naive_embed']:>7.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


# -- larger-than-memory embedding ---------------------------------------------------------------

def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**2


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


def peak_rss_mb() -> float:
    """Peak resident memory of this process image (VmHWM; unlike ru_maxrss it does not carry
    the parent's peak across fork/exec)."""
    return _status_mb("VmHWM")


def write_big_scan(path: Path, size_mb: float, detector: int) -> tuple[int, int]:
    """An HDF5 scan of uint16 patterns of at least ``size_mb``, written row by row."""
    import h5py
    per_pattern = detector * detector * 2
    n = int(size_mb * 1024**2 / per_pattern) + 1
    rx = 32
    ry = -(-n // rx)
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        d = f.create_dataset("data", shape=(ry, rx, detector, detector), dtype=np.uint16,
                             chunks=(1, 8, detector, detector))
        for r in range(ry):
            d[r] = rng.poisson(5.0, size=(rx, detector, detector)).astype(np.uint16)
    return ry, rx


def memory_check(args: argparse.Namespace) -> None:
    """Embed on-disk scans of 2x and 4x ``--mem-cap``; the growth of resident memory must stay
    under the cap and must not grow with the scan. Runs in a fresh process (see main)."""
    from napari_4dstem_autoencoder.data import open_dataset
    device = resolve_device(args.device)
    bin_factor = max(1, args.mem_detector // args.mem_input)
    print(f"larger-than-memory embed: {args.mem_detector}x{args.mem_detector} uint16 patterns "
          f"on disk (HDF5), binned x{bin_factor} to {args.mem_input}x{args.mem_input}, preset "
          f"{args.mem_preset}, batch {args.batch_size * 4}, cap {args.mem_cap:.0f} MiB")
    # one small embedding first, so one-off allocations (thread pools, oneDNN scratch) are not
    # counted as the big scan's
    warm = Dataset4D(da.from_array(synthetic_scan(args.batch_size * 4, args.mem_detector)))
    warm_prep = Preprocessor.fit(warm, PreprocessConfig(detector_bin=bin_factor))
    embed_dataset(Autoencoder(out_shape=warm_prep.output_shape(warm.detector_shape),
                              config=args.mem_preset), warm_prep, warm,
                  batch_size=args.batch_size * 4, device=device)
    growths = []
    for factor in (2, 4):
        with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
            path = Path(tmp) / "big_scan.h5"
            ry, rx = write_big_scan(path, factor * args.mem_cap, args.mem_detector)
            size_mb = path.stat().st_size / 1024**2
            ds = open_dataset(path)
            prep = Preprocessor.fit(ds, PreprocessConfig(detector_bin=bin_factor), max_patterns=256)
            model = Autoencoder(out_shape=prep.output_shape(ds.detector_shape),
                                config=args.mem_preset)
            before = rss_mb()
            reset_peak_rss()
            t = time.perf_counter()
            emb = embed_dataset(model, prep, ds, batch_size=args.batch_size * 4, device=device)
            dt = time.perf_counter() - t
            growth = peak_rss_mb() - before
            growths.append(growth)
            ds.close()
        print(f"  {ry}x{rx} scan, file {size_mb:.0f} MiB: embeddings {emb.shape} in {dt:.1f} s "
              f"({ry * rx / dt:.1f} patterns/s); RSS before {before:.0f} MiB, peak growth "
              f"{growth:.0f} MiB ({growth / size_mb:.2f} of the file; "
              f"{'within' if growth <= args.mem_cap else 'ABOVE'} the cap)")
    print(f"  peak growth with the 2x larger file: {growths[1] / max(growths[0], 1e-9):.2f}x "
          "(bounded memory: about 1x)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    p.add_argument("--batch-size", type=int, default=None,
                   help="default 4 on CPU, 128 on CUDA")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 1 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="engine uses torch.compile(dynamic=False)")
    p.add_argument("--mem-cap", type=float, default=128.0, metavar="MB",
                   help="memory allowed for embedding; the on-disk scans are 2x and 4x this")
    p.add_argument("--mem-detector", type=int, default=512,
                   help="detector pixels of the on-disk scan (binned down to --mem-input)")
    p.add_argument("--mem-input", type=int, default=32, help="network input size after binning")
    p.add_argument("--mem-preset", default="fast")
    p.add_argument("--tmpdir", default=None)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the throughput table as JSON")
    args = p.parse_args(argv)
    gpu = resolve_device(args.device).type == "cuda"
    args.batch_size = args.batch_size or (128 if gpu else 4)
    args.steps = args.steps or (20 if gpu else 1)
    if args.memory_only:
        memory_check(args)
        return
    if not args.skip_throughput:
        throughput(args)
    if not args.skip_memory:
        cmd = [sys.executable, __file__, "--memory-only", "--device", args.device,
               "--mem-cap", str(args.mem_cap), "--mem-detector", str(args.mem_detector),
               "--mem-preset", args.mem_preset, "--batch-size", str(args.batch_size),
               "--mem-input", str(args.mem_input)]
        if args.tmpdir:
            cmd += ["--tmpdir", args.tmpdir]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()

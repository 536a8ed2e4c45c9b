"""Which preset gives embeddings worth training? Train each under the same budget and score it.

For every dataset x preset x seed, the project's engine (``training.engine.train``) trains
with a wall-clock budget; at each budget mark (e.g. 1, 3 and 10 minutes of engine time; the
time spent scoring is not counted) the embeddings of every position are clustered with
k-means and scored against the ground truth (adjusted Rand index, on all positions and on
the "core" away from class boundaries; ``ARI`` and ``gmm`` on standardised dimensions, the
product's default, ``raw`` on the embeddings as they are, the geometry PCA + k-means uses),
next to a PCA(10) + k-means baseline on the same preprocessed patterns. Also printed: live
and effective latent dimensions, reconstruction PSNR/SSIM (scikit-image, data range 1),
training patterns/s and the final loss terms, and a linear probe (``probe``: ARI of
cross-validated LDA predictions from the embeddings, which uses the labels) that tells "the
information is not in the embedding" from "k-means misses it". Spectral clustering on a
10-nearest-neighbour graph (``spectral``, in the summary and the JSON/CSV) is scored on the
embeddings and, in the dataset header, on the PCA(10) scores.

Datasets: ``sim`` = ../shared/data/sim/abtem_three_region.h5 (``data_counts``, ``labels``,
core = ``boundary_distance >= 4`` A) and ``sample`` = the project's synthetic sample
(``data.sample.make_sample_dataset``; core = at least 2 positions from another class).

Examples::

    python benchmarks/eval_presets.py --budgets 1 --seeds 0 --presets seed,fast,stable
    python benchmarks/eval_presets.py --budgets 1,3,10 --seeds 0,1,2 --presets stable \\
        --device cuda --out results/h100      # writes results/h100.json and .csv

Budgets are minutes of engine time (fractions allowed, e.g. 0.25). Marks are taken from one
run per (dataset, preset, seed): the model is scored when the run passes each mark.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from sklearn.decomposition import PCA

from napari_4dstem_autoencoder.analysis.clustering import (
    adjusted_rand,
    cluster_embeddings,
    effective_dimensions,
    linear_probe_ari,
    live_dimensions,
    pca_kmeans_baseline,
    per_class_reconstruction_quality,
    reconstruction_quality,
)
from napari_4dstem_autoencoder.analysis.projection import prepare_features
from napari_4dstem_autoencoder.data.dataset import Dataset4D
from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor
from napari_4dstem_autoencoder.model.config import DEFAULT_PRESET, PRESETS, ModelConfig, get_preset
from napari_4dstem_autoencoder.training.config import TrainConfig
from napari_4dstem_autoencoder.training.engine import train
from napari_4dstem_autoencoder.training.events import BatchEnd, Failed, Finished, Started

REPO = Path(__file__).resolve().parents[1]
SIM_PATH = REPO / ".." / "shared" / "data" / "sim" / "abtem_three_region.h5"


@dataclass
class Task:
    """A labelled dataset with its scoring masks."""

    name: str
    dataset: Dataset4D
    labels: np.ndarray
    core: np.ndarray
    n_clusters: int


@dataclass
class Row:
    dataset: str
    preset: str
    seed: int
    budget_min: float
    device: str
    threads: int
    input_shape: str
    train_seconds: float
    patterns_seen: int
    epochs_seen: float
    train_patterns_per_s: float
    ari_all: float
    ari_core: float
    ari_raw_all: float
    ari_raw_core: float
    ari_gmm_all: float
    ari_spectral_all: float
    probe_ari: float
    baseline_ari_all: float
    baseline_ari_core: float
    live_dims: int
    effective_dims: float
    psnr: float
    ssim: float
    embed_patterns_per_s: float
    final_losses: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, list[float]] = field(default_factory=dict)
    model_changes: dict[str, Any] = field(default_factory=dict)


def load_sim(path: Path) -> Task:
    import dask.array as da
    import h5py

    if not path.is_file():
        raise SystemExit(f"simulated data not found: {path}")
    with h5py.File(path, "r") as f:
        counts = f["data_counts"][()]
        labels = f["labels"][()].astype(np.int64)
        core = f["boundary_distance"][()] >= 4.0
    ds = Dataset4D(da.from_array(counts, chunks=(8, -1, -1, -1)), labels=labels,
                   metadata={"name": path.name})
    return Task("sim", ds, labels, core, 3)


def load_sample(scan: int) -> Task:
    from napari_4dstem_autoencoder.data.sample import LABEL_NAMES, make_sample_dataset

    ds = make_sample_dataset(scan_shape=(scan, scan), detector_shape=(64, 64), seed=0)
    labels = np.asarray(ds.labels).astype(np.int64)
    # core: no other class within 2 positions (chessboard distance)
    core = np.ones(labels.shape, dtype=bool)
    for c in np.unique(labels):
        near_c = ndimage.binary_dilation(labels == c, structure=np.ones((5, 5), bool))
        core &= ~(near_c & (labels != c))
    return Task("sample", ds, labels, core, len(LABEL_NAMES))


def preprocess_all(task: Task, prep: Preprocessor) -> np.ndarray:
    """Every preprocessed pattern, (N, H, W) float32 (the datasets here are small)."""
    view = prep.scan_view(task.dataset)
    raw = np.asarray(view.data.compute())
    return prep.transform_patterns(raw.reshape(-1, *raw.shape[-2:]))


def run_model(model: torch.nn.Module, x: np.ndarray, device: torch.device,
              recon_idx: np.ndarray, batch: int = 128) -> tuple[np.ndarray, np.ndarray, float]:
    """(embeddings of all patterns, reconstructions of ``recon_idx``, embed patterns/s)."""
    model.eval()
    zs = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, x.shape[0], batch):
            xb = torch.from_numpy(x[s:s + batch]).unsqueeze(1).to(device)
            zs.append(model.embed(xb).float().cpu().numpy())
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = x.shape[0] / (time.perf_counter() - t0)
        recon = []
        for s in range(0, recon_idx.size, batch):
            xb = torch.from_numpy(x[recon_idx[s:s + batch]]).unsqueeze(1).to(device)
            recon.append(model(xb).float().cpu().numpy()[:, 0])
    model.train()
    return np.concatenate(zs), np.concatenate(recon), rate


def paused_local(gen, name: str):
    """A local variable of the paused engine generator (None once it has finished)."""
    frame = getattr(gen, "gi_frame", None)
    return frame.f_locals.get(name) if frame is not None else None


def engine_recalibrate(gen):
    """The engine's own BN recalibration (``recalibrate`` in the paused generator), or None."""
    fn = paused_local(gen, "recalibrate")
    return fn if callable(fn) else None


def engine_model(gen) -> torch.nn.Module | None:
    """The model the (suspended) engine generator is training, to score it mid-run.

    The engine hands its model out only in ``Finished``; to score several budget marks from
    one run we read it from the paused generator's frame (read-only; scoring switches it to
    eval mode and back). Returns None if the engine no longer keeps it under that name.
    """
    model = paused_local(gen, "model")
    return model if isinstance(model, torch.nn.Module) else None


def spectral_ari(features: np.ndarray, labels: np.ndarray, k: int, seed: int) -> float:
    """ARI of the library's spectral clustering (10-nearest-neighbour graph) of ``features``,
    used as given: scored on the embeddings and on PCA's scores alike (docs/model.md)."""
    pred = cluster_embeddings(features, k, method="spectral", seed=seed, standardise=False)
    return adjusted_rand(labels, pred.reshape(labels.shape))


def evaluate(task: Task, x: np.ndarray, model: torch.nn.Module, device: torch.device,
             seed: int, recon_idx: np.ndarray) -> dict[str, Any]:
    z, recon, rate = run_model(model, x, device, recon_idx)
    z_map = z.reshape(*task.labels.shape, -1)
    labels = cluster_embeddings(z_map, task.n_clusters, method="kmeans", seed=seed,
                                standardise=True)
    raw = cluster_embeddings(z_map, task.n_clusters, method="kmeans", seed=seed, standardise=False)
    try:
        gmm = cluster_embeddings(z_map, task.n_clusters, method="gmm", seed=seed,
                                 standardise=True)
        ari_gmm = adjusted_rand(task.labels, gmm)
    except ValueError:  # e.g. a fully collapsed latent
        ari_gmm = float("nan")
    try:
        ari_spectral = spectral_ari(prepare_features(z, standardise=True), task.labels,
                                    task.n_clusters, seed)
    except ValueError:
        ari_spectral = float("nan")
    psnr, ssim = reconstruction_quality(x[recon_idx], recon)
    per_class = per_class_reconstruction_quality(
        x[recon_idx], recon, task.labels.ravel()[recon_idx])
    return {
        "ari_all": adjusted_rand(task.labels, labels),
        "ari_core": adjusted_rand(task.labels, labels, mask=task.core),
        "ari_raw_all": adjusted_rand(task.labels, raw),
        "ari_raw_core": adjusted_rand(task.labels, raw, mask=task.core),
        "ari_gmm_all": ari_gmm,
        "ari_spectral_all": ari_spectral,
        "probe_ari": linear_probe_ari(z, task.labels),
        "live_dims": live_dimensions(z),
        "effective_dims": effective_dimensions(z),
        "psnr": psnr, "ssim": ssim, "embed_patterns_per_s": rate,
        "per_class": {str(k): [float(v[0]), float(v[1])] for k, v in per_class.items()},
        "embeddings": z_map,
    }


def train_and_score(task: Task, preset: str, seed: int, budgets: list[float], args,
                    x: np.ndarray, baseline: tuple[float, float]) -> list[Row]:
    marks = sorted(budgets)
    model = get_preset(preset).replace(**args.model_set) if args.model_set else None
    config = TrainConfig(
        preset=preset, model=model, preprocess=args.preprocess, epochs=100_000, batch_size=args.batch_size,
        lr=args.lr, lr_schedule="constant", seed=seed, device=args.device, val_fraction=0.0,
        preview_every_seconds=None, preview_every_steps=None, preview_max_positions=1,
        checkpoint_path=None)
    stop = threading.Event()
    gen = train(task.dataset, config, stop=stop)
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    recon_idx = np.sort(rng.choice(n, size=min(n, args.recon_patterns), replace=False))
    rows: list[Row] = []
    engine_time, seen, rates, last_losses, n_train = 0.0, 0, [], {}, 0
    device = None
    while True:
        t0 = time.perf_counter()
        try:
            event = next(gen)
        except StopIteration:
            break
        engine_time += time.perf_counter() - t0
        if isinstance(event, Failed):
            print(f"  {task.name}/{preset}/seed {seed}: FAILED {event.reason}", flush=True)
            break
        if isinstance(event, Started):
            n_train = event.n_train
        if isinstance(event, BatchEnd):
            last_step = event.step + 1 == event.steps_per_epoch
            seen += n_train - event.step * args.batch_size if last_step else args.batch_size
            rates.append(event.patterns_per_second)
            last_losses = event.losses
        if isinstance(event, Finished):
            break
        while marks and engine_time >= marks[0] * 60 and isinstance(event, BatchEnd):
            model = engine_model(gen)
            if model is None:
                raise SystemExit("cannot reach the engine's model mid-run; use one budget per run")
            device = next(model.parameters()).device
            recalibrate = engine_recalibrate(gen)
            if recalibrate is not None:  # part of training (the engine does it too): timed
                t0 = time.perf_counter()
                recalibrate()
                engine_time += time.perf_counter() - t0
            scores = evaluate(task, x, model, device, seed, recon_idx)
            z_map = scores.pop("embeddings")
            if args.dump is not None:  # for offline analysis of the embeddings themselves
                args.dump.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(args.dump / f"{task.name}_{preset}_s{seed}_{marks[0]:g}min.npz",
                                    embeddings=z_map, labels=task.labels, core=task.core)
            rows.append(make_row(task, preset, seed, marks[0], args, engine_time, seen, rates,
                                 last_losses, scores, baseline, x, device))
            print_row(rows[-1], flush=True)
            marks.pop(0)
        if not marks:
            stop.set()
    gen.close()
    return rows


def make_row(task, preset, seed, budget, args, engine_time, seen, rates, losses, scores,
             baseline, x, device) -> Row:
    per_class = scores.pop("per_class")
    return Row(dataset=task.name, preset=preset, seed=seed, budget_min=budget, device=str(device),
               threads=torch.get_num_threads(), input_shape=f"{x.shape[1]}x{x.shape[2]}",
               train_seconds=round(engine_time, 1), patterns_seen=seen,
               epochs_seen=round(seen / x.shape[0], 2),
               train_patterns_per_s=float(median(rates)) if rates else float("nan"),
               baseline_ari_all=baseline[0], baseline_ari_core=baseline[1],
               final_losses={k: float(v) for k, v in losses.items()}, per_class=per_class,
               model_changes=dict(args.model_set), **scores)


HEADER = (f"{'data':6} {'preset':9} {'seed':>4} {'min':>5} {'pat/s':>6} {'epochs':>6} "
          f"{'ARI':>5} {'core':>5} {'raw':>5} {'rawc':>5} {'gmm':>5} {'probe':>5} {'PCA':>5} "
          f"{'PCAc':>5} {'live':>4} {'eff':>5} {'PSNR':>5} {'SSIM':>5} {'mse':>8} {'div·λ':>8}")


def print_row(r: Row, flush: bool = False) -> None:
    cfg = PRESETS[r.preset].replace(**r.model_changes)
    div = r.final_losses.get("divergence", float("nan")) * cfg.lambda_div
    print(f"{r.dataset:6} {r.preset:9} {r.seed:>4} {r.budget_min:>5g} {r.train_patterns_per_s:>6.1f} "
          f"{r.epochs_seen:>6.2f} {r.ari_all:>5.3f} {r.ari_core:>5.3f} {r.ari_raw_all:>5.3f} "
          f"{r.ari_raw_core:>5.3f} {r.ari_gmm_all:>5.3f} {r.probe_ari:>5.3f} "
          f"{r.baseline_ari_all:>5.3f} {r.baseline_ari_core:>5.3f} {r.live_dims:>4} "
          f"{r.effective_dims:>5.2f} {r.psnr:>5.1f} {r.ssim:>5.3f} "
          f"{r.final_losses.get('mse', float('nan')):>8.2e} {div:>8.1e}", flush=flush)


def summarise(rows: list[Row]) -> None:
    """Median and spread (min..max) over seeds for every dataset x preset x budget."""
    print("\nsummary over seeds: median [min..max]")
    keys = sorted({(r.dataset, r.preset, r.budget_min) for r in rows})
    for d, p, b in keys:
        sel = [r for r in rows if (r.dataset, r.preset, r.budget_min) == (d, p, b)]

        def s(attr):
            v = [getattr(r, attr) for r in sel]
            return f"{median(v):.3f} [{min(v):.3f}..{max(v):.3f}]"

        print(f"{d:6} {p:9} {b:>5g} min  n={len(sel)}  ARI {s('ari_all')}  core {s('ari_core')}"
              f"  raw {s('ari_raw_all')}  spectral {s('ari_spectral_all')}  probe {s('probe_ari')}"
              f"  PCA {sel[0].baseline_ari_all:.3f}/{sel[0].baseline_ari_core:.3f}"
              f"  live {s('live_dims')}  PSNR {s('psnr')}")


def save(rows: list[Row], out: Path) -> None:
    """Write every row so far to OUT.json (full) and OUT.csv (flat columns)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    records = [asdict(r) for r in rows]
    out.with_suffix(".json").write_text(json.dumps(
        {"torch": torch.__version__, "threads": torch.get_num_threads(), "argv": sys.argv[1:],
         "rows": records}, indent=1))
    flat = [{k: v for k, v in r.items() if not isinstance(v, dict)} for r in records]
    if flat:
        with out.with_suffix(".csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(flat[0]))
            w.writeheader()
            w.writerows(flat)


def parse_model_set(items: list[str]) -> dict[str, Any]:
    """``["lambda_corr=0.1", ...]`` -> ``{"lambda_corr": 0.1}``, typed like ModelConfig's fields."""
    fields = {f.name: f for f in ModelConfig.__dataclass_fields__.values()}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields or name == "name":
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{sorted(set(fields) - {'name'})}")
        default = getattr(ModelConfig(), name)
        out[name] = type(default)(value) if not isinstance(default, str) else value
    ModelConfig().replace(**out)  # validates the values
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names")
    ap.add_argument("--datasets", default="sim,sample", help="sim and/or sample")
    ap.add_argument("--budgets", default="1,3,10", help="minutes of engine time (marks)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--detector-bin", type=int, default=1)
    ap.add_argument("--sample-scan", type=int, default=32, help="sample scan side (positions)")
    ap.add_argument("--recon-patterns", type=int, default=256,
                    help="positions whose reconstruction is scored (PSNR/SSIM)")
    ap.add_argument("--sim-path", type=Path, default=SIM_PATH)
    ap.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.csv")
    ap.add_argument("--dump", type=Path, default=None,
                    help="save each mark's embeddings, labels and core mask to DUMP/*.npz")
    ap.add_argument("--set", dest="model_set", action="append", default=[], metavar="FIELD=VALUE",
                    help="change a model-config field of every preset (screening), e.g. "
                         "--set lambda_corr=0.1; repeatable")
    args = ap.parse_args(argv)
    try:
        args.model_set = parse_model_set(args.model_set)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    presets = [p for p in args.presets.split(",") if p]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        print(f"error: unknown preset(s) {unknown}; choose from {sorted(PRESETS)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = [float(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    args.preprocess = PreprocessConfig(scaling="log", normalise=True,
                                       detector_bin=args.detector_bin)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{platform.processor() or platform.machine()}, default preset {DEFAULT_PRESET!r}")
    print(f"batch {args.batch_size}, Adam lr {args.lr} constant, log + normalise, "
          f"detector bin {args.detector_bin}; budgets {budgets} min; seeds {seeds}"
          + (f"; model fields changed: {args.model_set}" if args.model_set else "") + "\n")

    rows: list[Row] = []
    for name in args.datasets.split(","):
        task = load_sim(args.sim_path) if name == "sim" else load_sample(args.sample_scan)
        prep = Preprocessor.fit(task.dataset, args.preprocess)
        x = preprocess_all(task, prep)
        base = [pca_kmeans_baseline(x, task.n_clusters, 10, seed=s).reshape(task.labels.shape)
                for s in seeds]
        baseline = (float(median(adjusted_rand(task.labels, b) for b in base)),
                    float(median(adjusted_rand(task.labels, b, mask=task.core) for b in base)))
        pca_scores = PCA(n_components=10, random_state=0).fit_transform(x.reshape(x.shape[0], -1))
        print(f"{task.name}: {x.shape[0]} patterns of {x.shape[1]}x{x.shape[2]}, "
              f"{task.n_clusters} classes, core {int(task.core.sum())} positions; "
              f"PCA(10)+k-means ARI {baseline[0]:.3f} all, {baseline[1]:.3f} core; "
              f"probe on PCA(10) {linear_probe_ari(pca_scores, task.labels):.3f}; spectral "
              f"clustering on PCA(10) {spectral_ari(pca_scores, task.labels, task.n_clusters, 0):.3f}")
        print(HEADER, flush=True)
        for preset in presets:
            for seed in seeds:
                rows.extend(train_and_score(task, preset, seed, budgets, args, x, baseline))
                if args.out is not None:  # after every run, so an interrupted grid keeps its rows
                    save(rows, args.out)
        task.dataset.close()
    summarise(rows)
    if args.out is not None:
        print(f"\nwrote {args.out.with_suffix('.json')} and .csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

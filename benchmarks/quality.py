"""Embedding quality: for each preset and seed, train through the real engine under a
wall-clock budget and score the embeddings against ground truth, next to PCA + clustering
baselines on the same preprocessed patterns, in one run.

Datasets (labelled, 1,024 positions each):

- ``sim``: ``shared/data/sim/abtem_three_region.h5`` (abTEM multislice; ``data_counts``,
  ``labels``, 3 classes; core = ``boundary_distance`` >= 4 Å);
- ``sample``: the package's generator, ``data.sample.make_sample_dataset`` at 32x32 positions
  (5 classes; core = no other class within 2 positions).

Each (dataset, preset, seed) trains with ``training.engine.train`` (Adam, constant learning
rate, ``TrainConfig.max_minutes`` = ``--minutes``, set-up included) and is scored on every
position, embedded by ``inference.embedding.embed_and_score``: adjusted Rand index (ARI) of
k-means on the standardised embeddings (``analysis.clustering``, the product's default), on
all positions and on the core, ARI of k-means on the raw embeddings, a linear probe (LDA with
the labels: is the information there at all), live and effective dimensions, and PSNR / SSIM
of ``--recon-patterns`` reconstructions (``analysis.quality``, data range 1). Baselines, per
seed: PCA(10) + k-means (the reference), and PCA(10) scores clustered by standardised k-means,
a Gaussian mixture and spectral clustering (how far the linear features go with other
clustering geometry). The summary gives medians over seeds and each preset's margin over
PCA(10) + k-means, seed by seed.

    python benchmarks/quality.py           # docs/model.md's protocol: 10 min x 3 seeds x 3
                                           # presets x 2 datasets, 2 at a time: ~1 h 50 min
    python benchmarks/quality.py --quick   # smoke run: 6 s budgets, seed 0: ~2-3 min
    python benchmarks/quality.py --device cuda --minutes 2 --jobs 6
    python benchmarks/quality.py --presets continuous --set lambda_div=0.01   # a screen

Writes ``benchmarks/results/quality.<device>[.<tag>].json`` (``--set`` runs get a tag).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import SHARED, Column, median, print_table, save, settings_of  # noqa: E402

from napari_4dstem_autoencoder.analysis.clustering import (  # noqa: E402
    adjusted_rand,
    cluster_embeddings,
    effective_dimensions,
    linear_probe_ari,
    live_dimensions,
    pca_kmeans_baseline,
    pca_scores,
    reconstruction_quality,
)
from napari_4dstem_autoencoder.data.dataset import Dataset4D  # noqa: E402
from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor  # noqa: E402
from napari_4dstem_autoencoder.inference.embedding import embed_and_score, reconstruct  # noqa: E402
from napari_4dstem_autoencoder.model.config import ModelConfig  # noqa: E402
from napari_4dstem_autoencoder.objective.config import ObjectiveConfig  # noqa: E402
from napari_4dstem_autoencoder.training.config import TrainConfig  # noqa: E402
from napari_4dstem_autoencoder.training.device import resolve_device  # noqa: E402
from napari_4dstem_autoencoder.training.engine import train  # noqa: E402
from napari_4dstem_autoencoder.training.events import (  # noqa: E402
    BatchEnd,
    Failed,
    Finished,
    Started,
)
from napari_4dstem_autoencoder.training.presets import PRESETS, get_preset  # noqa: E402

SIM_PATH = SHARED / "data" / "sim" / "abtem_three_region.h5"
PCA_COMPONENTS = 10
#: the baseline every preset is measured against
REFERENCE = f"PCA({PCA_COMPONENTS}) k-means"


@dataclass
class Task:
    """A labelled dataset with its scoring mask."""

    name: str
    dataset: Dataset4D
    labels: np.ndarray  # (Ry, Rx)
    core: np.ndarray  # (Ry, Rx) bool: positions away from class boundaries
    n_clusters: int


def load_sim(path: Path) -> Task:
    import dask.array as da
    import h5py

    if not path.is_file():
        raise SystemExit(f"simulated data not found: {path} (pass --sim-path)")
    with h5py.File(path, "r") as f:
        counts = f["data_counts"][()]
        labels = f["labels"][()].astype(np.int64)
        core = f["boundary_distance"][()] >= 4.0
    ds = Dataset4D(da.from_array(counts, chunks=(8, -1, -1, -1)), labels=labels,
                   metadata={"name": path.name})
    return Task("sim", ds, labels, core, 3)


def load_sample(scan: int) -> Task:
    from scipy import ndimage

    from napari_4dstem_autoencoder.data.sample import LABEL_NAMES, make_sample_dataset

    ds = make_sample_dataset(scan_shape=(scan, scan), detector_shape=(64, 64), seed=0)
    labels = np.asarray(ds.labels).astype(np.int64)
    core = np.ones(labels.shape, dtype=bool)
    for c in np.unique(labels):  # no other class within 2 positions (chessboard distance)
        near_c = ndimage.binary_dilation(labels == c, structure=np.ones((5, 5), bool))
        core &= ~(near_c & (labels != c))
    return Task("sample", ds, labels, core, len(LABEL_NAMES))


@functools.lru_cache(maxsize=None)
def load_task(name: str, sim_path: str, sample_scan: int) -> Task:
    """Each process loads a dataset once."""
    return load_sim(Path(sim_path)) if name == "sim" else load_sample(sample_scan)


def task_of(name: str, args: argparse.Namespace) -> Task:
    return load_task(name, str(args.sim_path), args.sample_scan)


def preprocess_config(args: argparse.Namespace) -> PreprocessConfig:
    return PreprocessConfig(scaling="log", normalise=True, detector_bin=args.detector_bin)


def aris(task: Task, labels: np.ndarray) -> dict[str, float]:
    return {"ari": adjusted_rand(task.labels, labels),
            "ari_core": adjusted_rand(task.labels, labels, mask=task.core)}


# -- baselines ----------------------------------------------------------------------------

def baseline_rows(task: Task, seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """PCA(10) + k-means (the reference) and PCA(10) scores under other clusterings."""
    prep = Preprocessor.fit(task.dataset, preprocess_config(args))
    view = prep.scan_view(task.dataset)
    x = prep.transform_patterns(view.patterns(np.arange(view.n_patterns)))
    x = x.reshape(*task.labels.shape, *x.shape[-2:])
    scores, _ = pca_scores(x, PCA_COMPONENTS, seed=seed)
    k = task.n_clusters
    labels = {
        REFERENCE: pca_kmeans_baseline(x, k, PCA_COMPONENTS, seed=seed),
        f"PCA({PCA_COMPONENTS}) k-means std": cluster_embeddings(scores, k, "kmeans", seed,
                                                                  standardise=True),
        f"PCA({PCA_COMPONENTS}) GMM": cluster_embeddings(scores, k, "gmm", seed,
                                                         standardise=False),
        f"PCA({PCA_COMPONENTS}) spectral": cluster_embeddings(scores, k, "spectral", seed,
                                                              standardise=False),
    }
    return [{"dataset": task.name, "method": method, "seed": seed, **aris(task, lab)}
            for method, lab in labels.items()]


# -- the autoencoder ----------------------------------------------------------------------

def parse_set(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``["lambda_div=0.01", "pool_schedule=to4"]`` -> (ModelConfig changes, ObjectiveConfig
    changes), each value typed like the field's default."""
    changes: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    for item in items:
        name, sep, value = item.partition("=")
        for target, cls in zip(changes, (ModelConfig, ObjectiveConfig)):
            if sep and name in {f.name for f in dataclasses.fields(cls)}:
                default = getattr(cls(), name)
                target[name] = value if isinstance(default, str) else type(default)(value)
                break
        else:
            known = sorted(f.name for cls in (ModelConfig, ObjectiveConfig)
                           for f in dataclasses.fields(cls))
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, FIELD one of {known}")
    ModelConfig().replace(**changes[0])  # validates the values
    ObjectiveConfig().replace(**changes[1])
    return changes


def train_config(preset: str, seed: int, args: argparse.Namespace) -> TrainConfig:
    chosen = get_preset(preset)
    model_set, objective_set = parse_set(args.set)
    return TrainConfig(
        preset=preset, model=chosen.model.replace(**model_set),
        objective=chosen.objective.replace(**objective_set), preprocess=preprocess_config(args),
        epochs=100_000, batch_size=args.batch_size, lr=args.lr, lr_schedule="constant",
        seed=seed, device=args.device, val_fraction=0.0, max_minutes=args.minutes,
        bn_recalibration_patterns=args.bn_patterns, preview_max_positions=0,
        checkpoint_path=None)


def train_for_budget(task: Task, config: TrainConfig) -> tuple[Finished, dict[str, Any]]:
    """Run the engine to its time budget; the Finished event and what the run did."""
    t0 = time.perf_counter()
    n_train, seen, rates, losses = 0, 0, [], {}
    for event in train(task.dataset, config):
        if isinstance(event, Failed):
            raise RuntimeError(event.reason)
        if isinstance(event, Started):
            n_train = event.n_train
        elif isinstance(event, BatchEnd):
            last = event.step + 1 == event.steps_per_epoch
            seen += n_train - event.step * config.batch_size if last else config.batch_size
            rates.append(event.patterns_per_second)
            losses = event.losses
        elif isinstance(event, Finished):
            return event, {"steps": len(rates), "epochs": seen / max(n_train, 1),
                           "train_s": time.perf_counter() - t0, "train_pps": median(rates),
                           "reason": event.reason, "losses": losses}
    raise RuntimeError("the engine ended without Finished")


def score(task: Task, done: Finished, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    device = next(done.model.parameters()).device
    z = embed_and_score(done.model, done.preprocessor, task.dataset, device=device,
                        score=False).embeddings
    k = task.n_clusters
    view = done.preprocessor.scan_view(task.dataset)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(view.n_patterns, size=min(view.n_patterns, args.recon_patterns),
                             replace=False))
    x, recon = reconstruct(done.model, done.preprocessor, view.patterns(idx), device=device)
    psnr, ssim = reconstruction_quality(x, recon)
    return {**aris(task, cluster_embeddings(z, k, "kmeans", seed, standardise=True)),
            "ari_raw": adjusted_rand(task.labels,
                                     cluster_embeddings(z, k, "kmeans", seed, standardise=False)),
            "probe": linear_probe_ari(z, task.labels), "live_dims": live_dimensions(z),
            "eff_dims": effective_dimensions(z), "psnr": psnr, "ssim": ssim}


def run_case(dataset: str, preset: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One (dataset, preset, seed): train to the budget, score; a row (with ``error`` when the
    run failed, so one failure does not lose the rest of a long grid)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    row: dict[str, Any] = {"dataset": dataset, "method": preset, "seed": seed,
                           "threads": torch.get_num_threads()}
    try:
        task = task_of(dataset, args)
        done, run = train_for_budget(task, train_config(preset, seed, args))
        return {**row, **score(task, done, seed, args), **run}
    except Exception as exc:  # reported in the row and the printed line
        return {**row, "error": f"{type(exc).__name__}: {exc}"}


# -- the grid, in this process or in workers ------------------------------------------------

def cases(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    return [(d, p, s) for d in args.datasets for p in args.presets for s in args.seeds]


def run_all(args: argparse.Namespace, on_row) -> None:
    """Every case, one at a time here (``--jobs 1``) or in ``--jobs`` spawned processes."""
    if args.jobs == 1:
        for case in cases(args):
            on_row(run_case(*case, args))
        return
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_case, *case, args) for case in cases(args)]
        for future in futures:
            on_row(future.result())


def progress_line(row: dict[str, Any], reference: dict[tuple[str, int], float]) -> str:
    if "error" in row:
        return f"{row['dataset']} {row['method']} seed {row['seed']}: FAILED {row['error']}"
    pca = reference.get((row["dataset"], row["seed"]), float("nan"))
    return (f"{row['dataset']} {row['method']} seed {row['seed']}: ARI {row['ari']:.3f} "
            f"(PCA {pca:.3f}), PSNR {row['psnr']:.1f} dB, {row['steps']} steps = "
            f"{row['epochs']:.2f} epochs in {row['train_s']:.0f} s")


# -- summary ------------------------------------------------------------------------------

def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and method: medians over seeds, spread, margin over the reference."""
    reference = {(r["dataset"], r["seed"]): r["ari"] for r in rows if r["method"] == REFERENCE}
    scored = [r for r in rows if "ari" in r]
    out = []
    for key in dict.fromkeys((r["dataset"], r["method"]) for r in scored):
        sel = [r for r in scored if (r["dataset"], r["method"]) == key]
        margins = [r["ari"] - reference[(r["dataset"], r["seed"])] for r in sel
                   if (r["dataset"], r["seed"]) in reference]
        baseline = key[1] == REFERENCE
        out.append({
            "dataset": key[0], "method": key[1], "seeds": len(sel),
            "ari": median(r["ari"] for r in sel), "ari_min": min(r["ari"] for r in sel),
            "ari_max": max(r["ari"] for r in sel),
            "ari_core": median(r["ari_core"] for r in sel),
            "vs_pca": None if baseline else median(margins),
            "beats_pca": None if baseline else f"{sum(m > 0 for m in margins)}/{len(margins)}",
            "psnr": median(r.get("psnr") for r in sel),
            "epochs": median(r.get("epochs") for r in sel),
            "train_pps": median(r.get("train_pps") for r in sel)})
    return out


ROW_COLUMNS = [
    Column("dataset"), Column("method"), Column("seed"), Column("ari", ".3f", "ARI"),
    Column("ari_core", ".3f", "core"), Column("ari_raw", ".3f", "raw"),
    Column("probe", ".3f"), Column("live_dims", "", "live"), Column("eff_dims", ".2f", "eff"),
    Column("psnr", ".1f", "PSNR"), Column("ssim", ".3f", "SSIM"), Column("steps"),
    Column("epochs", ".2f"), Column("train_pps", ".1f", "train pat/s"),
    Column("train_s", ".0f", "train s"),
]
SUMMARY_COLUMNS = [
    Column("dataset"), Column("method"), Column("seeds"), Column("ari", ".3f", "ARI median"),
    Column("ari_min", ".3f", "min"), Column("ari_max", ".3f", "max"),
    Column("ari_core", ".3f", "core"), Column("vs_pca", "+.3f", "ARI - PCA k-means"),
    Column("beats_pca", "", "seeds above PCA"), Column("psnr", ".1f", "PSNR"),
    Column("epochs", ".2f"), Column("train_pps", ".1f", "train pat/s"),
]


# -- command line -------------------------------------------------------------------------

#: defaults of a full run (the protocol of docs/model.md) and of ``--quick``
FULL = {"minutes": 10.0, "seeds": [0, 1, 2], "batch_size": 32,
        "bn_patterns": TrainConfig.bn_recalibration_patterns, "recon_patterns": 128}
QUICK = {"minutes": 0.1, "seeds": [0], "batch_size": 8, "bn_patterns": 16, "recon_patterns": 16}


def csv_list(kind):
    return lambda text: [kind(v) for v in text.split(",") if v]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: defaults of 0.1-minute budgets, seed 0, batch 8, "
                         "BatchNorm recalibrated on 16 patterns, 16 reconstructions")
    ap.add_argument("--presets", type=csv_list(str), default=list(PRESETS),
                    help=f"comma-separated, from {', '.join(PRESETS)} (default: all)")
    ap.add_argument("--datasets", type=csv_list(str), default=["sim", "sample"])
    ap.add_argument("--minutes", type=float, default=None,
                    help="wall-clock budget of each training run, set-up included (default 10)")
    ap.add_argument("--seeds", type=csv_list(int), default=None, help="default 0,1,2")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    ap.add_argument("--jobs", type=int, default=2,
                    help="training runs side by side, each in its own process (default 2: on "
                         "2 cores, one torch thread each, as docs/model.md measured)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per run (default: the cores shared among the jobs)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 32")
    ap.add_argument("--bn-patterns", type=int, default=None,
                    help="patterns the engine re-estimates BatchNorm statistics on at the end "
                         f"(default {TrainConfig.bn_recalibration_patterns})")
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--detector-bin", type=int, default=2)
    ap.add_argument("--sample-scan", type=int, default=32, help="sample scan side (positions)")
    ap.add_argument("--recon-patterns", type=int, default=None,
                    help="positions whose reconstruction is scored (PSNR/SSIM; default 128)")
    ap.add_argument("--sim-path", type=Path, default=SIM_PATH)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="change a ModelConfig or ObjectiveConfig field of every preset, e.g. "
                         "--set lambda_div=0.01; repeatable")
    ap.add_argument("--tag", default=None, help="added to the results file's name")
    args = ap.parse_args(argv)
    for field, value in (QUICK if args.quick else FULL).items():
        if getattr(args, field) is None:
            setattr(args, field, value)
    try:
        parse_set(args.set)
    except ValueError as exc:
        ap.error(str(exc))
    unknown = sorted(set(args.presets) - set(PRESETS)) + sorted(
        set(args.datasets) - {"sim", "sample"})
    if unknown:
        ap.error(f"unknown preset or dataset: {unknown}")
    if args.threads is None and args.jobs > 1:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    if args.tag is None and args.set:
        args.tag = "set-" + "_".join(args.set).replace("=", "-")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = str(resolve_device(args.device))
    name = f"quality.{resolve_device(args.device).type}" + (f".{args.tag}" if args.tag else "")
    print(f"{len(cases(args))} training runs of {args.minutes:g} min ({args.jobs} at a time), "
          f"device {device}, batch {args.batch_size}, Adam {args.lr:g} constant, log + "
          f"normalise, detector bin {args.detector_bin}"
          + (f"; changed: {', '.join(args.set)}" if args.set else ""), flush=True)
    rows = [row for d in args.datasets for s in args.seeds
            for row in baseline_rows(task_of(d, args), s, args)]
    reference = {(r["dataset"], r["seed"]): r["ari"] for r in rows if r["method"] == REFERENCE}

    def write() -> Path:  # after every run, so an interrupted grid keeps its rows
        return save(name, rows, key=["dataset", "method", "seed"], device=device,
                    settings=settings_of(args), quick=args.quick, summary=summarise(rows))

    def on_row(row: dict[str, Any]) -> None:
        rows.append(row)
        print(progress_line(row, reference), flush=True)
        write()

    run_all(args, on_row)
    failed = [Column("error")] if any("error" in r for r in rows) else []
    print_table(rows, ROW_COLUMNS + failed, "every run (baselines: ARI and core only)")
    print_table(summarise(rows), SUMMARY_COLUMNS,
                f"median over seeds {args.seeds}; margin over {REFERENCE} seed by seed")
    print(f"\nwrote {write()}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

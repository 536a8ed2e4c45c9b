"""Embedding quality on a family of labelled scans: each preset trained the way
``stem-ae train FILE`` trains by default, against PCA, NMF and spectral baselines on the same
scan, seed by seed, in one run (README.md beside this file).

    python benchmarks/quality/run.py                 # the family, seeds 0,1,2, CLI budget
    python benchmarks/quality/run.py --quick         # smoke run: 15 s budgets, seed 0
    python benchmarks/quality/run.py --sets sim-300,rotation-2e3 --presets regions \\
        --seeds 0 --minutes 2
    python benchmarks/quality/run.py --set lambda_div=0.01   # a screen (tagged results)

For each (set, seed): the scan (``scans.py``; the seed draws its noise and layout) and the
baselines (``baselines.py``, in this process, before any training). For each (set, preset,
seed): ``training.plan.plan_run`` times a few steps and picks the detector bin, subset and
epochs for the budget (the CLI's default: ``plan.DEFAULT_CPU_MINUTES`` on CPU), the engine
trains the planned run, ``inference.embedding.embed_and_score`` embeds every position and
k-means (k = classes) on the standardised embeddings labels them (the product's clustering).

Writes ``benchmarks/results/quality/<device>[.<tag>].json`` (``--quick``: ``.quick.json``,
git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _record import SHARED, Column, median, print_table, save, settings_of  # noqa: E402

import baselines  # noqa: E402
import scans  # noqa: E402
from napari_4dstem_autoencoder.analysis.clustering import (  # noqa: E402
    cluster_embeddings,
    effective_dimensions,
    linear_probe_ari,
    live_dimensions,
    reconstruction_quality,
)
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
from napari_4dstem_autoencoder.training.plan import DEFAULT_CPU_MINUTES, apply, plan_run  # noqa: E402
from napari_4dstem_autoencoder.training.presets import PRESETS, get_preset  # noqa: E402

SIM_PATH = SHARED / "data" / "sim" / "abtem_three_region.h5"
DEFAULT_PRESETS = ["regions"]  # seed: 15-40 min a case on this CPU, run it with --presets or on a GPU
#: a preset beats the best baseline by more than this
MARGIN = 0.005


# -- the autoencoder, as ``stem-ae train FILE`` trains it ----------------------------------

def _literal(text: str) -> Any:
    """A value for a field whose default is None: None, a number or the text itself."""
    if text.lower() in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_set(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``["lambda_div=0.01", "pool_schedule=to4"]`` -> (ModelConfig changes, ObjectiveConfig
    changes), each value typed like the field's default (whatever fields the configs have)."""
    changes: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    for item in items:
        name, sep, value = item.partition("=")
        for target, cls in zip(changes, (ModelConfig, ObjectiveConfig)):
            if sep and name in {f.name for f in dataclasses.fields(cls)}:
                default = getattr(cls(), name)
                if isinstance(default, str):
                    target[name] = value
                elif default is None:
                    target[name] = _literal(value)
                elif isinstance(default, bool):
                    target[name] = value.lower() in ("1", "true", "yes", "on")
                else:
                    target[name] = type(default)(value)
                break
        else:
            known = sorted(f.name for cls in (ModelConfig, ObjectiveConfig)
                           for f in dataclasses.fields(cls))
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, FIELD one of {known}")
    ModelConfig().replace(**changes[0])  # validates the values
    ObjectiveConfig().replace(**changes[1])
    return changes


def train_config(preset: str, seed: int, args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig ``stem-ae train`` builds from its defaults (cmd_train's defaults are
    TrainConfig's: epochs, lr, schedule, validation share, precision), no checkpoint and no
    previews; the plan then fills in the detector bin, subset, epochs and budget."""
    chosen = get_preset(preset)
    model_set, objective_set = parse_set(args.set)
    return TrainConfig(
        preset=preset, model=chosen.model.replace(**model_set),
        objective=chosen.objective.replace(**objective_set), batch_size=args.batch_size,
        seed=seed, device=args.device, max_minutes=args.minutes, preview_every_seconds=None,
        preview_max_positions=0, checkpoint_path=None,
        bn_recalibration_patterns=args.bn_patterns)


def train_for_budget(scan: scans.Scan, config: TrainConfig) -> tuple[Finished, dict[str, Any]]:
    """Run the engine to its end; the Finished event and what the run did."""
    t0 = time.perf_counter()
    n_train, seen, rates = 0, 0, []
    for event in train(scan.dataset, config):
        if isinstance(event, Failed):
            raise RuntimeError(event.reason)
        if isinstance(event, Started):
            n_train = event.n_train
        elif isinstance(event, BatchEnd):
            last = event.step + 1 == event.steps_per_epoch
            seen += n_train - event.step * config.batch_size if last else config.batch_size
            rates.append(event.patterns_per_second)
        elif isinstance(event, Finished):
            return event, {"steps": len(rates), "epochs": seen / max(n_train, 1),
                           "train_s": time.perf_counter() - t0, "train_pps": median(rates),
                           "reason": event.reason}
    raise RuntimeError("the engine ended without Finished")


def score(scan: scans.Scan, done: Finished, seed: int, args: argparse.Namespace
          ) -> dict[str, Any]:
    device = next(done.model.parameters()).device
    t0 = time.perf_counter()
    z = embed_and_score(done.model, done.preprocessor, scan.dataset, device=device,
                        score=False).embeddings
    embed_s = time.perf_counter() - t0
    labels = cluster_embeddings(z, scan.n_classes, "kmeans", seed, standardise=True)
    view = done.preprocessor.scan_view(scan.dataset)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(view.n_patterns, size=min(view.n_patterns, args.recon_patterns),
                             replace=False))
    x, recon = reconstruct(done.model, done.preprocessor, view.patterns(idx), device=device)
    psnr, ssim = reconstruction_quality(x, recon)
    return {**baselines.scores(scan, labels), "probe": linear_probe_ari(z, scan.labels),
            "live_dims": live_dimensions(z), "eff_dims": effective_dimensions(z),
            "psnr": psnr, "ssim": ssim, "embed_s": embed_s,
            "embed_pps": view.n_patterns / max(embed_s, 1e-9)}


def run_case(set_name: str, preset: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One (set, preset, seed): plan, train, score; a row (with ``error`` when it failed, so
    one failure does not lose the rest of a long grid)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    scans.SIM_PATH = args.sim_path
    row: dict[str, Any] = {"set": set_name, "method": preset, "seed": seed,
                           "threads": torch.get_num_threads()}
    try:
        scan = scans.load(set_name, seed)
        config = train_config(preset, seed, args)
        t0 = time.perf_counter()
        plan = plan_run(scan.dataset, config, max_minutes=args.minutes)
        plan_s = time.perf_counter() - t0
        done, run = train_for_budget(scan, apply(plan, config))
        return {**row, **score(scan, done, seed, args), **run,
                "plan_bin": plan.detector_bin, "plan_subset": plan.n_used,
                "plan_epochs": plan.epochs, "budget_min": plan.max_minutes,
                "plan_s": plan_s}
    except Exception as exc:  # reported in the row and the printed line
        return {**row, "error": f"{type(exc).__name__}: {exc}"}


# -- the grid ------------------------------------------------------------------------------

def cases(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    return [(s, p, seed) for s in args.sets for seed in args.seeds for p in args.presets]


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


def best_baseline(rows: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """(set, seed) -> the best reference baseline's ARI on that scan."""
    out: dict[tuple[str, int], float] = {}
    for r in rows:
        if r["method"] in baselines.REFERENCES and "ari" in r:
            key = (r["set"], r["seed"])
            out[key] = max(out.get(key, -1.0), r["ari"])
    return out


def progress_line(row: dict[str, Any], best: dict[tuple[str, int], float]) -> str:
    head = f"{row['set']} {row['method']} seed {row['seed']}"
    if "error" in row:
        return f"{head}: FAILED {row['error']}"
    ref = best.get((row["set"], row["seed"]), float("nan"))
    return (f"{head}: ARI {row['ari']:.3f} (best baseline {ref:.3f}), rare recall "
            f"{row['rare_recall']:.2f}, PSNR {row['psnr']:.1f} dB; plan bin {row['plan_bin']}, "
            f"{row['plan_subset']} positions, {row['plan_epochs']} epochs; {row['steps']} steps "
            f"= {row['epochs']:.2f} epochs in {row['train_s']:.0f} s ({row['reason']})")


# -- summary -------------------------------------------------------------------------------

def target_of(best: float, any_high: bool) -> float:
    """The ARI a preset should reach on a set: above the best baseline, at least 0.9 where
    some method reaches 0.9, and half-way from the best baseline to 1 where it is below 0.85."""
    target = best + MARGIN
    if any_high:
        target = max(target, 0.9)
    if best < 0.85:
        target = max(target, best + (1.0 - best) / 2)
    return min(target, 1.0)


def summarise(rows: list[dict[str, Any]], presets: list[str]) -> list[dict[str, Any]]:
    """Per (set, method): median, min and max over seeds; for presets also the target, the
    seeds above the best baseline and whether the median meets the target."""
    scored = [r for r in rows if "ari" in r]
    best = best_baseline(rows)
    out = []
    for set_name in dict.fromkeys(r["set"] for r in scored):
        per = {m: [r for r in scored if r["set"] == set_name and r["method"] == m]
               for m in [*baselines.METHODS, *presets]}
        medians = {m: median(r["ari"] for r in sel) for m, sel in per.items() if sel}
        refs = [medians[m] for m in baselines.REFERENCES if m in medians]
        best_median = max(refs) if refs else float("nan")
        target = target_of(best_median, any(v >= 0.9 for v in medians.values())) \
            if refs else float("nan")
        for method, sel in per.items():
            if not sel:
                continue
            entry: dict[str, Any] = {
                "set": set_name, "method": method, "seeds": len(sel),
                "ari": medians[method], "ari_min": min(r["ari"] for r in sel),
                "ari_max": max(r["ari"] for r in sel),
                "ari_core": median(r.get("ari_core") for r in sel),
                "rare_recall": median(r["rare_recall"] for r in sel)}
            if method in presets:
                wins = [r["ari"] > best[(r["set"], r["seed"])] for r in sel
                        if (r["set"], r["seed"]) in best]
                entry.update({
                    "best_baseline": best_median, "target": target,
                    "beats_best": f"{sum(wins)}/{len(wins)}",
                    "meets_target": bool(medians[method] >= target - 1e-9),
                    **{k: median(r.get(k) for r in sel)
                       for k in ("live_dims", "psnr", "train_pps", "embed_pps", "steps",
                                 "epochs", "plan_bin", "plan_subset", "plan_epochs")}})
            out.append(entry)
    return out


SHORT = {**{f"PCA k-means bin {b}": f"PCA b{b}" for b in baselines.PCA_BINS},
         baselines.BEST_PCA: "best PCA", baselines.NMF: "NMF", baselines.SPECTRAL: "spectral"}


def cell(entry: dict[str, Any] | None, key: str = "ari") -> str | None:
    if entry is None:
        return None
    if key != "ari" or entry["seeds"] == 1:
        return f"{entry[key]:.3f}" if entry.get(key) is not None else None
    return f"{entry['ari']:.3f} [{entry['ari_min']:.2f}–{entry['ari_max']:.2f}]"


def print_summary(summary: list[dict[str, Any]], presets: list[str], seeds: list[int]) -> None:
    methods = [*baselines.METHODS, *presets]
    table, recall = [], []
    for set_name in dict.fromkeys(e["set"] for e in summary):
        by = {e["method"]: e for e in summary if e["set"] == set_name}
        line = {"set": set_name, **{m: cell(by.get(m)) for m in methods}}
        line["target"] = next((by[p]["target"] for p in presets if p in by), None)
        for p in presets:
            if p in by:
                line[f"{p} beats"] = by[p]["beats_best"]
                line[f"{p} meets"] = "yes" if by[p]["meets_target"] else "no"
        table.append(line)
        recall.append({"set": set_name, **{m: cell(by.get(m), "rare_recall") for m in methods}})
    columns = [Column("set"), *(Column(m, "", SHORT.get(m, m)) for m in methods),
               Column("target", ".3f"),
               *(c for p in presets for c in (Column(f"{p} beats"), Column(f"{p} meets")))]
    print_table(table, columns,
                f"ARI, all positions: median [min–max] over seeds {seeds}; target = best "
                f"baseline + {MARGIN}, >= 0.9 where a method reaches 0.9, half-way to 1 below "
                "0.85; 'beats': seeds above the best baseline (best PCA, NMF, spectral)")
    print_table(recall, [Column("set"), *(Column(m, "", SHORT.get(m, m)) for m in methods)],
                "recall of the rarest class after Hungarian matching (median over seeds)")


ROW_COLUMNS = [
    Column("set"), Column("method"), Column("seed"), Column("ari", ".3f", "ARI"),
    Column("ari_core", ".3f", "core"), Column("rare_recall", ".2f", "rare"),
    Column("probe", ".3f"), Column("live_dims", "", "live"), Column("psnr", ".1f", "PSNR"),
    Column("plan_bin", "", "bin"), Column("plan_subset", "", "subset"),
    Column("plan_epochs", "", "plan ep"), Column("steps"), Column("epochs", ".2f"),
    Column("train_pps", ".1f", "train pat/s"), Column("embed_pps", ".0f", "embed pat/s"),
    Column("plan_s", ".0f", "plan s"), Column("train_s", ".0f", "train s"),
]


# -- command line ----------------------------------------------------------------------------

#: a full run's defaults (None: the CLI's own) and ``--quick``'s
FULL = {"minutes": None, "seeds": [0, 1, 2], "batch_size": 32, "presets": DEFAULT_PRESETS,
        "bn_patterns": TrainConfig.bn_recalibration_patterns, "recon_patterns": 64}
#: (``seed`` is left out of ``--quick``: its 256x256 decoder makes the plan's timing alone take
#: 2-4 minutes on 2 cores; name it with --presets to smoke it)
QUICK = {"minutes": 0.25, "seeds": [0], "batch_size": 8, "bn_patterns": 16, "recon_patterns": 16,
         "presets": ["regions"]}


def csv_list(kind):
    return lambda text: [kind(v) for v in text.split(",") if v]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 0.25-minute budgets, seed 0, regions only, batch 8, "
                         "BatchNorm recalibrated on 16 patterns, 16 reconstructions")
    ap.add_argument("--sets", type=csv_list(str), default=list(scans.FAMILY),
                    help=f"comma-separated, from {', '.join(scans.SETS)} (default: all)")
    ap.add_argument("--presets", type=csv_list(str), default=None,
                    help=f"comma-separated, from {', '.join(PRESETS)} (default: "
                         f"{','.join(DEFAULT_PRESETS)}; --quick: regions)")
    ap.add_argument("--seeds", type=csv_list(int), default=None, help="default 0,1,2")
    ap.add_argument("--minutes", type=float, default=None,
                    help="training budget of each run (default: the CLI's, "
                         f"{DEFAULT_CPU_MINUTES:g} min on CPU, none on CUDA)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    ap.add_argument("--jobs", type=int, default=2,
                    help="training runs side by side, each in its own process (default 2)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per run (default: the cores shared among the jobs)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 32 (the CLI's)")
    ap.add_argument("--bn-patterns", type=int, default=None,
                    help="patterns BatchNorm statistics are re-estimated on "
                         f"(default {TrainConfig.bn_recalibration_patterns})")
    ap.add_argument("--recon-patterns", type=int, default=None,
                    help="positions whose reconstruction is scored (PSNR/SSIM; default 64)")
    ap.add_argument("--sim-path", type=Path, default=SIM_PATH)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="change a ModelConfig or ObjectiveConfig field of every preset, e.g. "
                         "--set lambda_div=0.01; repeatable")
    ap.add_argument("--tag", default=None, help="added to the results file's name")
    args = ap.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, list(value) if isinstance(value, list) else value)
    try:
        parse_set(args.set)
    except ValueError as exc:
        ap.error(str(exc))
    unknown = sorted(set(args.presets) - set(PRESETS)) + sorted(set(args.sets) - set(scans.SETS))
    if unknown:
        ap.error(f"unknown preset or set: {unknown}")
    if args.threads is None and args.jobs > 1:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    if args.tag is None and args.set:
        args.tag = "set-" + "_".join(args.set).replace("=", "-")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scans.SIM_PATH = args.sim_path
    device = resolve_device(args.device)
    for name in list(args.sets):
        reason = scans.unavailable(name)
        if reason:
            print(f"skipping {name}: {reason}", flush=True)
            args.sets.remove(name)
    if not args.sets:
        print("no set to run", file=sys.stderr)
        return 2
    budget = (f"{args.minutes:g} min" if args.minutes is not None else
              f"the CLI's default ({DEFAULT_CPU_MINUTES:g} min)" if device.type != "cuda"
              else "the CLI's default (10 epochs, no budget)")
    print(f"{len(args.sets)} sets x seeds {args.seeds}: baselines here, then "
          f"{len(cases(args))} training runs of {', '.join(args.presets)} ({budget} each, "
          f"planned as 'stem-ae train' plans them), {args.jobs} at a time on {device}"
          + (f"; changed: {', '.join(args.set)}" if args.set else ""), flush=True)
    name = f"quality/{device.type}" + (f".{args.tag}" if args.tag else "")
    rows: list[dict[str, Any]] = []

    def write() -> Path:  # after every case, so an interrupted grid keeps its rows
        return save(name, rows, key=["set", "method", "seed"], device=str(device),
                    settings=settings_of(args), quick=args.quick,
                    summary=summarise(rows, args.presets))

    for set_name in args.sets:
        for seed in args.seeds:
            t0 = time.perf_counter()
            try:
                found = baselines.baseline_rows(scans.load(set_name, seed), seed)
            except Exception as exc:
                found = [{"set": set_name, "method": "baselines", "seed": seed,
                          "error": f"{type(exc).__name__}: {exc}"}]
            rows.extend(found)
            print(f"{set_name} seed {seed} baselines ({time.perf_counter() - t0:.0f} s): "
                  + ", ".join(f"{SHORT.get(r['method'], r['method'])} {r['ari']:.3f}"
                              if "ari" in r else f"FAILED {r['error']}" for r in found),
                  flush=True)
    scans.load.cache_clear()  # the workers build their own
    best = best_baseline(rows)

    def on_row(row: dict[str, Any]) -> None:
        rows.append(row)
        print(progress_line(row, best), flush=True)
        write()

    run_all(args, on_row)
    failed = [r for r in rows if "error" in r]
    trained = [r for r in rows if r["method"] in args.presets]
    print_table(trained, ROW_COLUMNS + ([Column("error")] if failed else []),
                "every training run")
    print_summary(summarise(rows, args.presets), args.presets, args.seeds)
    print(f"\nwrote {write()}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

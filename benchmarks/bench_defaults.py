"""What a new user gets from the Train dock's defaults on the built-in sample, through the real
docks in napari: is the run fitted to the machine useful in minutes?

1. The plan: time to fit the run (timed steps), what it chose, its estimate.
2. A run with the dock's defaults (the plan as it is filled in, ``--minutes`` budget, default
   5): Start -> first live map drawn, the run's wall time against the estimate, epochs and
   optimiser steps done, then the automatic embedding of the whole scan (seconds) and the
   clustering that follows it: adjusted Rand index of k-means (k = 5, the dock's default
   scaling) on the embeddings against the sample's ground truth, all positions and away from
   boundaries, next to PCA(10) + k-means on the same preprocessed patterns (same run) and the
   documented 10-minute result of docs/model.md (sample 0.919, 1,024 positions).
3. Stop: a second run with the same settings, Stop pressed after ``--stop-after`` seconds of
   training; seconds from Stop to the run's end (checkpoint written) and whether that
   checkpoint loads.

Needs an X display::

    xvfb-run -a python benchmarks/bench_defaults.py             # ~8-9 min on 2 cores
    xvfb-run -a python benchmarks/bench_defaults.py --minutes 1 --quick

Writes ``benchmarks/results/bench_defaults.json``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import Column, print_table, save, settings_of  # noqa: E402

DOCUMENTED_10_MIN_SAMPLE_ARI = 0.919  # docs/research-log.md §9b, the former 10-minute protocol


def wait_for(app, done, timeout_s: float) -> float:
    """Process events until ``done()``; returns the seconds waited."""
    t0 = time.monotonic()
    while not done():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError("the GUI did not get there in time")
        app.processEvents()
        time.sleep(0.002)
    return time.monotonic() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="the run's budget (default 5)")
    parser.add_argument("--stop-after", type=float, default=20.0,
                        help="seconds of training before Stop is pressed (default 20)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (results not kept)")
    parser.add_argument("--screenshots", type=Path, default=None, metavar="DIR",
                        help="save the window (1366x768) after the plan and after clustering")
    args = parser.parse_args(argv)

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from scipy import ndimage

    from napari_4dstem_autoencoder.analysis.clustering import (adjusted_rand,
                                                                cluster_embeddings,
                                                                pca_kmeans_baseline)
    from napari_4dstem_autoencoder.gui.keys import PLUGIN
    from napari_4dstem_autoencoder.training import events as ev
    from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    viewer.open_sample(PLUGIN, "stem4d_sample")
    _dock, workflow = viewer.window.add_plugin_dock_widget(PLUGIN, "4D-STEM Autoencoder")
    viewer.window._qt_window.resize(1366, 768)
    train, state = workflow.train, workflow.train.state
    train.device.setCurrentText("cpu")
    plans: list = []
    train.plan_ready.connect(plans.append)
    train.max_minutes.setValue(args.minutes)  # the user's budget; the plan fits the rest
    plan_s = wait_for(app, lambda: plans and train.plan is not None
                      and train.plan.max_minutes == args.minutes, 600)
    plan = train.plan
    rows = [{"what": "plan", "seconds": plan_s, "estimate_s": plan.estimate_s,
             "detector_bin": plan.detector_bin, "positions": plan.n_used, "epochs": plan.epochs,
             "patterns_per_s": plan.patterns_per_second}]
    print(f"plan after {plan_s:.1f} s: {plan.describe()}")

    def shot(name: str) -> None:
        if args.screenshots is not None:
            args.screenshots.mkdir(parents=True, exist_ok=True)
            for _ in range(50):
                app.processEvents()
                time.sleep(0.01)
            viewer.screenshot(str(args.screenshots / f"{name}.png"), canvas_only=False)

    workflow.show_step("Train")
    shot("workflow_train_estimate")

    # -- a run with the defaults ------------------------------------------------------------
    maps: list[float] = []
    ended: list = []
    t_start = time.monotonic()
    state.preview_changed.connect(lambda *_: maps.append(time.monotonic()))
    train.run_finished.connect(ended.append)
    train.start()
    wait_for(app, lambda: bool(ended), args.minutes * 60 + 600)
    t_end = time.monotonic()
    finished = ended[0]
    t_embedded = t_end + wait_for(app, lambda: state.embeddings is not None, 1800)
    labels_true = state.dataset.labels
    model = state.model
    emb = state.embeddings
    k = len(np.unique(labels_true))
    view = model.preprocessor.scan_view(state.dataset)
    patterns = model.preprocessor.transform_patterns(np.asarray(view.data.compute()).reshape(
        -1, *view.detector_shape))  # (N, H, W), what the network saw
    ari = adjusted_rand(labels_true, cluster_embeddings(emb, k))
    core = np.ones(labels_true.shape, dtype=bool)  # no other class within 2 positions
    for c in np.unique(labels_true):  # (as benchmarks/quality/run.py)
        near = ndimage.binary_dilation(labels_true == c, structure=np.ones((5, 5), bool))
        core &= ~(near & (labels_true != c))
    ari_core = adjusted_rand(labels_true, cluster_embeddings(emb, k), core)
    pca = pca_kmeans_baseline(patterns, k).reshape(labels_true.shape)
    if args.screenshots is not None:  # the Explore tab after clustering, probe in a region
        done: list = []
        workflow.latent.clustered.connect(done.append)
        workflow.show_step("Maps")
        workflow.latent.n_clusters.setValue(k)
        workflow.latent.cluster()
        wait_for(app, lambda: bool(done), 300)
        state.set_position(40, 20)
        wait_for(app, lambda: workflow.inspector.recon_image is not None, 120)
        shot("workflow_explore")
    rows.append({"what": "run with the defaults",
                 "first_map_s": (maps[0] - t_start) if maps else None,
                 "run_s": t_end - t_start, "estimate_s": plan.estimate_s,
                 "reason": getattr(finished, "reason", str(finished)),
                 "epochs": model.epoch, "steps": model.global_step,
                 "embed_s": t_embedded - t_end, "ari": ari, "ari_core": ari_core,
                 "pca_ari": adjusted_rand(labels_true, pca),
                 "pca_ari_core": adjusted_rand(labels_true, pca, core),
                 "documented_10min_ari": DOCUMENTED_10_MIN_SAMPLE_ARI})

    # -- Stop -------------------------------------------------------------------------------
    ended.clear()
    batches: list[float] = []
    train.event_handled.connect(lambda e: isinstance(e, ev.BatchEnd) and batches.append(1))
    train.start()
    wait_for(app, lambda: bool(batches), 600)
    time.sleep(0)  # training proper has begun: let it run for --stop-after seconds
    t_go = time.monotonic()
    wait_for(app, lambda: time.monotonic() - t_go >= args.stop_after, args.stop_after + 60)
    t_stop = time.monotonic()
    train.stop()
    wait_for(app, lambda: bool(ended), 600)
    stop_s = time.monotonic() - t_stop
    stopped = ended[0]
    loads = False
    if isinstance(stopped, ev.Finished) and stopped.checkpoint:
        loads = load_checkpoint(stopped.checkpoint).global_step == stopped.trained.global_step
    rows.append({"what": "stop", "stop_s": stop_s, "reason": getattr(stopped, "reason", ""),
                 "checkpoint_loads": loads})
    viewer.close()

    print_table(rows[:1], [Column("what"), Column("seconds", ".1f", "timing s"),
                           Column("estimate_s", ".0f", "estimate s"), Column("detector_bin", "d", "bin"),
                           Column("positions", ",d"), Column("epochs", "d"),
                           Column("patterns_per_s", ".1f", "patterns/s")], "the plan")
    print_table(rows[1:2], [Column("first_map_s", ".1f", "first map s"),
                            Column("run_s", ".0f", "run s"), Column("estimate_s", ".0f", "estimate s"),
                            Column("reason"), Column("epochs", "d"), Column("steps", "d"),
                            Column("embed_s", ".1f", "embed s"), Column("ari", ".3f", "ARI"),
                            Column("ari_core", ".3f", "ARI core"), Column("pca_ari", ".3f", "PCA ARI"),
                            Column("pca_ari_core", ".3f", "PCA core"),
                            Column("documented_10min_ari", ".3f", "10-min doc")],
                "a run with the dock's defaults")
    print_table(rows[2:], [Column("stop_s", ".2f", "Stop -> end s"), Column("reason"),
                           Column("checkpoint_loads")], "Stop")
    path = save("bench_defaults", rows, key=["what"], device="cpu", settings=settings_of(args),
                quick=args.quick)
    print(f"torch threads {torch.get_num_threads()}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

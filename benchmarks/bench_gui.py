"""GUI responsiveness: Qt event-loop lateness while the Train dock trains, against idle, and
click-to-inspector time, in one napari session.

1. Lateness of a 10 ms repeating QTimer (p50 / p95 / mean / max, ms, and the share of ticks
   later than a 60 Hz frame) while idle and while CPU training runs in the Train dock's
   worker, in the same run, with their difference.
2. Click to inspector drawn (probe click -> raw | reconstruction | difference), median and
   p95 over several clicks, per pattern size and preset (untrained weights: the cost does not
   depend on training).

Needs an X display (``xvfb-run -a``; Qt's offscreen platform has no OpenGL for napari)::

    xvfb-run -a python benchmarks/bench_gui.py            # ~5 min on 2 cores
    xvfb-run -a python benchmarks/bench_gui.py --quick    # ~2 min

Writes ``benchmarks/results/bench_gui.json``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import Column, print_table, save, settings_of  # noqa: E402

from napari_4dstem_autoencoder.gui.keys import PLUGIN  # noqa: E402
from napari_4dstem_autoencoder.training.presets import DEFAULT_PRESET, PRESETS  # noqa: E402

FRAME_MS = 1000 / 60


def wait_until(app, done, timeout_s: float = 600.0, sleep_s: float = 0.0005) -> None:
    """Process Qt events until ``done()`` is true."""
    end = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > end:
            raise TimeoutError("the GUI did not get there in time")
        app.processEvents()
        time.sleep(sleep_s)


def lateness(app, seconds: float, interval_ms: int = 10) -> np.ndarray:
    """Lateness (ms) of each tick of a repeating ``interval_ms`` timer during ``seconds``."""
    from qtpy.QtCore import QElapsedTimer, QTimer

    clock = QElapsedTimer()
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(lambda: ticks.append(clock.nsecsElapsed() / 1e6))
    clock.start()
    timer.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.0005)
    timer.stop()
    return np.maximum(np.diff(np.asarray(ticks)) - interval_ms, 0.0)


def lateness_row(window: str, late: np.ndarray) -> dict:
    p50, p95 = np.percentile(late, [50, 95])
    return {"measure": "lateness", "window": window, "ticks": int(late.size), "p50_ms": p50,
            "p95_ms": p95, "mean_ms": late.mean(), "max_ms": late.max(),
            "late_frame_pct": 100.0 * np.mean(late > FRAME_MS)}


def open_training_viewer(args: argparse.Namespace):
    """A viewer with the sample open, cropped to ``--train-grid``, and the Train dock set up."""
    import napari

    viewer = napari.Viewer(show=True)
    viewer.open_sample(PLUGIN, "stem4d_sample")
    _d, data = viewer.window.add_plugin_dock_widget(PLUGIN, "Data")
    _t, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    data.scan_crop.setText(f"0, {args.train_grid}, 0, {args.train_grid}")
    data.scan_crop.editingFinished.emit()
    train.preset.setCurrentText(args.train_preset)
    train.epochs.setValue(10_000)
    train.batch_size.setValue(args.batch_size)
    train.device.setCurrentText("cpu")
    train.embed_after.setChecked(False)
    train.preview_seconds = 2.0
    return viewer, train


def bench_lateness(args: argparse.Namespace) -> list[dict]:
    import napari

    from napari_4dstem_autoencoder.training import events as ev

    app = napari.qt.get_qapp()
    viewer, train = open_training_viewer(args)
    for _ in range(20):
        app.processEvents()
    idle = lateness_row("idle", lateness(app, args.seconds))
    batches: list[float] = []
    train.event_handled.connect(
        lambda e: batches.append(time.monotonic()) if isinstance(e, ev.BatchEnd) else None)
    train.start()
    wait_until(app, lambda: bool(batches), sleep_s=0.005)  # the first optimiser step
    busy = lateness_row("training (worker)", lateness(app, args.seconds))
    busy["batches"] = len(batches)
    train.stop()
    wait_until(app, lambda: not train.running, sleep_s=0.01)
    viewer.close()
    for key in ("p50_ms", "p95_ms", "mean_ms"):
        busy[key.replace("_ms", "_minus_idle_ms")] = busy[key] - idle[key]
    return [idle, busy]


def clicks_to_inspector(app, state, inspector, n_clicks: int, scan: int) -> tuple[list, list]:
    """(raw drawn ms, reconstruction drawn ms) of each click after the first (torch warm-up)."""
    rng = np.random.default_rng(0)
    raw_ms, recon_ms = [], []
    for i in range(n_clicks + 1):
        done: list[float] = []
        inspector.updated.connect(lambda: done.append(time.perf_counter()))
        pos = tuple(int(p) for p in rng.integers(0, scan, size=2))
        t0 = time.perf_counter()
        state.set_position(*pos)  # the raw pattern is drawn on return
        t_raw = time.perf_counter()
        wait_until(app, lambda: bool(done) and inspector.recon_image is not None
                   and inspector.position == pos and not inspector._decoder.busy)
        inspector.updated.disconnect()
        if i:
            raw_ms.append((t_raw - t0) * 1e3)
            recon_ms.append((done[-1] - t0) * 1e3)
    return raw_ms, recon_ms


def inspector_row(size: int, preset: str, ckpt: Path, dataset, args: argparse.Namespace) -> dict:
    import napari

    from napari_4dstem_autoencoder.gui.hooks import navigator_layers
    from napari_4dstem_autoencoder.gui.state import get_state

    app = napari.qt.get_qapp()
    viewer = napari.Viewer(show=True)
    for data, kwargs, kind in navigator_layers(dataset, name=f"sample {size}"):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    _i, inspector = viewer.window.add_plugin_dock_widget(PLUGIN, "Inspector")
    _m, model_dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Model")
    state = get_state(viewer)
    model_dock.load_checkpoint(ckpt)
    wait_until(app, lambda: state.model is not None, sleep_s=0.005)
    raw_ms, recon_ms = clicks_to_inspector(app, state, inspector, args.clicks, args.scan)
    decode_s = inspector.last_decode_s
    viewer.close()
    return {"measure": "inspector", "size": size, "preset": preset,
            "raw_median_ms": float(np.median(raw_ms)),
            "recon_median_ms": float(np.median(recon_ms)),
            "recon_p95_ms": float(np.percentile(recon_ms, 95)),
            "decode_ms": decode_s * 1e3, "path": "sync" if decode_s < 0.05 else "worker"}


def bench_inspector(args: argparse.Namespace) -> list[dict]:
    from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor
    from napari_4dstem_autoencoder.data.sample import make_sample_dataset
    from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
    from napari_4dstem_autoencoder.training.checkpoints import save_checkpoint

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gui-") as tmp:
        for size in args.sizes:
            ds = make_sample_dataset(scan_shape=(args.scan, args.scan), detector_shape=(size, size))
            prep = Preprocessor.fit(ds, PreprocessConfig(), max_patterns=64)
            for preset in args.presets:
                model = Autoencoder(out_shape=(size, size), config=PRESETS[preset].model).eval()
                ckpt = save_checkpoint(Path(tmp) / f"{preset}-{size}.safetensors", model, prep,
                                       input_shape=(size, size))
                rows.append(inspector_row(size, preset, ckpt, ds, args))
    return rows


LATENESS_COLUMNS = [Column("window"), Column("ticks"), Column("p50_ms", ".2f", "p50 ms"),
                    Column("p95_ms", ".2f", "p95 ms"), Column("mean_ms", ".2f", "mean ms"),
                    Column("max_ms", ".1f", "max ms"),
                    Column("late_frame_pct", ".1f", "% later than 16.7 ms"),
                    Column("batches"), Column("p95_minus_idle_ms", "+.2f", "p95 - idle ms")]
INSPECTOR_COLUMNS = [Column("size"), Column("preset"), Column("raw_median_ms", ".1f", "raw ms"),
                     Column("recon_median_ms", ".1f", "recon median ms"),
                     Column("recon_p95_ms", ".1f", "recon p95 ms"),
                     Column("decode_ms", ".0f", "encode+decode ms"), Column("path")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: defaults of 2 s windows, 2 clicks, 64x64, the default "
                        "preset only")
    p.add_argument("--seconds", type=float, default=None,
                   help="length of each lateness window (default 10)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--train-preset", default=DEFAULT_PRESET, choices=list(PRESETS))
    p.add_argument("--train-grid", type=int, default=16, help="train on an N x N scan crop")
    p.add_argument("--presets", nargs="+", default=None, choices=list(PRESETS),
                   help="presets whose inspector time is measured (default: all)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="default 64 128")
    p.add_argument("--scan", type=int, default=16, help="scan side of the inspector's sample")
    p.add_argument("--clicks", type=int, default=None, help="default 10")
    p.add_argument("--skip-lateness", action="store_true")
    p.add_argument("--skip-inspector", action="store_true")
    args = p.parse_args(argv)
    quick = {"seconds": 2.0, "clicks": 2, "sizes": [64], "presets": [DEFAULT_PRESET]}
    full = {"seconds": 10.0, "clicks": 10, "sizes": [64, 128], "presets": list(PRESETS)}
    for field, value in (quick if args.quick else full).items():
        if getattr(args, field) is None:
            setattr(args, field, value)
    return args


def main(argv: list[str] | None = None) -> None:
    import torch

    args = parse_args(argv)
    rows = []
    if not args.skip_lateness:
        rows += bench_lateness(args)
        print_table(rows, LATENESS_COLUMNS,
                    f"10 ms QTimer lateness, {args.seconds:g} s windows; Train dock: "
                    f"{args.train_preset}, batch {args.batch_size}, 64x64, {args.train_grid}^2 "
                    f"positions, a preview every 2 s; torch threads {torch.get_num_threads()}")
    if not args.skip_inspector:
        inspected = bench_inspector(args)
        print_table(inspected, INSPECTOR_COLUMNS,
                    f"click -> inspector drawn (raw read + one encode/decode), "
                    f"{args.clicks} clicks after a warm-up click")
        rows += inspected
    path = save("bench_gui", rows, key=["measure", "window", "size", "preset"], device="cpu",
                settings=settings_of(args), quick=args.quick)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

"""GUI responsiveness: Qt event-loop lateness while training runs, and click-to-inspector time.

Run under a display (or ``xvfb-run -a python benchmarks/bench_gui.py``). Prints:

1. lateness of a 10 ms repeating QTimer (p50 / p95 / max, ms) while idle and while CPU
   training runs in the Train dock's worker, in the same run, and their ratio;
2. click-to-inspector time (probe click -> raw | reconstruction | difference drawn), median and
   p95 over several clicks, at 64x64 and 128x128 patterns, for the chosen presets (untrained
   weights: the cost does not depend on training).

Nothing here is asserted: figures are printed side by side, with torch's thread count.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

PLUGIN = "napari-4dstem-autoencoder"


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
    gaps = np.diff(np.asarray(ticks))
    return np.maximum(gaps - interval_ms, 0.0)


def summarise(name: str, late: np.ndarray) -> tuple[float, float, float]:
    p50, p95 = np.percentile(late, [50, 95])
    over = 100.0 * np.mean(late > 16.0)
    print(f"  {name:<26} ticks {late.size:5d}   p50 {p50:6.2f} ms   p95 {p95:6.2f} ms   "
          f"mean {late.mean():6.2f} ms   max {late.max():7.1f} ms   late >16 ms: {over:4.1f}%")
    return float(p50), float(p95), float(late.mean())


def bench_lateness(args: argparse.Namespace) -> None:
    import napari

    from napari_4dstem_autoencoder.gui.state import get_state
    from napari_4dstem_autoencoder.training import events as ev

    viewer = napari.Viewer(show=True)
    app = napari.qt.get_qapp()
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
    for _ in range(20):
        app.processEvents()

    print(f"\n[1] Qt event-loop lateness of a 10 ms QTimer ({args.seconds:.0f} s each)")
    idle = summarise("idle", lateness(app, args.seconds))
    batches: list[float] = []
    train.event_handled.connect(lambda e: batches.append(time.monotonic())
                                if isinstance(e, ev.BatchEnd) else None)
    train.start()
    t0 = time.monotonic()
    while not batches and time.monotonic() - t0 < 600:  # wait for the first optimiser step
        app.processEvents()
        time.sleep(0.005)
    busy_late = lateness(app, args.seconds)
    busy = summarise("while training (worker)", busy_late)
    n_batches = len(batches)
    train.stop()
    while train.running:
        app.processEvents()
        time.sleep(0.01)
    print(f"  training - idle: p50 {busy[0] - idle[0]:+.2f} ms, p95 {busy[1] - idle[1]:+.2f} ms, "
          f"mean {busy[2] - idle[2]:+.2f} ms; {n_batches} batches of {args.batch_size} "
          f"({args.train_preset}, 64x64 patterns) ran during the measurement")
    get_state(viewer)
    viewer.close()


def bench_inspector(args: argparse.Namespace) -> None:
    import napari
    import torch

    from napari_4dstem_autoencoder.gui.state import get_state
    from napari_4dstem_autoencoder.gui.hooks import dataset_layers
    from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor
    from napari_4dstem_autoencoder.data.sample import make_sample_dataset
    from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
    from napari_4dstem_autoencoder.model.config import get_preset
    from napari_4dstem_autoencoder.training.checkpoints import save_checkpoint

    app = napari.qt.get_qapp()
    print(f"\n[2] click -> inspector drawn (raw read + one encode/decode), {args.clicks} clicks")
    tmp = Path(tempfile.mkdtemp(prefix="bench-gui-"))
    for size in (64, 128):
        ds = make_sample_dataset(scan_shape=(16, 16), detector_shape=(size, size))
        prep = Preprocessor.fit(ds, PreprocessConfig(), max_patterns=64)
        for preset in args.presets:
            model = Autoencoder(out_shape=(size, size), config=get_preset(preset)).eval()
            ckpt = save_checkpoint(tmp / f"{preset}-{size}.safetensors", model, prep,
                                   input_shape=(size, size))
            viewer = napari.Viewer(show=True)
            for data, kwargs, kind in dataset_layers(ds, name=f"sample {size}"):
                getattr(viewer, f"add_{kind}")(data, **kwargs)
            _i, inspector = viewer.window.add_plugin_dock_widget(PLUGIN, "Inspector")
            _m, model_dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Model")
            state = get_state(viewer)
            model_dock.load_checkpoint(ckpt)
            while state.model is None:
                app.processEvents()
                time.sleep(0.005)
            times, raw_times = [], []
            rng = np.random.default_rng(0)
            for i in range(args.clicks + 1):
                done = []
                inspector.updated.connect(lambda: done.append(time.perf_counter()))
                pos = rng.integers(0, 16, size=2)
                t0 = time.perf_counter()
                state.set_position(int(pos[0]), int(pos[1]))  # raw pattern drawn on return
                t_raw = time.perf_counter()
                while not (done and inspector.recon_image is not None
                           and inspector.position == tuple(int(p) for p in pos)
                           and not inspector._decoder.busy):
                    app.processEvents()
                    time.sleep(0.0005)
                inspector.updated.disconnect()
                if i:  # the first click warms up torch
                    times.append((done[-1] - t0) * 1e3)
                    raw_times.append((t_raw - t0) * 1e3)
            t = np.asarray(times)
            path = "sync" if inspector.last_decode_s < 0.05 else "worker"
            print(f"  {size}x{size}  {preset:<9} raw pattern drawn: median {np.median(raw_times):6.1f} ms"
                  f"   + reconstruction: median {np.median(t):7.1f} ms, p95 "
                  f"{np.percentile(t, 95):7.1f} ms   (encode+decode {inspector.last_decode_s * 1e3:.0f} ms,"
                  f" {path} path)")
            viewer.close()
    print(f"  torch threads: {torch.get_num_threads()}")


def main() -> None:
    from napari_4dstem_autoencoder.model.config import DEFAULT_PRESET, PRESETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each lateness window")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-preset", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    parser.add_argument("--train-grid", type=int, default=16, help="train on an N x N scan crop")
    parser.add_argument("--presets", nargs="+", default=sorted(PRESETS), choices=sorted(PRESETS))
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--skip-lateness", action="store_true")
    parser.add_argument("--skip-inspector", action="store_true")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"train preset {args.train_preset}, batch {args.batch_size}")
    if not args.skip_lateness:
        bench_lateness(args)
    if not args.skip_inspector:
        bench_inspector(args)


if __name__ == "__main__":
    main()

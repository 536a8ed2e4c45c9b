"""GUI responsiveness: Qt event-loop lateness while the Train dock trains, against idle, and
click-to-inspector time, in one napari session.

1. Lateness of a 10 ms repeating QTimer (p50 / p95 / mean / max, ms, and the share of ticks
   later than a 60 Hz frame) while idle and while CPU training runs in the Train dock's
   worker, in the same run, with their difference.
2. Click to Inspector drawn (a click on the canvas -> raw | reconstruction | difference and
   the probe marker painted), median and p95 over several clicks, at 64 and 128 px patterns
   on a 128 x 128 scan of uint16 counts (a memory-mapped .npy: 512 MiB at 128 px):
   uncached (a model loaded, nothing embedded: the decode runs in a worker) and cached (the
   embedding pass's stored reconstructions, in memory and in the on-disk store). Untrained
   weights: the cost does not depend on training.
3. Start -> first live map: the Train dock with its defaults on the sample, from Start to
   the first map drawn (a training preview or the embeddings).

Needs an X display (``xvfb-run -a``; Qt's offscreen platform has no OpenGL for napari)::

    xvfb-run -a python benchmarks/bench_gui.py            # ~5 min on 2 cores
    xvfb-run -a python benchmarks/bench_gui.py --quick    # ~4 min

Writes ``benchmarks/results/bench_gui.json``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
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


def wait_in_loop(done, timeout_s: float = 600.0) -> None:
    """Run a Qt event loop until ``done()`` is true: it sleeps in the event loop between
    events (a 1 ms timer checks ``done``), so waiting costs the GUI thread almost no CPU."""
    from qtpy.QtCore import QEventLoop, QTimer

    if done():
        return
    loop = QEventLoop()
    end = time.monotonic() + timeout_s
    timer = QTimer()
    timer.setInterval(1)
    timer.timeout.connect(lambda: loop.quit() if done() or time.monotonic() > end else None)
    timer.start()
    loop.exec()
    timer.stop()
    if not done():
        raise TimeoutError("the GUI did not get there in time")


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


def click_at(viewer, world: tuple[float, float]) -> None:
    """A left click (press + release, no drag) at a world position, through napari's own
    mouse-callback machinery (what a click on the canvas runs, minus Qt's event decoding)."""
    from types import SimpleNamespace

    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    position = tuple([0.0] * (viewer.dims.ndim - 2)) + tuple(world)
    event = SimpleNamespace(type="mouse_press", position=position, button=1, modifiers=[],
                            is_dragging=False, handled=False, view_direction=None,
                            dims_displayed=list(range(viewer.dims.ndim))[-2:])
    mouse_press_callbacks(viewer, event)
    event.type = "mouse_release"
    mouse_release_callbacks(viewer, event)


def clicks_to_inspector(app, viewer, state, inspector, n_clicks: int, scan: int,
                        expect: str) -> tuple[list, list, list]:
    """(raw drawn ms, reconstruction drawn ms, GUI-thread CPU ms) of each click after the
    first (a warm-up).

    A click lands on a random position of the file's scan grid; "drawn" is when the Inspector
    has the position's images (its ``updated`` signal, with ``recon_source == expect``) and
    one more pass of the event loop has painted them (and the moved probe marker). The CPU
    time the GUI thread spent meanwhile (``time.thread_time``) hardly depends on how busy the
    machine is, unlike the wall-clock times.
    """
    rng = np.random.default_rng(0)
    step = state.file_geometry().step
    raw_ms, recon_ms, cpu_ms = [], [], []
    for i in range(n_clicks + 1):
        done: list[float] = []

        def mark() -> None:
            done.append(time.perf_counter())

        inspector.updated.connect(mark)
        pos = tuple(int(p) for p in rng.integers(0, scan, size=2))
        c0, t0 = time.thread_time(), time.perf_counter()
        click_at(viewer, (pos[0] * step[0], pos[1] * step[1]))
        app.processEvents()  # the raw (preprocessed) pattern and the marker painted
        t_raw = time.perf_counter()
        wait_in_loop(lambda: bool(done) and inspector.position == pos
                     and inspector.recon_source == expect)
        app.processEvents()  # ... and the reconstruction and difference
        t_recon, c1 = time.perf_counter(), time.thread_time()
        inspector.updated.disconnect(mark)
        if inspector.recon_source != expect:
            raise RuntimeError(f"expected a {expect} reconstruction, got {inspector.recon_source}")
        if i:
            raw_ms.append((t_raw - t0) * 1e3)
            recon_ms.append((t_recon - t0) * 1e3)
            cpu_ms.append((c1 - c0) * 1e3)
    return raw_ms, recon_ms, cpu_ms


def scan_file(path: Path, scan: int, size: int):
    """A (scan, scan, size, size) uint16 dataset memory-mapped from a .npy file: the package
    sample (32 x 32 positions, ``size`` px patterns, five regions) tiled over the scan. uint16
    counts keep the 128 x 128 scan of 128 px patterns at 512 MiB (float32 would be 1 GiB)."""
    import dask.array as da

    from napari_4dstem_autoencoder.data.sample import make_sample_dataset

    tile = min(32, scan)
    small = make_sample_dataset(scan_shape=(tile, tile), detector_shape=(size, size))
    counts = np.asarray(small.data)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16,
                                    shape=(scan, scan, size, size))
    for r in range(0, scan, tile):
        for c in range(0, scan, tile):
            out[r:r + tile, c:c + tile] = counts[:scan - r, :scan - c]
    out.flush()
    del out
    data = np.load(path, mmap_mode="r")
    return small, small.with_data(da.from_array(data, chunks=(16, scan, size, size)))


def fill_store(state, loaded, budget: int | None, directory: Path):
    """A reconstruction store for the state's model and dataset, every position filled, as the
    embedding pass fills it, batch by batch (with the preprocessed input rescaled: the
    values do not change what a click costs, and a real pass over 16,384 patterns of 128 px
    outlasts the rest of the benchmark many times over on two CPU cores; ``--embed`` runs the
    real pass)."""
    from napari_4dstem_autoencoder.inference.reconstructions import (DEFAULT_MEMORY_BUDGET,
                                                                     ReconstructionStore)

    prep = loaded.preprocessor
    view = prep.scan_view(state.dataset)
    ry, rx = view.scan_shape
    store = ReconstructionStore((ry, rx), prep.output_shape(view.detector_shape),
                                memory_budget=DEFAULT_MEMORY_BUDGET if budget is None else budget,
                                directory=directory, source=(loaded, state.dataset))
    for r in range(ry):
        x = prep.transform_patterns(np.asarray(view.data[r].compute()))
        store.put(np.full(rx, r), np.arange(rx), 0.9 * x)
    store.finish()
    return store


def inspector_rows(size: int, preset: str, ckpt: Path, dataset, args: argparse.Namespace,
                   tmp: Path) -> list[dict]:
    import napari

    from napari_4dstem_autoencoder.gui.hooks import navigator_layers
    from napari_4dstem_autoencoder.gui.jobs import embedding_job
    from napari_4dstem_autoencoder.gui.state import get_state

    app = napari.qt.get_qapp()
    viewer = napari.Viewer(show=True)
    for data, kwargs, kind in navigator_layers(dataset, name=f"scan {size}"):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    _i, inspector = viewer.window.add_plugin_dock_widget(PLUGIN, "Inspector")
    _m, model_dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Model")
    state = get_state(viewer)
    model_dock.load_checkpoint(ckpt)
    wait_until(app, lambda: state.model is not None, sleep_s=0.005)
    for _ in range(20):
        app.processEvents()
    base = {"measure": "inspector", "size": size, "scan": args.scan, "preset": preset}
    rows = []

    def row(path: str, times: tuple[list, list, list], **extra) -> dict:
        raw_ms, recon_ms, cpu_ms = times
        return {**base, "path": path, "clicks": len(recon_ms),
                "raw_median_ms": float(np.median(raw_ms)),
                "recon_median_ms": float(np.median(recon_ms)),
                "recon_p95_ms": float(np.percentile(recon_ms, 95)),
                "gui_cpu_median_ms": float(np.median(cpu_ms)),
                "load_1min": os.getloadavg()[0], **extra}

    # uncached: a model loaded, nothing embedded -> the decode runs in a worker
    times = clicks_to_inspector(app, viewer, state, inspector, args.clicks, args.scan, "decoded")
    rows.append(row("uncached", times, decode_ms=inspector.last_decode_s * 1e3))
    # cached: the embedding pass's reconstructions, in memory and on disk
    for where, budget in (("cached (memory)", None), ("cached (disk)", 0)):
        if args.embed:
            job = embedding_job(state)
            job.memory_budget, job.directory = budget, str(tmp)
            t0 = time.perf_counter()
            job.start()
            wait_until(app, lambda: not job.running, sleep_s=0.01)
            embed_s = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            state.set_reconstructions(fill_store(state, state.model, budget, tmp))
            embed_s = None
        store = state.reconstructions
        on_disk = store.on_disk
        times = clicks_to_inspector(app, viewer, state, inspector, args.cached_clicks,
                                    args.scan, "stored")
        rows.append(row(where, times, store_mib=store.nbytes / 2**20, on_disk=on_disk,
                        embed_s=embed_s))
        state.set_reconstructions(None)
    viewer.close()
    return rows


def bench_inspector(args: argparse.Namespace) -> list[dict]:
    from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor
    from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
    from napari_4dstem_autoencoder.training.checkpoints import save_checkpoint

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gui-") as tmp_name:
        tmp = Path(tmp_name)
        for size in args.sizes:
            small, ds = scan_file(tmp / f"scan-{size}.npy", args.scan, size)
            prep = Preprocessor.fit(small, PreprocessConfig(), max_patterns=64)
            shape = prep.output_shape((size, size))
            for preset in args.presets:
                model = Autoencoder(out_shape=shape, config=PRESETS[preset].model).eval()
                ckpt = save_checkpoint(tmp / f"{preset}-{size}.safetensors", model, prep,
                                       input_shape=shape)
                rows += inspector_rows(size, preset, ckpt, ds, args, tmp)
            del ds
            (tmp / f"scan-{size}.npy").unlink()
    return rows


def bench_first_map(args: argparse.Namespace) -> list[dict]:
    """Start -> first live map drawn, the Train dock with its defaults, on the sample."""
    import napari

    from napari_4dstem_autoencoder.gui.canvas import EMBEDDINGS_LAYER
    from napari_4dstem_autoencoder.gui.jobs import embedding_job
    from napari_4dstem_autoencoder.gui.state import get_state

    app = napari.qt.get_qapp()
    viewer = napari.Viewer(show=True)
    viewer.open_sample(PLUGIN, "stem4d_sample")
    _t, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    state = get_state(viewer)
    for _ in range(20):
        app.processEvents()
    seen: list[float] = []

    def first(*_args) -> None:
        if not seen:
            seen.append(time.perf_counter())

    state.preview_changed.connect(first)
    state.embeddings_changed.connect(first)
    planned = train.plan is not None  # pressed as a new user would: before the estimate?
    t0 = time.perf_counter()
    train.start()
    try:
        # (a Start pressed while the first plan is timed waits for it: start_pending)
        wait_until(app, lambda: bool(seen) or not (train.running or train.start_pending),
                   timeout_s=args.map_timeout, sleep_s=0.005)
        app.processEvents()  # the map layer painted
        first_s = (seen[0] - t0) if seen else None
        reached = bool(seen) and EMBEDDINGS_LAYER in viewer.layers
        load = os.getloadavg()[0]
    except TimeoutError:
        first_s, reached, load = None, False, os.getloadavg()[0]
    settings = {"preset": train.preset.currentText(), "epochs": train.epochs.value(),
                "batch_size": train.batch_size.value(), "device": train.device.currentText(),
                "preview_seconds": train.preview_seconds, "plan_before_start": planned}
    train.stop()
    wait_until(app, lambda: not train.running, sleep_s=0.01)
    job = embedding_job(state)  # the dock embeds the scan once a run ends: stop that too
    job.stop()
    wait_until(app, lambda: not job.running, sleep_s=0.01)
    viewer.close()
    return [{"measure": "first live map", **settings, "first_map_s": first_s,
             "reached": reached, "timeout_s": args.map_timeout, "load_1min": load}]


LATENESS_COLUMNS = [Column("window"), Column("ticks"), Column("p50_ms", ".2f", "p50 ms"),
                    Column("p95_ms", ".2f", "p95 ms"), Column("mean_ms", ".2f", "mean ms"),
                    Column("max_ms", ".1f", "max ms"),
                    Column("late_frame_pct", ".1f", "% later than 16.7 ms"),
                    Column("batches"), Column("p95_minus_idle_ms", "+.2f", "p95 - idle ms")]
INSPECTOR_COLUMNS = [Column("size"), Column("scan"), Column("preset"), Column("path"),
                     Column("clicks"), Column("raw_median_ms", ".1f", "raw drawn ms"),
                     Column("recon_median_ms", ".1f", "recon drawn median ms"),
                     Column("recon_p95_ms", ".1f", "recon p95 ms"),
                     Column("gui_cpu_median_ms", ".1f", "GUI-thread CPU ms"),
                     Column("decode_ms", ".0f", "encode+decode ms"),
                     Column("store_mib", ".0f", "store MiB"), Column("embed_s", ".1f", "embed s"),
                     Column("load_1min", ".1f", "load avg")]
MAP_COLUMNS = [Column("preset"), Column("epochs"), Column("batch_size", "", "batch"),
               Column("device"), Column("preview_seconds", "g", "preview every s"),
               Column("plan_before_start", "", "plan before Start"),
               Column("first_map_s", ".1f", "Start -> first live map s"), Column("reached"),
               Column("load_1min", ".1f", "load avg")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 s windows, 3 uncached and 10 cached clicks, "
                        "the default preset only, 300 s for the first live map")
    p.add_argument("--seconds", type=float, default=None,
                   help="length of each lateness window (default 10)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--train-preset", default=DEFAULT_PRESET, choices=list(PRESETS))
    p.add_argument("--train-grid", type=int, default=16, help="train on an N x N scan crop")
    p.add_argument("--presets", nargs="+", default=None, choices=list(PRESETS),
                   help="presets whose inspector time is measured (default: the default preset)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="default 64 128")
    p.add_argument("--scan", type=int, default=None,
                   help="scan side of the inspector's data (default 128)")
    p.add_argument("--clicks", type=int, default=None,
                   help="uncached clicks (each decodes; default 10)")
    p.add_argument("--cached-clicks", type=int, default=None, help="default 30")
    p.add_argument("--embed", action="store_true",
                   help="fill the reconstruction store with a real embedding pass (long for "
                        "128 x 128 positions on a CPU) instead of writing it directly")
    p.add_argument("--map-timeout", type=float, default=None,
                   help="seconds to wait for the first live map (default 900)")
    p.add_argument("--skip-lateness", action="store_true")
    p.add_argument("--skip-inspector", action="store_true")
    p.add_argument("--skip-first-map", action="store_true")
    args = p.parse_args(argv)
    quick = {"seconds": 2.0, "clicks": 3, "cached_clicks": 10, "sizes": [64, 128], "scan": 128,
             "presets": [DEFAULT_PRESET], "map_timeout": 300.0}
    full = {"seconds": 10.0, "clicks": 10, "cached_clicks": 30, "sizes": [64, 128], "scan": 128,
            "presets": [DEFAULT_PRESET], "map_timeout": 900.0}
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
                    f"click -> Inspector drawn (raw | reconstruction | difference painted), "
                    f"{args.scan}x{args.scan} scan of uint16 counts; uncached: decoded in a "
                    f"worker, {args.clicks} clicks; cached: the embedding pass's stored "
                    f"reconstructions, {args.cached_clicks} clicks; after a warm-up click; "
                    + ("store filled by a real embedding pass" if args.embed else
                       "store written directly (values do not change the cost)"))
        rows += inspected
    if not args.skip_first_map:
        first = bench_first_map(args)
        print_table(first, MAP_COLUMNS, "Train dock defaults on the sample (64x64 scan, 64 px): "
                    "Start -> first live map (a preview or the embeddings)")
        rows += first
    path = save("bench_gui", rows, key=["measure", "window", "size", "preset", "path"],
                device="cpu", settings=settings_of(args), quick=args.quick)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

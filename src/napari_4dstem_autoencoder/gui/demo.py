"""``stem-ae demo``: napari opens on the sample and runs the whole workflow by itself.

The "4D-STEM Autoencoder" dock (all steps as tabs, the Inspector under the canvas) opens on
the built-in sample; then, step by step as each one ends: the Train dock fits a short run to
this machine (``--minutes``) and trains it with live maps, the whole scan is embedded, the
embeddings are clustered into as many regions as the sample has, and the probe moves to the
middle of the largest region, so the Inspector shows a raw pattern, its reconstruction and
their difference. The window stays open for the user afterwards (``--quit-when-done`` closes
it, for scripts and tests). ``--no-run`` only opens the docks.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

import numpy as np

from .keys import PLUGIN

WORKFLOW = "4D-STEM Autoencoder"
#: training minutes the demo asks for (the plan fits binning, subset and epochs to them)
DEMO_MINUTES = 2.0
#: regions of the built-in sample (its ground truth has five)
SAMPLE_REGIONS = 5


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="stem-ae demo",
        description="Open napari on the 4D-STEM sample and run the workflow: a short training "
                    "fitted to this machine, live maps, embedding, clusters, the probe.")
    parser.add_argument("--no-sample", action="store_true", help="start without the sample")
    parser.add_argument("--file", help="open this 4D-STEM file instead of the sample")
    parser.add_argument("--no-run", action="store_true",
                        help="only open the docks; train nothing")
    parser.add_argument("--minutes", type=float, default=DEMO_MINUTES,
                        help=f"training time budget (default {DEMO_MINUTES:g})")
    parser.add_argument("--clusters", type=int, default=SAMPLE_REGIONS,
                        help=f"regions to cluster the embeddings into (default {SAMPLE_REGIONS})")
    parser.add_argument("--quit-after", type=float, default=None, metavar="SECONDS",
                        help="close napari after this many seconds (scripts, tests)")
    parser.add_argument("--quit-when-done", action="store_true",
                        help="close napari once the workflow has run")
    parser.add_argument("--screenshot", default=None, metavar="PNG",
                        help="save a screenshot of the window just before quitting")
    parser.add_argument("--size", nargs=2, type=int, default=(1366, 768), metavar=("W", "H"),
                        help="window size in pixels (default 1366 768, a laptop screen)")
    return parser.parse_args(list(argv) if argv is not None else None)


def open_demo(args: argparse.Namespace) -> tuple[Any, Any]:
    """A viewer with the data and the workflow dock (no event loop): (viewer, workflow)."""
    import napari

    from .data_widget import sample_key

    viewer = napari.Viewer(title="4D-STEM autoencoder")
    if args.file:
        viewer.open(args.file, plugin=PLUGIN)
    elif not args.no_sample:
        key = sample_key()
        if key is None:
            raise RuntimeError("the plugin manifest provides no sample dataset")
        viewer.open_sample(PLUGIN, key)
    _dock, workflow = viewer.window.add_plugin_dock_widget(PLUGIN, WORKFLOW)
    viewer.window._qt_window.resize(*args.size)
    return viewer, workflow


class DemoRun:
    """Drives the workflow dock through the steps; each step starts when the last one's
    signal arrives, so napari stays responsive throughout. ``stage`` names the step reached
    (``planning``, ``training``, ``embedding``, ``clustering``, ``done`` or ``failed: …``);
    ``on_done`` is called once at the end either way."""

    def __init__(self, viewer: Any, workflow: Any, minutes: float, clusters: int,
                 on_done: Callable[[], None] | None = None) -> None:
        self.viewer, self.workflow = viewer, workflow
        self.minutes, self.clusters = minutes, clusters
        self.on_done = on_done
        self.stage = "planning"
        train = workflow.train
        self.state = train.state
        if self.state.dataset is None:
            self._end("failed: no dataset to run the workflow on")
            return
        workflow.show_step("Train")
        train.plan_ready.connect(self._planned)
        train.run_finished.connect(self._trained)
        self.state.embeddings_changed.connect(self._embedded)
        workflow.latent.clustered.connect(self._clustered)
        train.device.setCurrentText("auto")
        train.max_minutes.setValue(minutes)  # a user's budget: the plan fits the rest to it

    def _planned(self, plan: Any) -> None:
        if self.stage != "planning":
            return
        if plan is None:
            self._end("failed: the training steps could not be timed here")
            return
        self.stage = "training"
        if self.workflow.train.start() is None:
            self._end("failed: training did not start")

    def _trained(self, event: Any) -> None:
        from ..training import events as ev

        if self.stage != "training":
            return
        if not (isinstance(event, ev.Finished) and event.checkpoint):
            self._end(f"failed: training ended without a model ({event})")
            return
        self.stage = "embedding"  # the Train dock embeds the whole scan next

    def _embedded(self, embeddings: Any) -> None:
        if self.stage != "embedding" or embeddings is None:
            return
        self.stage = "clustering"
        self.workflow.show_step("Maps")
        self.workflow.latent.n_clusters.setValue(self.clusters)
        if self.workflow.latent.cluster() is None:
            self._end("failed: clustering did not start")

    def _clustered(self, labels: Any) -> None:
        if self.stage != "clustering":
            return
        self.move_probe_into_largest_region(np.asarray(labels))
        self._end("done")

    def move_probe_into_largest_region(self, labels: np.ndarray) -> tuple[int, int]:
        """Put the probe on the position of the largest region farthest from its border
        (the model grid's position mapped back to the file's scan grid)."""
        from scipy import ndimage

        largest = np.bincount(labels.ravel()).argmax()
        inside = ndimage.distance_transform_edt(labels == largest)
        gy, gx = np.unravel_index(int(np.argmax(inside)), labels.shape)
        g = self.state.model_geometry()  # model grid -> file grid: the first file position
        ry = int(g.offset[0] + gy * g.factor)  # of the bin
        rx = int(g.offset[1] + gx * g.factor)
        self.state.set_position(ry, rx)
        return ry, rx

    def _end(self, stage: str) -> None:
        self.stage = stage
        if stage != "done":
            from napari.utils.notifications import show_warning

            show_warning(f"demo: {stage}")
        if self.on_done is not None:
            self.on_done()


def run_demo(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``stem-ae demo``: runs napari's event loop until the window closes."""
    args = parse_args(argv)
    import napari
    from qtpy.QtCore import QTimer

    viewer, workflow = open_demo(args)
    outcome: dict[str, Any] = {}

    def finish() -> None:
        if args.screenshot:
            viewer.screenshot(args.screenshot, canvas_only=False)
        viewer.close()

    def done() -> None:
        outcome["stage"] = run.stage if run is not None else "opened"
        if args.quit_when_done:
            QTimer.singleShot(1500, finish)  # let the inspector draw first

    run = None
    if not args.no_run:
        run = DemoRun(viewer, workflow, args.minutes, args.clusters, on_done=done)
    if args.quit_after is not None:
        QTimer.singleShot(int(args.quit_after * 1000), finish)
    napari.run()
    if run is not None and args.quit_when_done:
        print(f"stem-ae demo: {run.stage}")
        return 0 if run.stage == "done" else 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run_demo())

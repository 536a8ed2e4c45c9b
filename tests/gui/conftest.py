"""Fixtures for the GUI tests: docks opened through the manifest, clicks, notifications."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from napari_4dstem_autoencoder.gui.keys import PLUGIN

FAST_PRESET = "test_fast"


@pytest.fixture
def fast_preset(monkeypatch: pytest.MonkeyPatch) -> str:
    """A preset whose decoder renders at the target size (the seed's 256x256 canvas is far
    too slow for a GUI test on a CPU); same parameters, registered for this test only."""
    from napari_4dstem_autoencoder.training import presets

    seed = presets.get_preset("seed")
    preset = presets.Preset(FAST_PRESET, seed.model.replace(pool_schedule="to4",
                                                            decoder_canvas="target"),
                            seed.objective, "the seed's loss on a fast architecture (tests)")
    monkeypatch.setitem(presets.PRESETS, FAST_PRESET, preset)
    return FAST_PRESET


def _open_dock(viewer: Any, name: str) -> Any:
    """Open one of the plugin's docks the way the Plugins menu does (through the manifest)."""
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def _click(viewer: Any, world: tuple[float, float]) -> None:
    """A left click (press + release, no drag) at a world position, through napari's
    mouse-callback machinery."""
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    position = tuple([0.0] * (viewer.dims.ndim - 2)) + tuple(world)
    event = SimpleNamespace(type="mouse_press", position=position, button=1, modifiers=[],
                            is_dragging=False, handled=False, view_direction=None,
                            dims_displayed=list(range(viewer.dims.ndim))[-2:])
    mouse_press_callbacks(viewer, event)
    event.type = "mouse_release"
    mouse_release_callbacks(viewer, event)


class NotificationLog:
    """Collects napari notifications shown during a test."""

    def __init__(self) -> None:
        from napari.utils.notifications import notification_manager

        self.manager = notification_manager
        self.start = len(notification_manager.records)

    @property
    def messages(self) -> list[str]:
        return [str(n.message) for n in self.manager.records[self.start:]]

    def errors(self) -> list[str]:
        from napari.utils.notifications import NotificationSeverity

        return [str(n.message) for n in self.manager.records[self.start:]
                if n.severity == NotificationSeverity.ERROR]


#: how long a test's teardown waits for the background workers it left running
WORKER_WAIT_MS = 60_000


@pytest.fixture(autouse=True)
def workers_end_with_their_test():
    """Ask every thread worker a test started to quit, and wait for it, before the next test.

    napari's own application does this when it quits (``app.aboutToQuit``); a test session
    never quits, so a worker still running (a plan being timed when the viewer closed) would
    run into the next test, or into interpreter shutdown, where emitting on its deleted
    signals object aborts the process. A worker that does not end in time fails the test.
    """
    yield
    from napari.qt.threading import WorkerBase

    WorkerBase.await_workers(msecs=WORKER_WAIT_MS)


@pytest.fixture
def notifications() -> NotificationLog:
    return NotificationLog()


@pytest.fixture
def open_dock():
    """``open_dock(viewer, display_name)`` -> the dock's widget, opened through the manifest."""
    return _open_dock


@pytest.fixture
def click():
    """``click(viewer, (y, x))``: a left click at a world position."""
    return _click


#: the checkpoint fixture's preprocessing crops the 64x64 sample to this many positions a side
CHECKPOINT_GRID = 6


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    """A real checkpoint (fast architecture, untrained weights) for the sample's
    CHECKPOINT_GRID x CHECKPOINT_GRID corner, detector binned to 32x32."""
    import torch

    from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor
    from napari_4dstem_autoencoder.data.sample import make_sample_dataset
    from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
    from napari_4dstem_autoencoder.model.config import ModelConfig
    from napari_4dstem_autoencoder.training.checkpoints import save_checkpoint

    grid = CHECKPOINT_GRID
    prep = Preprocessor.fit(make_sample_dataset(),
                            PreprocessConfig(scan_crop=(0, grid, 0, grid), detector_bin=2))
    torch.manual_seed(0)
    model = Autoencoder(out_shape=(32, 32),
                        config=ModelConfig(pool_schedule="to4", decoder_canvas="target")).eval()
    path = tmp_path_factory.mktemp("ckpt") / "untrained.safetensors"
    save_checkpoint(path, model, prep, input_shape=(32, 32))
    return str(path)


@pytest.fixture
def sample_with_model(make_napari_viewer, checkpoint):
    """``sample_with_model()`` -> (viewer, state, inspector): the sample open, the Inspector
    docked through the manifest, the ``checkpoint`` fixture's model loaded."""
    def make() -> tuple[Any, Any, Any]:
        from napari_4dstem_autoencoder.gui.keys import DATASET_KEY
        from napari_4dstem_autoencoder.gui.state import get_state
        from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint

        viewer = make_napari_viewer()
        viewer.open_sample(PLUGIN, "stem4d_sample")
        inspector = _open_dock(viewer, "Inspector")
        state = get_state(viewer)
        state.set_dataset(viewer.layers[0].metadata[DATASET_KEY], viewer.layers[0].name)
        state.set_model(load_checkpoint(checkpoint))
        return viewer, state, inspector

    return make

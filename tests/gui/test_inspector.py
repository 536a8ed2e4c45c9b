"""The Inspector (opened through the manifest) before embedding: every decode runs off the GUI
thread, and browsing faster than the decoder never queues up stale decodes."""

from __future__ import annotations

import threading
import time

import numpy as np

from napari_4dstem_autoencoder.gui import backend
from napari_4dstem_autoencoder.gui.keys import PLUGIN
from napari_4dstem_autoencoder.gui.state import get_state

GRID = 6


class SlowDecoder:
    """backend.reconstruct_one, slowed down; records which pattern each call decoded and on
    which thread."""

    def __init__(self, dataset, seconds: float) -> None:
        self.real = backend.reconstruct_one
        self.dataset, self.seconds = dataset, seconds
        self.decoded: list[tuple[int, int]] = []
        self.threads: list[threading.Thread] = []

    def _position(self, raw: np.ndarray) -> tuple[int, int]:
        for ry in range(GRID):
            for rx in range(GRID):
                if np.array_equal(raw, self.dataset.pattern(ry, rx)):
                    return ry, rx
        raise AssertionError("decoded a pattern of no position")

    def __call__(self, loaded, raw, device, inputs=None):
        self.threads.append(threading.current_thread())
        self.decoded.append(self._position(raw))
        time.sleep(self.seconds)
        return self.real(loaded, raw, device, inputs=inputs)


def test_arrow_keys_faster_than_the_decoder_decode_only_the_first_and_the_last(sample_with_model, 
        make_napari_viewer, qtbot, open_dock, checkpoint, monkeypatch, notifications):
    from napari.utils.key_bindings import coerce_keybinding

    viewer, state, inspector = sample_with_model()
    qtbot.waitUntil(lambda: not inspector._decoder.busy, timeout=30_000)  # the first decode
    slow = SlowDecoder(state.dataset, seconds=1.0)
    monkeypatch.setattr(backend, "reconstruct_one", slow)
    state.set_position(0, 0)
    probe = viewer.layers["probe position"]
    step_right = probe.keymap[coerce_keybinding("Right")]
    for _ in range(5):  # held arrow key: each press returns at once, the raw pattern drawn
        t0 = time.perf_counter()
        step_right(probe)
        assert time.perf_counter() - t0 < 0.9  # never waited on a (1 s) decode
        np.testing.assert_array_equal(inspector.raw_pattern, state.dataset.pattern(*state.position))
    assert state.position == (0, 5)
    qtbot.waitUntil(lambda: not inspector._decoder.busy and inspector.position == (0, 5)
                    and inspector.recon_source == "decoded", timeout=30_000)
    assert slow.decoded == [(0, 0), (0, 5)]  # the first, then only the newest
    assert all(t is not threading.main_thread() for t in slow.threads)
    _, expected = slow.real(state.model, state.dataset.pattern(0, 5), "cpu")
    np.testing.assert_allclose(inspector.recon_image, expected, atol=1e-6)
    np.testing.assert_array_equal(inspector.raw_pattern, state.dataset.pattern(0, 5))
    assert notifications.errors() == []


def test_rapid_clicks_show_the_last_position_only(sample_with_model, make_napari_viewer, qtbot, open_dock,
                                                  checkpoint, monkeypatch):
    _viewer_, state, inspector = sample_with_model()
    qtbot.waitUntil(lambda: not inspector._decoder.busy, timeout=30_000)
    slow = SlowDecoder(state.dataset, seconds=0.3)
    monkeypatch.setattr(backend, "reconstruct_one", slow)
    updates: list[tuple] = []
    inspector.updated.connect(lambda: updates.append((inspector.position,
                                                      inspector.recon_source)))
    positions = [(1, 1), (2, 4), (3, 0), (5, 5), (4, 2), (2, 2)]
    for pos in positions:
        state.set_position(*pos)
    qtbot.waitUntil(lambda: not inspector._decoder.busy and bool(updates), timeout=30_000)
    qtbot.wait(100)
    assert slow.decoded == [positions[0], positions[-1]]
    assert updates == [(positions[-1], "decoded")]  # the stale first result was never drawn
    _, expected = slow.real(state.model, state.dataset.pattern(*positions[-1]), "cpu")
    np.testing.assert_allclose(inspector.recon_image, expected, atol=1e-6)


def test_moving_the_probe_marker_does_not_refit_the_viewer(make_napari_viewer, open_dock,
                                                            monkeypatch):
    """The marker moves inside the dataset's scan (its navigator spans it): the viewer's dims
    are not refitted on every click, and the marker still lands where the probe is."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "stem4d_sample")
    open_dock(viewer, "Inspector")
    state = get_state(viewer)
    state.set_position(1, 1)
    probe = viewer.layers["probe position"]
    ranges = viewer.dims.range
    refits = []
    real = viewer._on_layers_change
    monkeypatch.setattr(viewer, "_on_layers_change", lambda *a: refits.append(1) or real(*a))
    for pos in [(0, 0), (63, 63), (10, 40), (10, 40)]:
        state.set_position(*pos)
        np.testing.assert_array_equal(probe.data, [pos])
    assert refits == [] and viewer.dims.range == ranges
    np.testing.assert_allclose(probe.scale, state.file_geometry().step)

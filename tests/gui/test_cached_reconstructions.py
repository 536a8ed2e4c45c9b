"""Reconstructions at the speed of a click: the embedding pass keeps its reconstructions, and
the Inspector (opened through the manifest) shows them with nothing decoded, only for the
model and dataset they were made from; the on-disk store is used above the memory budget and
removed when it is dropped."""

from __future__ import annotations

import numpy as np
import pytest

from napari_4dstem_autoencoder.gui import backend
from napari_4dstem_autoencoder.inference.reconstructions import TOLERANCE

GRID = 6  # the checkpoint's preprocessing crops the sample to GRID x GRID positions


def _embed(qtbot, state, memory_budget=None, directory=None):
    from napari_4dstem_autoencoder.gui.jobs import embedding_job

    job = embedding_job(state)
    job.memory_budget, job.directory = memory_budget, directory
    job.start()
    qtbot.waitUntil(lambda: not job.running and state.reconstructions is not None,
                    timeout=120_000)
    return state.reconstructions


class Counting:
    """Stands in for backend.reconstruct_one: counts calls, optionally refuses them."""

    def __init__(self, real, refuse: bool = False) -> None:
        self.real, self.refuse, self.calls = real, refuse, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.refuse:
            raise AssertionError("the Inspector decoded a pattern the embedding pass kept")
        return self.real(*args, **kwargs)


def test_after_embedding_a_click_shows_the_stored_reconstruction(sample_with_model, 
        make_napari_viewer, qtbot, open_dock, click, checkpoint, monkeypatch, notifications):
    viewer, state, inspector = sample_with_model()
    store = _embed(qtbot, state)
    assert not store.on_disk and store.complete and store.scan_shape == (GRID, GRID)
    assert store.source == (state.model, state.dataset)
    assert state.embeddings.shape == (GRID, GRID, 32) and set(state.error_maps) == {"mse", "psnr"}
    real = backend.reconstruct_one
    refusing = Counting(real, refuse=True)
    monkeypatch.setattr(backend, "reconstruct_one", refusing)
    step = state.file_geometry().step
    for pos in [(1, 2), (4, 5), (0, 0)]:
        shown = []
        inspector.updated.connect(lambda: shown.append(inspector.position))
        click(viewer, (pos[0] * step[0], pos[1] * step[1]))
        inspector.updated.disconnect()
        assert shown == [pos]  # drawn during the click itself: nothing waits on a worker
        assert inspector.recon_source == "stored" and not inspector._decoder.busy
        inputs, fresh = real(state.model, state.dataset.pattern(*pos), "cpu")
        np.testing.assert_allclose(inspector.input_image, inputs, atol=1e-6)
        np.testing.assert_allclose(inspector.recon_image, fresh, atol=TOLERANCE + 1e-6)
        np.testing.assert_allclose(inspector.diff_image, inspector.recon_image - inputs)
        assert np.isfinite(inspector.psnr)
        assert inspector.psnr == pytest.approx(float(state.error_maps["psnr"][pos]), abs=0.05)
    assert refusing.calls == 0 and notifications.errors() == []


def test_a_new_model_drops_the_stored_reconstructions(sample_with_model, make_napari_viewer, qtbot, open_dock,
                                                      checkpoint, monkeypatch):
    from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint

    _viewer_, state, inspector = sample_with_model()
    store = _embed(qtbot, state)
    counting = Counting(backend.reconstruct_one)
    monkeypatch.setattr(backend, "reconstruct_one", counting)
    state.set_model(state.model)  # the same model object: kept
    assert state.reconstructions is store and not store.closed
    # another model object (the same file, loaded again): the store is closed and never shown
    state.set_model(load_checkpoint(checkpoint))
    assert state.reconstructions is None and store.closed
    with qtbot.waitSignal(inspector.updated, timeout=30_000):
        state.set_position(2, 3)
    qtbot.waitUntil(lambda: inspector.recon_source == "decoded" and inspector.position == (2, 3),
                    timeout=30_000)
    assert counting.calls >= 1
    # a store made by another model is ignored even when handed to the state
    other = _embed(qtbot, state)
    other.source = (load_checkpoint(checkpoint), state.dataset)
    assert state.stored_reconstruction(2, 3) is None
    calls = counting.calls
    with qtbot.waitSignal(inspector.updated, timeout=30_000):
        state.set_position(4, 1)
    qtbot.waitUntil(lambda: inspector.position == (4, 1) and inspector.recon_source == "decoded",
                    timeout=30_000)
    assert counting.calls == calls + 1
    # and a new dataset drops it too
    state.set_dataset(None)
    assert state.reconstructions is None and other.closed


def test_over_the_memory_budget_the_store_is_on_disk_and_removed_afterwards(sample_with_model, 
        make_napari_viewer, qtbot, open_dock, click, checkpoint, tmp_path, monkeypatch):
    viewer, state, inspector = sample_with_model()
    store = _embed(qtbot, state, memory_budget=1024, directory=str(tmp_path))
    assert store.on_disk and store.complete and store.folder.parent == tmp_path
    assert store.path.stat().st_size >= GRID * GRID * 32 * 32 * 2
    monkeypatch.setattr(backend, "reconstruct_one", Counting(None, refuse=True))
    step = state.file_geometry().step
    click(viewer, (3 * step[0], 2 * step[1]))
    assert inspector.position == (3, 2) and inspector.recon_source == "stored"
    np.testing.assert_allclose(inspector.recon_image, store.get(3, 2))
    state.set_model(None)  # the model goes: so do the files
    assert list(tmp_path.iterdir()) == []


def test_a_late_decode_never_replaces_a_stored_reconstruction(sample_with_model, make_napari_viewer, qtbot,
                                                              open_dock, checkpoint, monkeypatch):
    """A decode still running for the previous position lands after the stored one is shown:
    it is dropped."""
    import threading

    _viewer_, state, inspector = sample_with_model()
    store = _embed(qtbot, state)
    state.set_reconstructions(None)  # as before embedding: clicks decode
    assert store.closed
    release = threading.Event()
    real = backend.reconstruct_one

    def slow(*args, **kwargs):
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(backend, "reconstruct_one", slow)
    state.set_position(1, 1)  # its decode waits in the worker
    assert inspector._decoder.busy
    kept = _embed(qtbot, state)
    state.set_position(5, 4)  # stored: drawn at once
    assert inspector.recon_source == "stored" and inspector.position == (5, 4)
    shown = inspector.recon_image.copy()
    release.set()
    qtbot.waitUntil(lambda: not inspector._decoder.busy, timeout=30_000)
    qtbot.wait(50)
    assert inspector.position == (5, 4) and inspector.recon_source == "stored"
    np.testing.assert_array_equal(inspector.recon_image, shown)
    np.testing.assert_allclose(shown, kept.get(5, 4))


def test_no_room_on_disk_means_no_store_and_clicks_decode(sample_with_model, make_napari_viewer, qtbot, open_dock,
                                                          checkpoint, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from napari_4dstem_autoencoder.gui.jobs import embedding_job

    _viewer_, state, inspector = sample_with_model()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30, 10))
    job = embedding_job(state)
    job.memory_budget, job.directory = 0, str(tmp_path / "not yet made")
    job.start()
    qtbot.waitUntil(lambda: not job.running and state.embeddings is not None, timeout=120_000)
    assert state.reconstructions is None and not (tmp_path / "not yet made").exists()
    with qtbot.waitSignal(inspector.updated, timeout=30_000):
        state.set_position(1, 4)
    assert inspector.recon_source == "decoded"

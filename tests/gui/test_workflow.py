"""The whole napari workflow on the sample, through the manifest, under Xvfb.

open sample -> crop to 8x8 positions, bin the detector to 32x32 (Data dock) -> train two short
epochs on CPU (Train dock) -> the maps layer is (32, Ry, Rx) -> click a position -> the
inspector's raw pattern is the dataset's pattern there -> save -> load into a fresh viewer
(Model dock) -> the same embeddings.
"""

from __future__ import annotations

import numpy as np
from napari.utils.key_bindings import coerce_keybinding

from napari_4dstem_autoencoder.gui.canvas import EMBEDDINGS_LAYER, ERROR_LAYER, PROBE_LAYER
from napari_4dstem_autoencoder.gui.keys import PLUGIN
from napari_4dstem_autoencoder.gui.state import get_state
from napari_4dstem_autoencoder.training import events as ev
from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint

SAMPLE = "stem4d_sample"
CROP = (0, 8, 0, 8)
TRAIN_TIMEOUT_MS = 240_000


def _prepare(viewer, open_dock, preset: str, epochs: int = 2):
    viewer.open_sample(PLUGIN, SAMPLE)
    data = open_dock(viewer, "Data")
    train = open_dock(viewer, "Train")
    state = get_state(viewer)
    data.scan_crop.setText(", ".join(map(str, CROP)))
    data.scan_crop.editingFinished.emit()
    data.detector_bin.setValue(2)
    train.preset.setCurrentText(preset)
    train.epochs.setValue(epochs)
    train.batch_size.setValue(4)
    train.subset.setValue(8)
    train.device.setCurrentText("cpu")
    train.preview_seconds = 0.5
    return data, train, state


def test_full_workflow(make_napari_viewer, qtbot, tmp_path, fast_preset, open_dock, click,
                       monkeypatch):
    from napari_4dstem_autoencoder.gui import backend

    viewer = make_napari_viewer()
    data, train, state = _prepare(viewer, open_dock, fast_preset)
    reads, previews = [], []
    real_load = backend.load_checkpoint
    monkeypatch.setattr(backend, "load_checkpoint",
                        lambda *a, **k: reads.append(a) or real_load(*a, **k))
    state.preview_changed.connect(lambda _emb, step, _geo: previews.append(step))
    inspector = open_dock(viewer, "Inspector")
    latent = open_dock(viewer, "Latent maps")
    dataset = state.dataset
    assert dataset is not None and dataset.scan_shape == (64, 64)
    assert state.preprocess_config.scan_crop == CROP
    assert state.preprocess_config.detector_bin == 2

    with qtbot.waitSignal(train.run_finished, timeout=TRAIN_TIMEOUT_MS) as finished:
        assert train.start() is not None
        assert not train.start_button.isEnabled()
    event = finished.args[0]
    assert isinstance(event, ev.Finished) and event.reason == "completed"
    n_batches = train.events_seen.count("BatchEnd")
    assert n_batches >= 2  # two epochs of at least one batch
    assert train.loss_plot.n_points == n_batches
    assert np.all(np.isfinite(train.loss_plot.series("mse")))
    assert "Preview" in train.events_seen
    assert previews  # live maps reach the embeddings layer through the state's writer
    # the epoch bar fills batch by batch and ends full, on the last epoch
    assert train.epoch_bar.value() == train.epoch_bar.maximum() == 2 * n_batches // 2
    assert train.epoch_bar.format() == "epoch 2 of 2"
    # the trained model in memory is the state's model; its checkpoint is not read back
    assert state.model.model is event.model and state.model.preprocessor is event.preprocessor
    assert str(state.model.path) == event.checkpoint and state.model.preset == fast_preset
    assert state.model.epoch == 2 and state.model.input_shape == (32, 32)
    assert reads == []

    # the run's checkpoint is loaded and the whole (cropped) scan embedded automatically
    qtbot.waitUntil(lambda: state.embeddings is not None and state.error_maps is not None,
                    timeout=TRAIN_TIMEOUT_MS)
    maps = viewer.layers[EMBEDDINGS_LAYER]
    assert maps.data.shape == (32, 8, 8)
    assert np.array_equal(maps.data, np.moveaxis(state.embeddings, -1, 0))
    assert tuple(maps.scale[-2:]) == tuple(dataset.calibration.scan_step)
    assert viewer.layers[ERROR_LAYER].data.shape == (8, 8)
    assert train.start_button.isEnabled() and train.save_button.isEnabled()

    # click a position: the probe moves and the inspector shows that pattern
    step = dataset.calibration.scan_step
    with qtbot.waitSignal(inspector.updated, timeout=60_000):
        click(viewer, (3 * step[0], 5 * step[1]))
    qtbot.waitUntil(lambda: inspector.recon_image is not None and inspector.position == (3, 5),
                    timeout=60_000)
    assert state.position == (3, 5)
    np.testing.assert_array_equal(inspector.raw_pattern, dataset.pattern(3, 5))
    assert inspector.recon_image.shape == (32, 32)
    np.testing.assert_allclose(inspector.diff_image, inspector.recon_image - inspector.input_image)
    assert np.isfinite(inspector.psnr) and -1 <= inspector.ssim <= 1
    np.testing.assert_array_equal(viewer.layers[PROBE_LAYER].data, [[3, 5]])

    # arrow key on a real-space 2-D layer steps the probe
    nav = viewer.layers["4D-STEM sample virtual BF"]
    viewer.layers.selection.active = nav
    nav.keymap[coerce_keybinding("Down")](nav)
    assert state.position == (4, 5)

    # clustering gives a Labels layer on the same grid
    latent.n_clusters.setValue(2)
    with qtbot.waitSignal(latent.clustered, timeout=60_000):
        latent.cluster()
    assert viewer.layers["AE clusters"].data.shape == (8, 8)
    assert latent.class_means.shape == (2, 32, 32)

    # save, then load into a fresh viewer: the same embeddings
    saved = train.save_checkpoint(tmp_path / "model.safetensors")
    assert saved is not None and saved.exists()
    embeddings = state.embeddings.copy()

    viewer2 = make_napari_viewer()
    viewer2.open_sample(PLUGIN, SAMPLE)
    model2 = open_dock(viewer2, "Model")
    state2 = get_state(viewer2)
    assert state2 is not state and state2.model is None
    with qtbot.waitSignal(model2.load_finished, timeout=60_000):
        model2.load_checkpoint(saved)
    assert state2.model is not None and "test_fast" in model2.summary.toPlainText()
    with qtbot.waitSignal(model2.embed_finished, timeout=TRAIN_TIMEOUT_MS):
        model2.embed()
    assert viewer2.layers[EMBEDDINGS_LAYER].data.shape == (32, 8, 8)
    np.testing.assert_allclose(state2.embeddings, embeddings, rtol=1e-4, atol=1e-5)


def test_stop_mid_training_leaves_a_loadable_checkpoint(make_napari_viewer, qtbot, fast_preset,
                                                        open_dock):
    viewer = make_napari_viewer()
    _data, train, state = _prepare(viewer, open_dock, fast_preset, epochs=200)
    train.embed_after.setChecked(False)

    def first_batch(event) -> bool:
        return isinstance(event, ev.BatchEnd)

    with qtbot.waitSignal(train.event_handled, timeout=TRAIN_TIMEOUT_MS, check_params_cb=first_batch):
        train.start()
    with qtbot.waitSignal(train.run_finished, timeout=TRAIN_TIMEOUT_MS) as finished:
        train.stop()
    event = finished.args[0]
    assert isinstance(event, ev.Finished) and event.reason == "stopped"
    assert event.checkpoint is not None
    loaded = load_checkpoint(event.checkpoint)
    assert loaded.preset == fast_preset
    assert loaded.input_shape == (32, 32)
    qtbot.waitUntil(lambda: not train.running, timeout=30_000)
    assert train.start_button.isEnabled() and not train.stop_button.isEnabled()
    # the widget's run ended well short of the 200 epochs asked for
    assert train.epoch_bar.value() < 200


def test_closing_the_viewer_ends_training(make_napari_viewer, qtbot, fast_preset, open_dock):
    viewer = make_napari_viewer()
    _data, train, _state = _prepare(viewer, open_dock, fast_preset, epochs=200)
    train.embed_after.setChecked(False)
    done = train._worker_done
    with qtbot.waitSignal(train.event_handled, timeout=TRAIN_TIMEOUT_MS,
                          check_params_cb=lambda e: isinstance(e, ev.BatchEnd)):
        train.start()
    assert not done.is_set()
    viewer.close()
    assert done.is_set()  # close waited for the worker thread to end
    assert train.stop_event.is_set()

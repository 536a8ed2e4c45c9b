"""Each dock on its own, with a model saved from an untrained network (no training needed):
errors as notifications, projection <-> real space, traversal, composite/clusters/export,
Data dock preview and virtual detectors, inspector without a model, the demo."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_4dstem_autoencoder.gui import backend
from napari_4dstem_autoencoder.gui.keys import DATASET_KEY, PLUGIN
from napari_4dstem_autoencoder.gui.latent_widget import CLUSTER_STANDARDISE_DEFAULT
from napari_4dstem_autoencoder.gui.state import get_state
from napari_4dstem_autoencoder.gui.workers import Failure

SAMPLE = "stem4d_sample"
GRID = 6  # the checkpoint's preprocessing crops the 64x64 sample to GRID x GRID positions


def _viewer_with_model(make_napari_viewer, checkpoint, embeddings: bool = True):
    """A viewer with the sample, the checkpoint loaded and (fake but shaped) embeddings."""
    from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, SAMPLE)
    state = get_state(viewer)
    from napari_4dstem_autoencoder.gui.canvas import install

    install(viewer)
    state.set_dataset(viewer.layers[0].metadata[DATASET_KEY], viewer.layers[0].name)
    state.set_model(load_checkpoint(checkpoint))
    if embeddings:
        rng = np.random.default_rng(0)
        emb = rng.random((GRID, GRID, 32)).astype(np.float32)
        emb[..., 5] = np.arange(GRID)[:, None] * 2.0  # one clearly structured channel
        state.set_embeddings(emb, {"mse": rng.random((GRID, GRID)).astype(np.float32)})
    return viewer, state


def test_bad_checkpoint_is_a_notification_and_the_dock_stays_usable(
        make_napari_viewer, qtbot, tmp_path, notifications, open_dock, checkpoint):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, SAMPLE)
    model = open_dock(viewer, "Model")
    bad = tmp_path / "not_a_model.safetensors"
    bad.write_bytes(b"this is not a checkpoint at all" * 10)

    with qtbot.waitSignal(model.load_finished, timeout=30_000) as result:
        model.load_checkpoint(bad)
    assert isinstance(result.args[0], Failure)
    errors = notifications.errors()
    assert len(errors) == 1 and "not_a_model.safetensors" in errors[0]
    assert model.load_button.isEnabled()
    assert get_state(viewer).model is None

    # the same dock then loads a good checkpoint
    with qtbot.waitSignal(model.load_finished, timeout=30_000) as result:
        model.load_checkpoint(checkpoint)
    assert not isinstance(result.args[0], Failure)
    assert get_state(viewer).model is not None
    assert "untrained.safetensors" in model.summary.toPlainText()
    summary = model.summary.toPlainText()
    assert "— compatible" in summary and "NOT compatible" not in summary
    assert model.embed_button.isEnabled()


def test_training_errors_are_notifications_and_buttons_come_back(
        make_napari_viewer, qtbot, notifications, open_dock, fast_preset):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, SAMPLE)
    data = open_dock(viewer, "Data")
    train = open_dock(viewer, "Train")
    train.preset.setCurrentText(fast_preset)
    train.device.setCurrentText("cpu")

    train.lambda_act.setText("lots")  # a bad form entry: refused before any worker starts
    assert train.start() is None
    assert "λ activity" in notifications.errors()[-1]
    train.lambda_act.setText("")

    data.detector_bin.setValue(4)  # 16x16 patterns: the engine refuses them (min 32)
    with qtbot.waitSignal(train.run_finished, timeout=60_000) as result:
        assert train.start() is not None
    assert isinstance(result.args[0], Failure)
    assert "32" in notifications.errors()[-1]
    qtbot.waitUntil(lambda: not train.running, timeout=10_000)
    assert train.start_button.isEnabled() and not train.stop_button.isEnabled()


def test_projection_lasso_and_probe_are_linked_both_ways(make_napari_viewer, qtbot, checkpoint,
                                                         open_dock):
    viewer, state = _viewer_with_model(make_napari_viewer, checkpoint)
    proj = open_dock(viewer, "Projection")
    with qtbot.waitSignal(proj.projected, timeout=30_000):
        proj.project()
    points = proj.points
    assert points.shape == (GRID * GRID, 2)
    np.testing.assert_allclose(points, backend.project(state.embeddings, "pca"), atol=1e-5)

    # a lasso (polygon) around the points right of the median -> those positions
    xmid = float(np.median(points[:, 0]))
    lo, hi = points.min(axis=0) - 1, points.max(axis=0) + 1
    polygon = np.array([[xmid, lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [xmid, hi[1]]])
    with qtbot.waitSignal(proj.selection_shown, timeout=30_000):
        chosen = proj.select_polygon(polygon)
    expected = np.flatnonzero(points[:, 0] > xmid)
    np.testing.assert_array_equal(np.sort(chosen), expected)
    layer = viewer.layers["AE projection selection"]
    np.testing.assert_array_equal(layer.data.ravel().nonzero()[0], expected)
    assert tuple(layer.scale) == state.embedding_geometry.scale
    loaded = state.model
    raw = loaded.preprocessor.scan_view(state.dataset).patterns(expected)
    np.testing.assert_allclose(proj.mean_pattern,
                               loaded.preprocessor.transform_patterns(raw).mean(axis=0), atol=1e-6)

    # selecting a probe position highlights its point
    state.set_position(4, 1)
    assert proj.marker_position == pytest.approx(tuple(points[4 * GRID + 1]))


def test_traversal_decodes_from_the_probe_and_follows_sliders(make_napari_viewer, qtbot,
                                                            checkpoint, open_dock):
    viewer, state = _viewer_with_model(make_napari_viewer, checkpoint)
    state.set_position(2, 3)
    trav = open_dock(viewer, "Traversal")
    qtbot.waitUntil(lambda: trav.decoded_image is not None, timeout=30_000)
    assert trav.dims[0] == 5  # the most variable channel comes first
    np.testing.assert_array_equal(trav.z_start, state.embeddings[2, 3])
    start = backend.decode_latent(state.model, trav.z_start, (32, 32))
    np.testing.assert_allclose(trav.decoded_image, start, atol=1e-6)

    with qtbot.waitSignal(trav.decoded, timeout=30_000):
        trav.set_dimension(5, 40.0)
    z = trav.z_start.copy()
    z[5] = 40.0
    np.testing.assert_allclose(trav.decoded_image,
                               backend.decode_latent(state.model, z, (32, 32)), atol=1e-6)
    assert not np.allclose(trav.decoded_image, start)


def test_the_dock_starts_with_the_library_clustering_scale():
    from napari_4dstem_autoencoder.analysis.clustering import STANDARDISE_DEFAULT

    assert CLUSTER_STANDARDISE_DEFAULT is STANDARDISE_DEFAULT


def test_latent_maps_accept_a_new_clustering_as_soon_as_one_is_shown(make_napari_viewer, qtbot,
                                                                     checkpoint, open_dock):
    # a listener of `clustered` that clusters again must not be ignored (the dock used to
    # stay busy until the worker's `finished` arrived, after `clustered`)
    viewer, _ = _viewer_with_model(make_napari_viewer, checkpoint)
    latent = open_dock(viewer, "Latent maps")
    latent.n_clusters.setValue(2)
    again = []

    def recluster(_labels):
        if not again:
            latent.n_clusters.setValue(3)
            again.append(latent.cluster())

    latent.clustered.connect(recluster)
    with qtbot.waitSignals([latent.clustered, latent.clustered], timeout=60_000):
        latent.cluster()
    assert again and again[0] is not None
    qtbot.waitUntil(lambda: latent.labels is not None and latent.labels.max() == 2,
                    timeout=60_000)
    qtbot.waitUntil(lambda: latent.cluster_button.isEnabled(), timeout=10_000)


def test_latent_maps_composite_clusters_and_export(make_napari_viewer, qtbot, tmp_path, checkpoint,
                                                  open_dock, monkeypatch):
    viewer, state = _viewer_with_model(make_napari_viewer, checkpoint)
    latent = open_dock(viewer, "Latent maps")
    assert latent.channels()[0] == 5
    rgb = viewer.layers["AE RGB composite"]
    assert rgb.rgb and rgb.data.shape == (GRID, GRID, 3)
    assert np.all(np.diff(rgb.data[:, 0, 0]) >= 0)  # channel 5 grows down the rows
    assert viewer.layers["AE embeddings"].data.shape == (32, GRID, GRID)

    latent.n_clusters.setValue(3)
    with qtbot.waitSignal(latent.clustered, timeout=60_000):
        latent.cluster()
    clusters = viewer.layers["AE clusters"].data
    assert clusters.shape == (GRID, GRID) and set(np.unique(clusters)) <= {1, 2, 3}
    assert latent.class_means.shape == (3, 32, 32)
    # the dock's scaling choice reaches the clustering: each setting gives what the library gives
    from napari_4dstem_autoencoder.analysis.clustering import cluster_embeddings

    assert latent.standardise.isChecked() is CLUSTER_STANDARDISE_DEFAULT
    calls = []
    real_cluster = backend.cluster

    def recording(*args, **kwargs):
        calls.append(kwargs.get("standardise"))
        return real_cluster(*args, **kwargs)

    monkeypatch.setattr(backend, "cluster", recording)
    for scaled in (True, False):
        latent.standardise.setChecked(scaled)
        with qtbot.waitSignal(latent.clustered, timeout=60_000):
            latent.cluster()
        np.testing.assert_array_equal(
            latent.labels, cluster_embeddings(state.embeddings, 3, standardise=scaled))
    assert calls == [True, False]

    from napari_4dstem_autoencoder.inference.export import read_results

    results = read_results(latent.export(tmp_path / "maps.h5"))
    np.testing.assert_array_equal(results["embeddings"], state.embeddings)
    np.testing.assert_array_equal(results["extra"]["cluster_labels"], latent.labels)
    np.testing.assert_array_equal(results["error"]["mse"], state.error_maps["mse"])
    assert results["model_config"]["pool_schedule"] == "to4"
    # the maps carry the grid they were computed on: the file's step through the model's bins
    expected = state.model.preprocessor.output_calibration(state.dataset.calibration)
    assert results["calibration"]["scan_unit"] == expected.scan_unit == "nm"
    np.testing.assert_allclose(results["calibration"]["scan_step"], expected.scan_step)
    tif = latent.export(tmp_path / "maps.tif")
    stack = tifffile.imread(tif)
    np.testing.assert_array_equal(stack, np.moveaxis(state.embeddings, -1, 0))


def test_latent_maps_compare_the_clusters_with_pca_of_the_patterns(
        make_napari_viewer, qtbot, tmp_path, checkpoint, open_dock, monkeypatch):
    from napari_4dstem_autoencoder.analysis import clustering
    from napari_4dstem_autoencoder.analysis.clustering import (
        adjusted_rand,
        class_mean_patterns,
        cluster_embeddings,
        match_labels,
        pca_scores,
    )
    from napari_4dstem_autoencoder.inference.export import read_results

    viewer, state = _viewer_with_model(make_napari_viewer, checkpoint)
    latent = open_dock(viewer, "Latent maps")
    latent.n_clusters.setValue(3)
    latent.compare_pca.setChecked(True)
    calls, reads = [], []
    real_scores, real_chunks = backend.pca_scores, clustering._pattern_chunks

    def counting(*args, **kwargs):
        calls.append(args)
        return real_scores(*args, **kwargs)

    def counting_reads(*args, **kwargs):
        reads.append(args[0])
        return real_chunks(*args, **kwargs)

    monkeypatch.setattr(backend, "pca_scores", counting)
    monkeypatch.setattr(clustering, "_pattern_chunks", counting_reads)
    with qtbot.waitSignal(latent.clustered, timeout=60_000):
        latent.cluster()
    # the scan is read once for the PCA scores and the class means together
    assert len(reads) == 1
    monkeypatch.setattr(clustering, "_pattern_chunks", real_chunks)
    prep = state.model.preprocessor
    view = prep.scan_view(state.dataset)
    np.testing.assert_allclose(
        latent.class_means, class_mean_patterns(view, latent.labels, 3, preprocessor=prep),
        rtol=1e-6, atol=1e-7)
    scores, explained = pca_scores(view, 10, preprocessor=prep)
    expected = match_labels(latent.labels, cluster_embeddings(scores, 3))
    np.testing.assert_array_equal(latent.pca_labels, expected)
    layer = viewer.layers["PCA clusters"]
    assert layer.data.shape == (GRID, GRID) and not layer.visible
    np.testing.assert_array_equal(layer.data, expected + 1)
    assert latent.agreement == pytest.approx(adjusted_rand(latent.labels, expected))
    assert f"adjusted Rand index {latent.agreement:.2f}" in latent.cluster_info.text()
    assert f"{100 * explained.sum():.0f} % of their variance" in latent.cluster_info.text()
    results = read_results(latent.export(tmp_path / "maps.h5"))
    np.testing.assert_array_equal(results["extra"]["pca_cluster_labels"], latent.pca_labels)

    # another k and method reuse the scores; a clustering without the comparison drops the
    # stale layer
    latent.n_clusters.setValue(2)
    latent.method.setCurrentText("spectral")
    with qtbot.waitSignal(latent.clustered, timeout=60_000):
        latent.cluster()
    assert len(calls) == 1
    np.testing.assert_array_equal(
        latent.labels, cluster_embeddings(state.embeddings, 2, method="spectral"))
    np.testing.assert_allclose(
        latent.class_means, class_mean_patterns(view, latent.labels, 2, preprocessor=prep),
        rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(
        latent.pca_labels,
        match_labels(latent.labels, cluster_embeddings(scores, 2, method="spectral")))
    latent.compare_pca.setChecked(False)
    with qtbot.waitSignal(latent.clustered, timeout=60_000):
        latent.cluster()
    assert "PCA clusters" not in viewer.layers and latent.pca_labels is None
    assert latent.cluster_info.text() == ""


def test_data_dock_preview_and_virtual_detectors(make_napari_viewer, qtbot, open_dock):
    from napari_4dstem_autoencoder.data import virtual

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, SAMPLE)
    data = open_dock(viewer, "Data")
    state = get_state(viewer)
    ds = state.dataset
    with qtbot.waitSignal(data.preview_updated, timeout=30_000):
        state.set_position(10, 20)
    np.testing.assert_array_equal(data.preview_raw, ds.pattern(10, 20))
    assert data.preview_processed.shape == (64, 64)
    assert 0.0 <= data.preview_processed.min() and data.preview_processed.max() <= 1.0

    with qtbot.waitSignal(data.preview_updated, timeout=30_000):
        data.detector_bin.setValue(2)
    assert data.preview_processed.shape == (32, 32)
    assert "32×32" in data.output_label.text()

    qtbot.waitUntil(lambda: getattr(data, "_beam_centre", None) is not None, timeout=30_000)
    data.adf_inner.setValue(10)
    data.adf_outer.setValue(25)
    worker = data.compute_virtual_images()
    qtbot.waitUntil(lambda: data._vworker is None, timeout=60_000)
    assert worker is not None
    adf = viewer.layers["4D-STEM sample virtual ADF"].data
    expected = virtual.virtual_annular_dark_field(ds, 10, 25, centre=data._beam_centre)
    np.testing.assert_allclose(adf, expected, rtol=1e-5)
    assert data.virtual_button.isEnabled()


def test_data_dock_starts_from_the_readers_beam(make_napari_viewer, qtbot, open_dock,
                                                monkeypatch):
    from napari_4dstem_autoencoder.data import virtual
    from napari_4dstem_autoencoder.gui.keys import BEAM_KEY

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, SAMPLE)
    beam = viewer.layers[0].metadata[BEAM_KEY]
    calls = []
    real = virtual.estimate_beam
    monkeypatch.setattr(virtual, "estimate_beam",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    data = open_dock(viewer, "Data")
    assert data._beam_centre == pytest.approx(beam.centre)  # at once: no worker
    assert data.bf_radius.value() == pytest.approx(round(beam.radius, 1))
    data.compute_virtual_images()
    qtbot.waitUntil(lambda: data._vworker is None, timeout=60_000)
    assert calls == []  # one estimate per dataset: the reader's
    # the navigator the dock wrote still carries it
    assert viewer.layers["4D-STEM sample virtual BF"].metadata[BEAM_KEY] is beam


def test_inspector_preprocesses_each_clicked_pattern_once(make_napari_viewer, qtbot, checkpoint,
                                                         open_dock):
    viewer, state = _viewer_with_model(make_napari_viewer, checkpoint)
    prep = state.model.preprocessor
    real = prep.transform_patterns
    calls = []
    prep.transform_patterns = lambda raw: calls.append(np.shape(raw)) or real(raw)
    inspector = open_dock(viewer, "Inspector")
    for pos in ((1, 2), (4, 3), (5, 0)):
        calls.clear()
        with qtbot.waitSignal(inspector.updated, timeout=30_000):
            state.set_position(*pos)
        assert len(calls) == 1 and calls[0][-2:] == (64, 64)  # one pass, one pattern
        np.testing.assert_allclose(inspector.input_image, real(state.dataset.pattern(*pos)))
        np.testing.assert_allclose(inspector.diff_image,
                                   inspector.recon_image - inspector.input_image)


def test_previews_and_embeddings_share_the_one_layer_writer(make_napari_viewer, checkpoint):
    from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig
    from napari_4dstem_autoencoder.gui.canvas import EMBEDDINGS_LAYER
    from napari_4dstem_autoencoder.gui.state import ScanGeometry

    viewer, state = _viewer_with_model(make_napari_viewer, checkpoint, embeddings=False)
    # a run on another grid than the loaded model's: the preview is drawn on the run's grid
    geo = ScanGeometry.for_preprocess(state.dataset,
                                      PreprocessConfig(scan_crop=(8, 40, 4, 36), scan_bin=2))
    rng = np.random.default_rng(0)
    state.set_preview(rng.random((8, 8, 32)).astype(np.float32), 2, geo)
    layer = viewer.layers[EMBEDDINGS_LAYER]
    assert layer.data.shape == (32, 8, 8) and layer.metadata["positions_step"] == 2
    np.testing.assert_allclose(layer.scale[-2:], (2 * geo.scale[0], 2 * geo.scale[1]))
    np.testing.assert_allclose(layer.translate[-2:], geo.translate)
    assert state.embeddings is None  # a preview is not the state's embeddings
    emb = rng.random((GRID, GRID, 32)).astype(np.float32)
    state.set_embeddings(emb, None)
    layer = viewer.layers[EMBEDDINGS_LAYER]
    assert layer.data.shape == (32, GRID, GRID) and layer.metadata["positions_step"] == 1
    np.testing.assert_allclose(layer.scale[-2:], state.embedding_geometry.scale)


def test_inspector_without_model_and_arrow_keys(make_napari_viewer, qtbot, open_dock):
    from napari.utils.key_bindings import coerce_keybinding

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, SAMPLE)
    inspector = open_dock(viewer, "Inspector")
    state = get_state(viewer)
    with qtbot.waitSignal(inspector.updated, timeout=10_000):
        state.set_position(7, 9)
    np.testing.assert_array_equal(inspector.raw_pattern, state.dataset.pattern(7, 9))
    assert inspector.recon_image is None and inspector.input_image.max() == pytest.approx(1.0)
    probe = viewer.layers["probe position"]
    probe.keymap[coerce_keybinding("Right")](probe)
    probe.keymap[coerce_keybinding("Up")](probe)
    assert state.position == (6, 10)
    np.testing.assert_array_equal(inspector.raw_pattern, state.dataset.pattern(6, 10))
    state.set_position(-5, 1000)  # clamped to the scan
    assert state.position == (0, 63)


def test_demo_opens_the_workflow_dock_and_quits(qtbot):
    from napari_4dstem_autoencoder.gui.demo import open_demo, parse_args, run_demo
    from napari_4dstem_autoencoder.gui.workflow_widget import WorkflowWidget

    viewer, workflow = open_demo(parse_args(["--no-run"]))
    try:
        assert isinstance(workflow, WorkflowWidget)
        assert get_state(viewer).dataset is not None
        assert get_state(viewer).dataset.scan_shape == (64, 64)
    finally:
        viewer.close()
    assert run_demo(["--no-run", "--quit-after", "0.5"]) == 0


def test_embeddings_layer_moves_off_a_channel_that_went_flat(make_napari_viewer, checkpoint):
    """Live previews: a channel that dies during training is replaced by the most variable one."""
    viewer, state = _viewer_with_model(make_napari_viewer, checkpoint)
    assert round(viewer.dims.point[0]) == 5  # opened on the structured channel
    rng = np.random.default_rng(1)
    emb = rng.random((GRID, GRID, 32)).astype(np.float32) * 1e-4
    emb[..., 5] = 0.0  # the channel on screen died
    emb[..., 17] = np.arange(GRID)[None, :] * 3.0
    state.set_embeddings(emb, None)
    assert round(viewer.dims.point[0]) == 17
    emb[..., 5] = np.arange(GRID)[:, None] * 1.0  # on screen and alive: the choice is kept
    state.set_embeddings(emb, None)
    assert round(viewer.dims.point[0]) == 17

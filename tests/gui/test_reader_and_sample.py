"""Opening files and the sample through a real napari viewer (the manifest's reader/sample)."""

from __future__ import annotations

import numpy as np

from napari_4dstem_autoencoder.gui.keys import DATASET_KEY, LABELS_KEY, PLUGIN


def test_open_file_through_napari(make_napari_viewer, real_data_dir):
    viewer = make_napari_viewer()
    layers = viewer.open(str(real_data_dir / "blockfile/test1.blo"), plugin=PLUGIN)
    assert len(layers) == 1 and len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert layer.name == "test1.blo virtual BF"
    assert layer.data.shape == (3, 2)
    np.testing.assert_allclose(layer.scale, (12.8, 12.8))
    assert [str(u) for u in layer.units] == ["nanometer", "nanometer"]
    ds = layer.metadata[DATASET_KEY]
    assert ds.shape == (3, 2, 144, 144) and ds.dtype == np.uint8


def test_open_sample_through_napari(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)  # shown (under Xvfb) so the screenshot renders
    viewer.open_sample(PLUGIN, "stem4d_sample")
    names = [layer.name for layer in viewer.layers]
    assert names == ["4D-STEM sample virtual BF", "4D-STEM sample ground truth"]
    nav, truth = viewer.layers
    assert nav.data.shape == (64, 64) and truth.data.shape == (64, 64)
    np.testing.assert_allclose(nav.scale, (0.5, 0.5))
    np.testing.assert_allclose(truth.scale, (0.5, 0.5))
    assert nav.metadata[DATASET_KEY].shape == (64, 64, 64, 64)
    assert set(np.unique(nav.metadata[LABELS_KEY])) == {0, 1, 2, 3, 4}
    # vacuum (no specimen scattering) is the brightest part of the bright-field image
    labels = nav.metadata[LABELS_KEY]
    assert nav.data[labels == 0].mean() > nav.data[labels != 0].mean()
    viewer.reset_view()
    shot = viewer.screenshot(str(tmp_path / "sample.png"), canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot[..., :3].std() > 1  # not a blank canvas

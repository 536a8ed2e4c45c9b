"""Pieces of the docks with known answers: scan-grid geometry, the loss plot, composites."""

from __future__ import annotations

import re

import dask.array as da
import numpy as np
import pytest

from napari_4dstem_autoencoder.gui.latent_widget import channels_by_variance, rgb_composite
from napari_4dstem_autoencoder.gui.state import ScanGeometry
from napari_4dstem_autoencoder.gui.train_widget import format_eta
from napari_4dstem_autoencoder.data.dataset import Calibration, Dataset4D
from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig


def _dataset(ry: int = 10, rx: int = 12, step: float = 0.5) -> Dataset4D:
    return Dataset4D(da.zeros((ry, rx, 32, 32), dtype=np.uint16),
                     calibration=Calibration(scan_step=(step, step), scan_unit="nm"))


def test_geometry_of_a_cropped_binned_grid_lines_up_with_the_file_grid():
    ds = _dataset()
    geo = ScanGeometry.for_preprocess(ds, PreprocessConfig(scan_crop=(2, 10, 1, 11), scan_bin=2))
    assert geo.shape == (4, 5)
    assert geo.scale == (1.0, 1.0)  # 2 file pixels of 0.5 nm
    # the centre of binned pixel (0, 0) is between file pixels (2, 1) and (3, 2)
    assert geo.translate == pytest.approx((2.5 * 0.5, 1.5 * 0.5))
    assert geo.to_grid(2, 1) == (0, 0)
    assert geo.to_grid(3, 2) == (0, 0)
    assert geo.to_grid(9, 10) == (3, 4)
    assert geo.to_grid(1, 5) is None and geo.to_grid(5, 11) is None


def _numbered(ry: int, rx: int) -> Dataset4D:
    """Every pattern of position (r, c) is filled with 100 r + c."""
    values = (100 * np.arange(ry)[:, None] + np.arange(rx)[None, :]).astype(np.float32)
    data = np.broadcast_to(values[:, :, None, None], (ry, rx, 2, 2)).copy()
    return Dataset4D(da.from_array(data, chunks=(4, 4, 2, 2)),
                     calibration=Calibration(scan_step=(0.5, 0.5), scan_unit="nm"))


@pytest.mark.parametrize("scan", [(9, 11), (10, 7), (5, 13)])
@pytest.mark.parametrize("crop", [None, (1, 8, 2, 7), (0, 9, 3, 7), (2, 5, 1, 6), (3, 12, 0, 4),
                                  (0, 4, 5, 20), (9, 12, 0, 3)])
@pytest.mark.parametrize("factor", [1, 2, 3])
def test_geometry_is_the_grid_of_the_preprocessors_scan_view(scan, crop, factor):
    """One rule: the grid the docks map clicks onto is the grid the model sees (odd sizes,
    bins that leave a remainder, crops that run past the scan edge)."""
    from napari_4dstem_autoencoder.data.preprocess import Preprocessor

    ds = _numbered(*scan)
    config = PreprocessConfig(scan_crop=crop, scan_bin=factor)
    try:
        view = Preprocessor(config).scan_view(ds)
    except ValueError as exc:  # the scan view refuses the crop: so does the geometry
        with pytest.raises(ValueError, match=re.escape(str(exc))):
            ScanGeometry.for_preprocess(ds, config)
        return
    geo = ScanGeometry.for_preprocess(ds, config)
    assert geo.shape == view.scan_shape
    assert geo.factor == factor and geo.offset == ((crop[0], crop[2]) if crop else (0, 0))
    # every file position inside the view's bins lands on the bin the view averaged it into
    values = np.asarray(view.data[..., 0, 0].compute())
    for gy in range(geo.shape[0]):
        for gx in range(geo.shape[1]):
            y0, x0 = geo.offset[0] + gy * factor, geo.offset[1] + gx * factor
            block = [(y, x) for y in range(y0, y0 + factor) for x in range(x0, x0 + factor)]
            assert all(geo.to_grid(y, x) == (gy, gx) for y, x in block)
            assert values[gy, gx] == pytest.approx(np.mean([100 * y + x for y, x in block]))
    # positions the view dropped (outside the crop, a bin's remainder) map to no grid cell
    covered = {(y, x) for y in range(scan[0]) for x in range(scan[1])
               if geo.to_grid(y, x) is not None}
    assert len(covered) == geo.shape[0] * geo.shape[1] * factor**2


def test_geometry_without_preprocessing_is_the_file_grid():
    geo = ScanGeometry.for_preprocess(_dataset(), None)
    assert geo.shape == (10, 12) and geo.scale == (0.5, 0.5) and geo.translate == (0.0, 0.0)
    assert geo.to_grid(9, 11) == (9, 11)


def test_loss_plot_appends_past_its_preallocation(qtbot):
    from napari_4dstem_autoencoder.gui.views import LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    n = 700  # more than two doublings of the initial 256
    mse = np.linspace(1.0, 0.01, n)
    for i in range(n):
        plot.append(i + 1, {"mse": float(mse[i]), "contrastive": 0.0})
    assert plot.n_points == n
    np.testing.assert_allclose(plot.series("mse"), mse)
    assert np.all(np.isnan(plot.series("contrastive")))  # zeros are not drawn on a log axis
    x, y = plot._curves["mse"].getData()
    assert len(x) == n


def test_loss_plot_draws_the_objectives_terms_in_order_each_in_its_own_colour(qtbot):
    from napari_4dstem_autoencoder.gui.views import LossPlot
    from napari_4dstem_autoencoder.objective import Objective, ObjectiveConfig

    names = Objective(ObjectiveConfig(graph_weight=1.0)).names  # the most terms a preset has
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.set_terms(names)
    assert tuple(plot._curves) == names and plot.n_points == 0
    plot.append(1, {key: 1.0 for key in names})
    colours = {plot._curves[key].opts["pen"].color().name() for key in names}
    assert len(colours) == len(names)
    plot.set_terms(names[:2])  # a new run starts from its own names
    assert tuple(plot._curves) == names[:2] and plot.n_points == 0


def test_rgb_composite_stretches_each_channel_and_ranks_channels():
    emb = np.zeros((4, 5, 3), dtype=np.float32)
    emb[..., 1] = np.arange(20).reshape(4, 5)  # varies
    emb[..., 2] = 7.0  # dead
    rgb = rgb_composite(emb, (1, 2, 0))
    assert rgb.shape == (4, 5, 3)
    assert rgb[..., 0].min() == 0.0 and rgb[..., 0].max() == 1.0
    assert np.all(rgb[..., 1:] == 0)  # constant channels stay black
    assert channels_by_variance(emb)[0] == 1


def test_eta_format():
    assert format_eta(5) == "0:05"
    assert format_eta(3725) == "1:02:05"
    assert format_eta(None) == "–"


def test_pattern_quality_is_the_quality_modules_psnr_and_ssim():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from napari_4dstem_autoencoder.gui import backend

    rng = np.random.default_rng(0)
    for shape in ((32, 32), (33, 40)):  # the smallest model input, and an odd one
        a = rng.random(shape).astype(np.float32)
        b = np.clip(a + rng.normal(0, 0.05, shape), 0, 1).astype(np.float32)
        psnr, ssim = backend.pattern_quality(a, b)
        x, y = a.astype(np.float64), b.astype(np.float64)
        assert psnr == pytest.approx(peak_signal_noise_ratio(x, y, data_range=1.0), rel=1e-9)
        assert ssim == pytest.approx(structural_similarity(x, y, data_range=1.0, win_size=7),
                                     rel=1e-9)
    assert backend.pattern_quality(a, a) == (float("inf"), pytest.approx(1.0))


def test_one_filter_finds_the_layers_that_carry_a_dataset_and_their_beam():
    from types import SimpleNamespace

    from napari_4dstem_autoencoder.data.virtual import BeamEstimate
    from napari_4dstem_autoencoder.gui.keys import BEAM_KEY, DATASET_KEY
    from napari_4dstem_autoencoder.gui.state import dataset_beam, dataset_layers, layer_dataset

    ds, other = _dataset(), _dataset(4, 4)
    beam = BeamEstimate((15.5, 16.0), 4.0)
    layers = [SimpleNamespace(name="map", metadata={}),
              SimpleNamespace(name="nav", metadata={DATASET_KEY: ds, BEAM_KEY: beam}),
              SimpleNamespace(name="script", metadata={DATASET_KEY: other}),
              SimpleNamespace(name="none", metadata={DATASET_KEY: None})]
    viewer = SimpleNamespace(layers=layers)
    assert [layer.name for layer in dataset_layers(viewer)] == ["nav", "script"]
    assert layer_dataset(layers[1]) is ds and layer_dataset(layers[0]) is None
    assert dataset_beam(viewer, ds) is beam and dataset_beam(viewer, other) is None

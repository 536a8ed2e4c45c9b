"""Pieces of the docks with known answers: scan-grid geometry, the loss plot, composites."""

from __future__ import annotations

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
    assert geo.from_grid(3, 4) == (8, 9)


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


def test_loss_plot_draws_every_engine_loss_in_its_own_colour(qtbot):
    from napari_4dstem_autoencoder.gui.views import LossPlot
    from napari_4dstem_autoencoder.training.engine import LOSS_KEYS

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.append(1, {key: 1.0 for key in LOSS_KEYS})
    colours = {plot._curves[key].opts["pen"].color().name() for key in LOSS_KEYS}
    assert len(colours) == len(LOSS_KEYS)


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

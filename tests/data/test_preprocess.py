"""Preprocessing known answers: binning, cropping, scaling, normalisation, bad pixels, centring."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_4dstem_autoencoder.data import Dataset4D, open_dataset
from napari_4dstem_autoencoder.data.preprocess import (
    PreprocessConfig, Preprocessor, find_bad_pixels, lazy_transform,
)


def _ds(a: np.ndarray) -> Dataset4D:
    return Dataset4D(data=da.from_array(a, chunks=(2, 2, *a.shape[2:])))


def test_detector_bin_and_crop_known_answer():
    a = np.arange(4 * 4 * 8 * 8, dtype=np.float32).reshape(4, 4, 8, 8)
    prep = Preprocessor.fit(_ds(a), PreprocessConfig(detector_crop=(2, 6, 0, 4), detector_bin=2,
                                                     scaling="none", normalise=False))
    out = prep.transform_patterns(a[0, 0])
    expected = a[0, 0, 2:6, 0:4].reshape(2, 2, 2, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(out, expected)
    assert out.dtype == np.float32 and prep.output_shape((8, 8)) == (2, 2)


def test_scan_bin_and_crop_stay_lazy_with_known_answer():
    a = np.arange(6 * 6 * 4 * 4, dtype=np.uint16).reshape(6, 6, 4, 4)
    labels = np.arange(36).reshape(6, 6)
    ds = Dataset4D(data=da.from_array(a, chunks=(2, 2, 4, 4)), labels=labels)
    prep = Preprocessor(PreprocessConfig(scan_crop=(0, 4, 2, 6), scan_bin=2))
    view = prep.scan_view(ds)
    assert isinstance(view.data, da.Array) and view.scan_shape == (2, 2)
    expected = a[0:4, 2:6].reshape(2, 2, 2, 2, 4, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(view.data.compute(), expected)
    np.testing.assert_array_equal(view.labels, labels[0:4:2, 2:6:2])
    assert view.calibration.scan_step == (2.0, 2.0)


@pytest.mark.parametrize("crop", [None, (1, 6, 0, 7), (2, 7, 3, 11)])
@pytest.mark.parametrize("factor", [1, 2, 3])
def test_scan_grid_is_where_the_scan_view_lies(crop, factor):
    a = np.arange(7 * 11, dtype=np.float32).reshape(7, 11, 1, 1) * np.ones((1, 1, 2, 2), np.float32)
    config = PreprocessConfig(scan_crop=crop, scan_bin=factor)
    (y0, x0), f, shape = config.scan_grid((7, 11))
    view = Preprocessor(config).scan_view(_ds(a))
    assert f == factor and shape == view.scan_shape
    ny, nx = shape
    # the view's first bin averages the file positions from the grid's origin on
    expected = a[y0:y0 + f, x0:x0 + f, 0, 0].mean()
    assert float(view.data[0, 0, 0, 0].compute()) == pytest.approx(expected)
    assert float(view.data[ny - 1, nx - 1, 0, 0].compute()) == pytest.approx(
        a[y0 + (ny - 1) * f:y0 + ny * f, x0 + (nx - 1) * f:x0 + nx * f, 0, 0].mean())


def test_scan_grid_refuses_what_the_scan_view_refuses():
    ds = _ds(np.zeros((5, 6, 2, 2), np.float32))
    for config in (PreprocessConfig(scan_crop=(0, 6, 0, 6)),  # past the last row
                   PreprocessConfig(scan_crop=(4, 5, 0, 6), scan_bin=2)):  # no full bin
        with pytest.raises(ValueError) as grid_error:
            config.scan_grid(ds.scan_shape)
        with pytest.raises(ValueError) as view_error:
            Preprocessor(config).scan_view(ds)
        assert str(grid_error.value) == str(view_error.value)


@pytest.mark.parametrize("scaling, fn", [("log", np.log1p), ("sqrt", np.sqrt), ("none", lambda x: x)])
def test_scaling_and_normalisation_statistics(scaling, fn):
    a = np.random.default_rng(0).poisson(20, (4, 4, 8, 8)).astype(np.uint16)
    prep = Preprocessor.fit(_ds(a), PreprocessConfig(scaling=scaling, upper_percentile=100.0))
    scaled = fn(a.astype(np.float64))
    assert prep.stats.lo == pytest.approx(scaled.min(), rel=1e-5)
    assert prep.stats.hi == pytest.approx(scaled.max(), rel=1e-5)
    out = prep.transform_patterns(a.reshape(-1, 8, 8))
    np.testing.assert_allclose(out, ((scaled - scaled.min()) / (scaled.max() - scaled.min())).reshape(-1, 8, 8),
                               atol=1e-5)
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    # the statistics travel with a model: a round trip gives the same transform
    again = Preprocessor.from_dict(prep.to_dict())
    np.testing.assert_array_equal(again.transform_patterns(a[1, 2]), prep.transform_patterns(a[1, 2]))


def test_hot_pixel_masked_in_real_merlin_file(real_data_dir):
    path = real_data_dir / "quantumdetector/002_merlin_test_roi_sig256x128_nav4x2_hot_pixel_52x_39y.mib"
    # the file name says x=52, y=39; rosettasciio loads this 128-row ROI flipped vertically,
    # so the pixel sits at row 127 - 39 = 88, column 52
    hot = (88, 52)
    with open_dataset(path) as ds:
        mean = ds.data.mean(axis=(0, 1)).compute()
        assert hot in find_bad_pixels(mean)
        prep = Preprocessor.fit(ds, PreprocessConfig(mask_bad_pixels=True, scaling="none", normalise=False))
        assert hot in prep.stats.bad_pixels
        raw = ds.data.max(axis=(0, 1)).compute()
        out = prep.transform_patterns(raw)
        neighbours = raw[87:90, 51:54].astype(float)
        mask = np.ones((3, 3), bool)
        mask[1, 1] = False
        assert raw[hot] >= 5 * max(neighbours[mask].mean(), 1)
        assert out[hot] == pytest.approx(neighbours[mask].mean())


def test_centre_beam_moves_spot_to_centre():
    a = np.zeros((1, 2, 9, 9), np.float32)
    a[0, 0, 1, 2] = 5
    a[0, 1, 6, 7] = 5
    prep = Preprocessor.fit(_ds(a), PreprocessConfig(centre_beam=True, scaling="none", normalise=False))
    out = prep.transform_patterns(a[0])
    assert out[0, 4, 4] == 5 and out[1, 4, 4] == 5


def test_lazy_transform_matches_per_pattern_transform():
    a = np.random.default_rng(1).poisson(5, (4, 6, 16, 16)).astype(np.uint16)
    prep = Preprocessor.fit(_ds(a), PreprocessConfig(detector_bin=2))
    lazy = lazy_transform(_ds(a), prep)
    assert isinstance(lazy, da.Array) and lazy.dtype == np.float32 and lazy.shape == (4, 6, 8, 8)
    np.testing.assert_allclose(lazy.compute()[3, 5], prep.transform_patterns(a[3, 5]))


def test_bad_config_and_nan_data_raise():
    with pytest.raises(ValueError, match="binning"):
        PreprocessConfig(detector_bin=0)
    with pytest.raises(ValueError, match="outside"):
        Preprocessor(PreprocessConfig(scan_crop=(0, 10, 0, 2))).scan_view(_ds(np.zeros((4, 4, 4, 4))))
    a = np.ones((2, 2, 4, 4), np.float32)
    a[1, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Preprocessor.fit(_ds(a))

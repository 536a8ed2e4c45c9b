"""Exports carry the scan's calibration: HDF5 attributes (read back by read_results and by the
HDF5 reader's attribute names) and the TIFF resolution with its unit (ImageJ/Fiji)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile

from napari_4dstem_autoencoder.data.dataset import Calibration
from napari_4dstem_autoencoder.data.readers import _h5_calibration
from napari_4dstem_autoencoder.inference.export import export_hdf5, export_tiff, read_results

CALIB = Calibration((2.0, 2.0), "Å", (1.2845, 1.2845), "mrad")


def _maps(shape=(4, 6, 3)):
    rng = np.random.default_rng(0)
    return rng.random(shape).astype(np.float32), {"mse": rng.random(shape[:2]).astype(np.float32)}


def test_hdf5_results_carry_the_calibration(tmp_path):
    emb, errors = _maps()
    path = export_hdf5(tmp_path / "r.h5", emb, errors, calibration=CALIB,
                       extra={"cluster_labels": np.zeros((4, 6), np.int32),
                              "centres": np.zeros((3, 2))})
    res = read_results(path)
    assert res["calibration"] == CALIB.to_dict()
    with h5py.File(path, "r") as f:
        for name in ("embeddings", "error/mse", "extra/cluster_labels"):
            attrs = f[name].attrs
            np.testing.assert_allclose(attrs["scan_step"], (2.0, 2.0))
            assert attrs["scan_unit"] == "Å" and attrs["detector_unit"] == "mrad"
        assert "scan_step" not in f["extra/centres"].attrs  # not a map on the scan grid
        # the names are the ones the HDF5 reader reads: the maps reopen calibrated
        assert _h5_calibration(f["embeddings"], f) == CALIB


def test_the_calibration_may_come_with_the_metadata(tmp_path):
    emb, _ = _maps()
    binned = Calibration((4.0, 4.0), "nm", (1.0, 1.0), "px")
    path = export_hdf5(tmp_path / "r.h5", emb, metadata={"calibration": binned.to_dict()})
    assert read_results(path)["calibration"] == binned.to_dict()
    assert read_results(export_hdf5(tmp_path / "plain.h5", emb))["calibration"] is None


@pytest.mark.parametrize("unit, imagej_unit", [("Å", "angstrom"), ("nm", "nm"), ("µm", "micron")])
def test_tiff_maps_carry_the_scan_step_as_resolution(tmp_path, unit, imagej_unit):
    emb, errors = _maps()
    calib = Calibration((0.5, 0.25), unit)
    stack = export_tiff(tmp_path / "e.tif", emb, channel_axis=-1, calibration=calib)
    single = export_tiff(tmp_path / "m.tif", errors["mse"], calibration=calib.to_dict())
    np.testing.assert_array_equal(tifffile.imread(stack), np.moveaxis(emb, -1, 0))
    for path in (stack, single):
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            assert tif.imagej_metadata["unit"] == imagej_unit
            x_num, x_den = page.tags["XResolution"].value
            y_num, y_den = page.tags["YResolution"].value
            assert x_den / x_num == pytest.approx(0.25)  # unit per pixel along x (columns)
            assert y_den / y_num == pytest.approx(0.5)


def test_uncalibrated_tiff_maps_are_in_pixels(tmp_path):
    emb, _ = _maps()
    path = export_tiff(tmp_path / "e.tif", emb, calibration=Calibration())
    with tifffile.TiffFile(path) as tif:
        assert "unit" not in (tif.imagej_metadata or {})
        assert tif.series[0].shape == (3, 4, 6)
    export_tiff(tmp_path / "none.tif", emb)  # no calibration given: as before
    assert tifffile.imread(tmp_path / "none.tif").shape == (3, 4, 6)

"""HDF5 calibration read from attributes (the dataset's, its groups', the file's), and files
holding several candidate arrays: an error that lists them (shape, dtype) for a chooser."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from napari_4dstem_autoencoder.data.errors import DatasetError
from napari_4dstem_autoencoder.data.readers import AmbiguousDatasetError, Candidate, open_dataset


def _scan(shape=(4, 5, 8, 8)) -> np.ndarray:
    return np.random.default_rng(0).poisson(5.0, shape).astype(np.uint16)


def test_root_attributes_with_the_unit_in_their_name_calibrate_the_scan(tmp_path):
    path = tmp_path / "sim.h5"
    with h5py.File(path, "w") as f:
        f["data"] = _scan()
        f.attrs["scan_step_A"] = 2.0
        f.attrs["detector_sampling_mrad_per_px"] = 1.2845
    with open_dataset(path) as ds:
        c = ds.calibration
    assert c.scan_step == (2.0, 2.0) and c.scan_unit == "Å"
    assert c.detector_step == pytest.approx((1.2845, 1.2845)) and c.detector_unit == "mrad"


def test_the_datasets_own_attributes_win_over_its_groups_and_the_files(tmp_path):
    path = tmp_path / "nested.h5"
    with h5py.File(path, "w") as f:
        f.attrs["scan_step"] = 9.0
        f.attrs["scan_unit"] = "pm"
        g = f.create_group("experiment")
        g.attrs["scan_step"] = np.array([0.5, 0.25])
        g.attrs["scan_unit"] = b"nm"
        d = g.create_dataset("frames", data=_scan())
        d.attrs["detector_step"] = 0.1
        d.attrs["detector_unit"] = "1/nm"
    with open_dataset(path) as ds:
        c = ds.calibration
    assert c.scan_step == (0.5, 0.25) and c.scan_unit == "nm"
    assert c.detector_step == (0.1, 0.1) and c.detector_unit == "1/nm"


def test_unusable_calibration_values_fall_back_to_pixels(tmp_path):
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("data", data=_scan())
        d.attrs["scan_step"] = "two"
        d.attrs["detector_step"] = -1.0
    with open_dataset(path) as ds:
        c = ds.calibration
    assert c.scan_step == (1.0, 1.0) and c.scan_unit == "px"
    assert c.detector_step == (1.0, 1.0)


def test_several_candidates_raise_an_error_that_lists_them(tmp_path):
    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["data"] = _scan().astype(np.float32)
        f["data_counts"] = _scan()
    with pytest.raises(AmbiguousDatasetError) as info:
        open_dataset(path)
    exc = info.value
    assert isinstance(exc, DatasetError)  # callers catching DatasetError still do
    assert exc.candidates == [Candidate("/data", (4, 5, 8, 8), "float32"),
                              Candidate("/data_counts", (4, 5, 8, 8), "uint16")]
    assert "/data 4x5x8x8 float32" in str(exc) and "/data_counts 4x5x8x8 uint16" in str(exc)
    assert "--dataset" in str(exc) and "dataset='/data'" in str(exc)
    assert exc.candidates[1].describe() == "/data_counts  4×5×8×8  uint16"
    again = pickle.loads(pickle.dumps(exc))  # crosses process boundaries intact
    assert again.candidates == exc.candidates and str(again) == str(exc)
    with open_dataset(path, dataset=exc.candidates[1].key) as ds:
        assert ds.dtype == np.uint16 and ds.metadata["hdf5_path"] == "/data_counts"


def test_the_shared_simulation_opens_calibrated_once_an_array_is_chosen(sim_three_region_path):
    with pytest.raises(AmbiguousDatasetError) as info:
        open_dataset(sim_three_region_path)
    assert [c.key for c in info.value.candidates] == ["/data", "/data_counts"]
    with open_dataset(sim_three_region_path, dataset="/data_counts") as ds:
        c = ds.calibration
        assert ds.shape == (32, 32, 64, 64)
    assert c.scan_step == (2.0, 2.0) and c.scan_unit == "Å"
    assert c.detector_step == pytest.approx((1.28447, 1.28447), rel=1e-4)
    assert c.detector_unit == "mrad"


def test_several_vendor_signals_are_candidates_by_index_and_title(tmp_path):
    import dask.array as da

    from napari_4dstem_autoencoder.data.readers import _pick_signal

    def signal(title, shape, dtype):
        return {"data": da.zeros(shape, dtype=dtype), "metadata": {"General": {"title": title}}}

    signals = [signal("navigator", (4, 5), "float32"), signal("raw", (4, 5, 8, 8), "uint16"),
               signal("denoised", (4, 5, 8, 8), "float32")]
    with pytest.raises(AmbiguousDatasetError) as info:
        _pick_signal(tmp_path / "x.hspy", signals, None)
    assert info.value.candidates == [Candidate(1, (4, 5, 8, 8), "uint16", "raw"),
                                     Candidate(2, (4, 5, 8, 8), "float32", "denoised")]
    assert info.value.candidates[0].describe() == "1: raw  4×5×8×8  uint16"
    assert "several signals" in str(info.value) and "dataset=1" in str(info.value)
    # the CLI passes --dataset as text: a title, or an index
    assert _pick_signal(tmp_path / "x.hspy", signals, "denoised") is signals[2]
    assert _pick_signal(tmp_path / "x.hspy", signals, "2") is signals[2]

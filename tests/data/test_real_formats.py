"""Every file in shared/data/real opens with the shape and dtype PROVENANCE.md lists."""

from __future__ import annotations

import gc
import hashlib
import warnings
from pathlib import Path

import numpy as np
import psutil
import pytest

from napari_4dstem_autoencoder.data import Dataset4D, open_dataset

# (file, open_dataset options, shape (Ry, Rx, Qy, Qx), dtype, metadata["format"])
REAL_FILES = [
    ("quantumdetector/001_4x2_6bit.mib", {}, (2, 4, 256, 256), "uint8", "quantumdetector"),
    ("quantumdetector/002_4x2_6bit_roi128.mib", {}, (2, 4, 128, 256), "uint8", "quantumdetector"),
    ("quantumdetector/002_merlin_test_roi_sig256x128_nav4x2_hot_pixel_52x_39y.mib", {},
     (2, 4, 128, 256), ">u2", "quantumdetector"),
    ("quantumdetector/Single_9_Frame_CounterDepth_6_Rows_256.mib", {"scan_shape": (3, 3)},
     (3, 3, 256, 256), "uint8", "quantumdetector"),
    ("quantumdetector/Single_9_Frame_CounterDepth_12_Rows_256.mib", {"scan_shape": (3, 3)},
     (3, 3, 256, 256), ">u2", "quantumdetector"),
    ("quantumdetector/Single_9_Frame_CounterDepth_24_Rows_256.mib", {"scan_shape": (3, 3)},
     (3, 3, 256, 256), ">u4", "quantumdetector"),
    ("quantumdetector/Quad_9_Frame_CounterDepth_6_Rows_256.mib", {"scan_shape": (3, 3)},
     (3, 3, 512, 512), "uint8", "quantumdetector"),
    ("blockfile/test1.blo", {}, (3, 2, 144, 144), "uint8", "blockfile"),
    ("blockfile/test2.blo", {}, (2, 3, 5, 5), "uint8", "blockfile"),
    ("emd/Si100_4D.emd", {"depth_index": 1}, (11, 11, 8, 8), "float32", "emd"),
    ("emd/py4DSTEM_size2x3x4x5.h5", {}, (2, 3, 4, 5), "float32", "emd"),
    ("arina/test_00_master.h5", {"scan_shape": (4, 4)}, (4, 4, 192, 192), "uint16", "arina"),
    ("empad/map4x4.xml", {}, (4, 4, 128, 128), "float32", "empad"),
    ("tvips/test_tvips_2345_000.tvips", {"scan_shape": (2, 3)}, (2, 3, 4, 5), "uint16", "tvips"),
    ("derived/merlin_001_4x2.hspy", {}, (2, 4, 256, 256), "uint8", "hspy"),
    ("derived/merlin_001_4x2.zspy", {}, (2, 4, 256, 256), "uint8", "zspy"),
    ("derived/merlin_001_4x2_plain.h5", {}, (2, 4, 256, 256), "uint8", "hdf5"),
    ("ebsd_kikuchipy/kikuchipy_h5ebsd_patterns.h5", {"dataset": "Scan 1/EBSD/Data/patterns"},
     (3, 3, 60, 60), "uint8", "hdf5"),
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _open_paths() -> set[str]:
    return {f.path for f in psutil.Process().open_files()}


@pytest.mark.parametrize("name, options, shape, dtype, fmt", REAL_FILES, ids=[r[0] for r in REAL_FILES])
def test_real_file_opens_lazily_with_listed_shape_and_dtype(real_data_dir, name, options, shape, dtype, fmt):
    path = real_data_dir / name
    before = _sha256(path)
    with open_dataset(path, **options) as ds:
        assert isinstance(ds, Dataset4D)
        assert ds.shape == shape
        assert ds.dtype == np.dtype(dtype)
        assert ds.metadata["format"] == fmt
        assert ds.path == path
        # chunks hold whole patterns, and one pattern reads back with the right shape
        assert ds.data.chunks[2] == (shape[2],) and ds.data.chunks[3] == (shape[3],)
        assert ds.pattern(shape[0] - 1, shape[1] - 1).shape == shape[2:]
    del ds
    gc.collect()
    assert not {p for p in _open_paths() if p.startswith(str(real_data_dir))}
    assert _sha256(path) == before


def test_merlin_frames_match_rosettasciio_eager_read(real_data_dir):
    from rsciio import quantumdetector

    path = real_data_dir / "quantumdetector/001_4x2_6bit.mib"
    eager = quantumdetector.file_reader(str(path))[0]["data"]
    with open_dataset(path) as ds:
        np.testing.assert_array_equal(ds.data.compute(), eager)


def test_companion_files_open_their_dataset(real_data_dir):
    with open_dataset(real_data_dir / "quantumdetector/001_4x2_6bit.hdr") as ds:
        assert ds.path.name == "001_4x2_6bit.mib" and ds.shape == (2, 4, 256, 256)
    with open_dataset(real_data_dir / "empad/scan_x4_y4.raw") as ds:
        assert ds.path.name == "map4x4.xml"
        # the raw file holds arange values; frame rows 128-129 are metadata and are dropped
        first = ds.pattern(0, 0)
        np.testing.assert_array_equal(first[0, :3], [0, 1, 2])
    with pytest.warns(UserWarning, match="square 4x4"):
        ds = open_dataset(real_data_dir / "arina/test_00_data_000001.h5")
    with ds:
        assert ds.path.name == "test_00_master.h5" and ds.shape == (4, 4, 192, 192)


def test_calibration_read_from_files(real_data_dir):
    with open_dataset(real_data_dir / "blockfile/test1.blo") as ds:
        assert ds.calibration.scan_step == pytest.approx((12.8, 12.8))
        assert ds.calibration.scan_unit == "nm"
    with open_dataset(real_data_dir / "empad/map4x4.xml") as ds:
        assert ds.calibration.scan_unit == "µm"
        assert ds.calibration.detector_step[0] == pytest.approx(0.18265, rel=1e-3)
    with open_dataset(real_data_dir / "emd/py4DSTEM_size2x3x4x5.h5") as ds:
        assert ds.calibration.scan_step == pytest.approx((0.126796875,) * 2)
        assert ds.calibration.detector_unit == "1 / Å"


def test_five_d_emd_picks_depth_index_with_warning(real_data_dir):
    path = real_data_dir / "emd/Si100_4D.emd"
    with pytest.warns(UserWarning, match="CBED_array_depth"):
        first = open_dataset(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second = open_dataset(path, depth_index=1)
        with pytest.raises(ValueError, match="depth_index 2 is outside"):
            open_dataset(path, depth_index=2)
    with first, second:
        assert first.shape == second.shape == (11, 11, 8, 8)
        assert first.metadata["depth_index"] == 0 and second.metadata["depth_index"] == 1
        assert not np.array_equal(first.data.compute(), second.data.compute())


def test_stacks_without_scan_shape(real_data_dir):
    # a square number of frames opens as a square scan, with a warning saying so
    with pytest.warns(UserWarning, match="assuming a square 3x3 scan"):
        ds = open_dataset(real_data_dir / "quantumdetector/Quad_9_Frame_CounterDepth_6_Rows_256.mib")
    with ds:
        assert ds.shape == (3, 3, 512, 512) and ds.metadata["scan_shape_assumed"]
    # 6 frames are not square: the error asks for scan_shape
    with pytest.raises(ValueError, match=r"test_tvips_2345_000\.tvips: a stack of 6 patterns.*scan_shape"):
        open_dataset(real_data_dir / "tvips/test_tvips_2345_000.tvips")
    with pytest.raises(ValueError, match=r"scan shape \(4, 2\) needs 8 patterns but the file holds 6"):
        open_dataset(real_data_dir / "tvips/test_tvips_2345_000.tvips", scan_shape=(4, 2))


def test_hdf5_with_two_candidates_lists_them(real_data_dir):
    path = real_data_dir / "ebsd_kikuchipy/kikuchipy_h5ebsd_patterns.h5"
    with pytest.raises(ValueError) as err:
        open_dataset(path)
    msg = str(err.value)
    assert str(path) in msg and "/Scan 1/EBSD/Data/patterns" in msg and "/Scan 2/EBSD/Data/patterns" in msg
    assert not {p for p in _open_paths() if p.startswith(str(real_data_dir))}

"""Bad input: each case gets an error naming the file and the problem, leaves no handle open
and leaves the file untouched."""

from __future__ import annotations

import gc
import os
import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest

from napari_4dstem_autoencoder.data import DatasetError, open_dataset


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _assert_clean_error(path: Path, match: str, **options) -> DatasetError:
    before = _sha(path)
    with pytest.raises(DatasetError, match=match) as err:
        open_dataset(path, **options)
    assert str(path) in str(err.value)
    gc.collect()
    assert not [f for f in psutil.Process().open_files() if f.path.startswith(str(path.parent))]
    assert _sha(path) == before
    return err.value


def test_missing_path(tmp_path):
    _assert_clean_error(tmp_path / "nothere.mib", "no such file")


def test_folder_is_not_a_file(tmp_path):
    folder = tmp_path / "scan.h5"
    folder.mkdir()
    _assert_clean_error(folder, "is a folder")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.h5"
    path.write_bytes(b"")
    _assert_clean_error(path, r"empty \(0 bytes\)")


def test_unreadable_path(tmp_path, monkeypatch):
    path = tmp_path / "locked.npy"
    np.save(path, np.zeros((2, 2, 4, 4)))
    # running as root ignores file modes, so deny access through os.access itself
    monkeypatch.setattr("napari_4dstem_autoencoder.data.readers.os.access", lambda p, mode: False)
    _assert_clean_error(path, "permission denied")


def test_unknown_file_type(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not diffraction")
    _assert_clean_error(path, r"not a 4D-STEM file: the file type '\.txt'")


def test_hdf5_without_pattern_data(tmp_path):
    path = tmp_path / "image.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((32, 32), np.uint16)
        f["spectrum"] = np.zeros(100)
    _assert_clean_error(path, "holds no 3-D or 4-D numeric dataset")


def test_wrong_dimensionality_npy(tmp_path):
    path = tmp_path / "image.npy"
    np.save(path, np.zeros((32, 32), np.uint16))
    _assert_clean_error(path, r"the array has 2 axes \(32, 32\)")


def test_truncated_hdf5(tmp_path):
    path = tmp_path / "cut.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.ones((4, 4, 16, 16), np.uint16)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_clean_error(path, "could not be read as hdf5")


def test_corrupt_npy(tmp_path):
    path = tmp_path / "cut.npy"
    np.save(path, np.ones((4, 4, 16, 16), np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    _assert_clean_error(path, "could not be read as npy")


def test_garbage_with_a_known_suffix(tmp_path):
    path = tmp_path / "noise.blo"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    _assert_clean_error(path, "not a NanoMegas blockfile")


def test_mib_shorter_than_its_header(real_data_dir, tmp_path):
    src = real_data_dir / "quantumdetector/001_4x2_6bit"
    mib, hdr = tmp_path / "cut.mib", tmp_path / "cut.hdr"
    shutil.copy(src.with_suffix(".hdr"), hdr)
    mib.write_bytes(src.with_suffix(".mib").read_bytes()[:-1000])
    err = _assert_clean_error(mib, r"cut\.hdr says 8 frames of 65920 bytes.*truncated")
    assert "526360 bytes" in str(err)


def test_mib_without_header_and_partial_frame(real_data_dir, tmp_path):
    src = real_data_dir / "quantumdetector/001_4x2_6bit.mib"
    mib = tmp_path / "lonely.mib"
    mib.write_bytes(src.read_bytes()[:65920 * 3 + 10])
    _assert_clean_error(mib, "not a whole number of 65920-byte frames")


def test_not_a_mib(tmp_path):
    path = tmp_path / "fake.mib"
    path.write_bytes(b"hello world" * 100)
    _assert_clean_error(path, "not a Merlin .mib file")


def test_nan_and_inf_values(tmp_path):
    data = np.ones((3, 3, 8, 8), np.float32)
    data[1, 2, 3, 4] = np.nan
    data[0, 0, 0, 0] = np.inf
    path = tmp_path / "nan.npy"
    np.save(path, data)
    _assert_clean_error(path, "contains 2 NaN or Inf values")
    with open_dataset(path, check_finite=False) as ds:  # still inspectable on request
        assert ds.shape == (3, 3, 8, 8)


def test_nan_in_hdf5_dataset(tmp_path):
    path = tmp_path / "nan.h5"
    with h5py.File(path, "w") as f:
        d = np.zeros((2, 2, 8, 8), np.float64)
        d[1, 1] = np.inf
        f["data"] = d
    _assert_clean_error(path, "64 NaN or Inf values")


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=(0, 4, 8, 8), dtype=np.uint16)
    _assert_clean_error(path, r"the dataset is empty \(shape \(0, 4, 8, 8\)\)")


def test_scan_shape_that_does_not_fit(tmp_path):
    path = tmp_path / "scan.npy"
    np.save(path, np.zeros((4, 4, 8, 8), np.uint8))
    _assert_clean_error(path, r"scan shape \(3, 5\) does not fit the 4x4 positions", scan_shape=(3, 5))


def test_unknown_hdf5_dataset_name(tmp_path):
    path = tmp_path / "named.h5"
    with h5py.File(path, "w") as f:
        f["scan/data"] = np.zeros((2, 2, 8, 8), np.uint8)
    _assert_clean_error(path, r"no dataset '/nope'; candidates: /scan/data", dataset="nope")


def test_arina_master_with_missing_data_file(real_data_dir, tmp_path):
    shutil.copy(real_data_dir / "arina/test_00_master.h5", tmp_path / "test_00_master.h5")
    _assert_clean_error(tmp_path / "test_00_master.h5", "Arina data file .*test_00_data_000001.h5.* is missing")


def test_symbolic_link_loop(tmp_path):
    path = tmp_path / "loop.h5"
    path.symlink_to(path)
    _assert_clean_error(path, "is a symbolic link loop")


def test_dangling_symbolic_link(tmp_path):
    path = tmp_path / "scan.mib"
    path.symlink_to(tmp_path / "moved_away.mib")
    err = _assert_clean_error(path, "is a dangling symbolic link")
    assert "moved_away.mib" in str(err) and "does not exist" in str(err)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_named_pipe_is_not_a_regular_file(tmp_path):
    path = tmp_path / "stream.mib"
    os.mkfifo(path)  # opening it would block until a writer came: it must never be opened
    _assert_clean_error(path, r"is not a regular file \(a named pipe \(FIFO\)\)")


def test_device_is_not_a_regular_file():
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    with pytest.raises(DatasetError, match=r"/dev/null: is not a regular file \(a character device\)"):
        open_dataset("/dev/null")


def _corrupt_one_chunk(path: Path, ry: int, rx: int) -> None:
    with h5py.File(path, "r") as f:
        info = f["data"].id.get_chunk_info_by_coord((ry, rx, 0, 0))
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\x00garbage" * (info.size // 8))


def test_corrupt_chunk_errors_name_the_file_and_the_position(tmp_path):
    path = tmp_path / "corrupt.h5"
    data = np.random.default_rng(0).poisson(4, (4, 4, 16, 16)).astype(np.uint16)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data, chunks=(1, 1, 16, 16), compression="gzip")
    _corrupt_one_chunk(path, 2, 3)
    # opening checks every value of a small file: the corrupt chunk is found then
    err = _assert_clean_error(path, r"reading dataset /data at scan \[0:4, 0:4\] failed: OSError")
    assert "corrupt or truncated there" in str(err)
    # opened without the value checks, the read that meets it names the file and the position
    with open_dataset(path, check_finite=False, check_quality=False) as ds:
        np.testing.assert_array_equal(ds.pattern(1, 1), data[1, 1])
        with pytest.raises(DatasetError, match=rf"{path}: reading dataset /data at scan \[2, 3\]"):
            ds.pattern(2, 3)
        with pytest.raises(DatasetError, match=str(path)):
            ds.patterns([0, 11])
        from napari_4dstem_autoencoder.data.virtual import mean_pattern

        with pytest.raises(DatasetError, match=str(path)):
            mean_pattern(ds)  # the chunked one-pass reductions too

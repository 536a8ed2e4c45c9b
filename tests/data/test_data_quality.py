"""Data that is not what it seems: a DataWarning naming the file and the problem (or an error),
found from bounded reads on open."""

from __future__ import annotations

import shutil
import warnings

import h5py
import numpy as np
import pytest

from napari_4dstem_autoencoder.data import DatasetError, open_dataset
from napari_4dstem_autoencoder.data import quality
from napari_4dstem_autoencoder.data.errors import DataWarning


def _open_warnings(path, **options) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_dataset(path, **options)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    for m in messages:
        assert m.startswith(f"{path}: "), m  # every warning names the file
    return ds, messages


def test_all_zero_and_constant_data_warn(tmp_path):
    np.save(tmp_path / "zeros.npy", np.zeros((4, 4, 8, 8), np.uint16))
    np.save(tmp_path / "sevens.npy", np.full((4, 4, 8, 8), 7, np.uint16))
    ds, messages = _open_warnings(tmp_path / "zeros.npy")
    assert len(messages) == 1 and "every value is 0: the data is all zero" in messages[0]
    assert ds.metadata["warnings"] == [messages[0].split(": ", 1)[1]]
    _, messages = _open_warnings(tmp_path / "sevens.npy")
    assert len(messages) == 1 and "every value is 7: the data is constant" in messages[0]
    # ordinary data: not a word
    rng = np.random.default_rng(0)
    np.save(tmp_path / "counts.npy", rng.poisson(3, (4, 4, 8, 8)).astype(np.uint16))
    ds, messages = _open_warnings(tmp_path / "counts.npy")
    assert messages == [] and ds.metadata["warnings"] == []


def test_negative_counts_warn_that_they_will_be_clipped(tmp_path):
    data = np.random.default_rng(1).normal(5, 3, (4, 4, 8, 8)).astype(np.float32)
    np.save(tmp_path / "offset.npy", data)
    _, messages = _open_warnings(tmp_path / "offset.npy")
    negative = int((data < 0).sum())
    assert len(messages) == 1
    assert f"{negative} values are negative (down to {data.min():g})" in messages[0]
    assert "preprocessing clips them to 0" in messages[0]


def test_complex_data_is_refused_unless_a_magnitude_is_asked_for(tmp_path):
    path = tmp_path / "wave.h5"
    psi = (np.random.default_rng(2).normal(size=(3, 3, 8, 8))
           + 1j * np.random.default_rng(3).normal(size=(3, 3, 8, 8))).astype(np.complex64)
    with h5py.File(path, "w") as f:
        f["data"] = psi
    with pytest.raises(DatasetError, match=r"wave\.h5: the dataset /data holds complex values "
                                           r"\(complex64\).*complex_data='magnitude'"):
        open_dataset(path)
    with open_dataset(path, complex_data="magnitude") as ds:
        assert ds.dtype == np.float32 and ds.metadata["complex_data"] == "magnitude"
        np.testing.assert_allclose(ds.pattern(1, 2), np.abs(psi[1, 2]), rtol=1e-6)
        np.testing.assert_allclose(ds.data.compute(), np.abs(psi), rtol=1e-6)
    with pytest.raises(ValueError, match="complex_data must be one of"):
        open_dataset(path, complex_data="phase")


def test_never_written_hdf5_is_named_as_fill_values_without_reading_it(tmp_path, count_h5_reads):
    # small: the whole dataset is checked; 2 TiB: a sample of chunk-index lookups, no data read
    for name, shape, chunks in (("small.h5", (8, 8, 32, 32), (1, 1, 32, 32)),
                                ("huge.h5", (1024, 1024, 1024, 1024), True)):
        path = tmp_path / name
        with h5py.File(path, "w") as f:
            f.create_dataset("data", shape=shape, dtype=np.uint16, chunks=chunks, fillvalue=3)
        count_h5_reads.clear()
        ds, messages = _open_warnings(path)
        assert len(messages) == 1, messages
        assert "holds no data: nothing was ever written to its dataset /data" in messages[0]
        assert "fill value 3" in messages[0]
        assert ds.metadata["never_written"] is True and ds.metadata["fill_value"] == 3
        if name == "huge.h5":
            assert sum(count_h5_reads) == 0  # not one value of 2 TiB was read
        ds.close()


def test_partly_written_hdf5_says_how_much_was_never_written(tmp_path, count_h5_reads, monkeypatch):
    path = tmp_path / "stopped.h5"
    with h5py.File(path, "w") as f:  # one chunk per scan row; a quarter written, then stopped
        d = f.create_dataset("data", shape=(256, 256, 16, 16), dtype=np.uint16, chunks=(1, 256, 16, 16))
        d[:64] = np.random.default_rng(4).poisson(2, (64, 256, 16, 16))
    monkeypatch.setattr(quality, "FINITE_CHECK_BYTES", 2**20)  # 32 MiB: sampled
    count_h5_reads.clear()
    ds, messages = _open_warnings(path)
    sampled = quality.QUALITY_SAMPLE_PATTERNS
    assert any(f"of the {sampled} sampled scan positions were never written" in m
               and "stopped early" in m for m in messages), messages
    assert not ds.metadata.get("never_written")
    # bounded: only the sampled positions that were written were read, one pattern each
    assert 0 < sum(count_h5_reads) <= sampled // 4 * 16 * 16 + 16 * 16
    ds.close()


def test_quality_check_reads_a_bounded_strided_sample(tmp_path, count_h5_reads, monkeypatch):
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("data", shape=(64, 64, 16, 16), dtype=np.uint16, chunks=(1, 1, 16, 16))
        d[...] = 1
    monkeypatch.setattr(quality, "FINITE_CHECK_BYTES", 2**16)  # 2 MiB file: sampled
    count_h5_reads.clear()
    ds, _ = _open_warnings(path)
    assert sum(count_h5_reads) == quality.QUALITY_SAMPLE_PATTERNS * 16 * 16
    # with storage chunks of 16 x 16 positions, each sample decodes a whole chunk: fewer samples
    path2 = tmp_path / "blocky.h5"
    with h5py.File(path2, "w") as f:
        f.create_dataset("data", data=np.ones((64, 64, 16, 16), np.uint16), chunks=(16, 16, 16, 16))
    monkeypatch.setattr(quality, "QUALITY_SAMPLE_BYTES", 4 * (16 * 16) * (16 * 16 * 2))
    count_h5_reads.clear()
    ds2, messages = _open_warnings(path2)
    assert sum(count_h5_reads) == 4 * 16 * 16  # four patterns: four chunks decoded
    assert ds2.metadata["file_chunk_scan"] == (16, 16)
    assert "every value of the 4 sampled patterns is 1" in messages[0]
    ds.close()
    ds2.close()


def test_mib_without_its_header_cut_on_a_frame_boundary_warns(real_data_dir, tmp_path):
    src = (real_data_dir / "quantumdetector/001_4x2_6bit.mib").read_bytes()  # 2x4 scan, 8 frames
    half = tmp_path / "half.mib"
    half.write_bytes(src[: 65920 * 4])  # the first scan row only, no .hdr
    ds, messages = _open_warnings(half)
    assert ds.shape[:2] == (2, 2)  # rosettasciio's guess from the time stamps
    (message,) = messages
    assert "there is no half.hdr beside it" in message
    assert "scan shape was guessed from the frame time stamps: 2x2 (4 of the 4 frames" in message
    assert "pass scan_shape=(rows, columns) with rows x columns = 4" in message
    ds.close()
    # the scan shape the user gives is used, with every frame
    ds, messages = _open_warnings(half, scan_shape=(1, 4))
    assert ds.shape[:2] == (1, 4) and messages == []
    with open_dataset(real_data_dir / "quantumdetector/001_4x2_6bit.mib") as whole:
        np.testing.assert_array_equal(ds.pattern(0, 3), whole.pattern(0, 3))
    ds.close()
    # frames that do not fill the guessed scan are counted
    five = tmp_path / "five.mib"
    five.write_bytes(src[: 65920 * 5])
    ds, messages = _open_warnings(five)
    assert any("4 of the 5 frames" in m and "the last frame is left out" in m for m in messages)
    ds.close()
    # with its .hdr, a whole file opens without a word
    full = tmp_path / "full.mib"
    full.write_bytes(src)
    shutil.copy(real_data_dir / "quantumdetector/001_4x2_6bit.hdr", tmp_path / "full.hdr")
    ds, messages = _open_warnings(full)
    assert ds.shape[:2] == (2, 4) and messages == []
    ds.close()


def test_truncated_blockfile_fails_with_expected_and_actual_size(real_data_dir, tmp_path):
    data = (real_data_dir / "blockfile/test1.blo").read_bytes()
    path = tmp_path / "cut.blo"
    path.write_bytes(data[:-5000])
    with pytest.raises(DatasetError) as err:
        open_dataset(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: truncated blockfile")
    assert f"{len(data)} bytes in all, but the file holds {len(data) - 5000} bytes" in msg
    assert "3x2 patterns of 144x144 pixels" in msg

"""The one-pass block reads from files: results pinned against plain numpy on small files of
every format the fast path serves (HDF5 chunked and contiguous, .npy, Merlin .mib), on scans
that no block or storage chunk divides, and memory bounded by the blocks in flight (counted in
bytes, never timed)."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest

from napari_4dstem_autoencoder.data import open_dataset
from napari_4dstem_autoencoder.data import virtual as v
from napari_4dstem_autoencoder.data.file_array import FileArray, direct_file_array
from napari_4dstem_autoencoder.data.mib import write_mib

SCAN, DET = (7, 5), (12, 10)
PATTERN = DET[0] * DET[1] * 2  # bytes of one uint16 pattern
CENTRE = (5.5, 4.5)


def _counts(dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(11)
    data = rng.poisson(3.0, size=(*SCAN, *DET))
    data[..., 4:8, 3:7] += 200  # a bright direct beam
    data[2, 3, 0, 0] = 60000 if dtype == np.uint16 else 250  # a hot pixel at one position
    return data.astype(dtype)


@pytest.fixture(scope="module")
def counts() -> np.ndarray:
    return _counts()


@pytest.fixture(scope="module")
def files(counts, tmp_path_factory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("blocks")
    out = {}
    with h5py.File(folder / "chunked.h5", "w") as f:  # storage chunks of 2 x 3 positions
        f.create_dataset("data", data=counts, chunks=(2, 3, *DET))
    out["h5"] = folder / "chunked.h5"
    with h5py.File(folder / "rowchunks.h5", "w") as f:  # chunks of part of one scan row
        f.create_dataset("data", data=counts, chunks=(1, 2, *DET))
    out["h5row"] = folder / "rowchunks.h5"
    with h5py.File(folder / "wholerows.h5", "w") as f:  # chunks of two whole scan rows
        f.create_dataset("data", data=counts, chunks=(2, SCAN[1], *DET))
    out["h5rows"] = folder / "wholerows.h5"
    with h5py.File(folder / "gaps.h5", "w") as f:  # rows 1 and 4 never written
        ds = f.create_dataset("data", shape=counts.shape, dtype=counts.dtype, chunks=(1, 2, *DET))
        for y in (0, 2, 3, 5, 6):
            ds[y] = counts[y]
    out["h5gaps"] = folder / "gaps.h5"
    with h5py.File(folder / "contiguous.h5", "w") as f:
        f.create_dataset("data", data=counts)
    out["h5c"] = folder / "contiguous.h5"
    with h5py.File(folder / "stack.h5", "w") as f:  # a 3-D frame stack with its scan shape
        ds = f.create_dataset("frames", data=counts.reshape(-1, *DET), chunks=(4, *DET))
        ds.attrs["scan_shape"] = SCAN
    out["h5stack"] = folder / "stack.h5"
    np.save(folder / "scan.npy", counts)
    out["npy"] = folder / "scan.npy"
    out["mib"] = write_mib(folder / "scan.mib", counts)
    out["mib8"] = write_mib(folder / "scan8.mib", _counts(np.uint8))
    return out


def _data(fmt: str) -> np.ndarray:
    data = _counts(np.uint8) if fmt == "mib8" else _counts()
    if fmt == "h5gaps":
        data[[1, 4]] = 0  # HDF5's fill value
    return data


def _reference(data: np.ndarray) -> dict[str, np.ndarray]:
    disk = v.disk_mask(DET, CENTRE, 2.5)
    ring = v.annulus_mask(DET, CENTRE, 3.0, 5.0)
    x = data.astype(np.float64)
    return {"bf": (x * disk).sum(axis=(2, 3)), "adf": (x * ring).sum(axis=(2, 3)),
            "mean_pattern": x.sum(axis=(0, 1)) / (SCAN[0] * SCAN[1]),
            "max_pattern": data.max(axis=(0, 1))}


FORMATS = ["h5", "h5row", "h5rows", "h5gaps", "h5c", "h5stack", "npy", "mib", "mib8"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("block_bytes", [None, 2 * 5 * PATTERN, 3 * PATTERN, 1])
def test_one_pass_matches_numpy(files, fmt, block_bytes):
    data = _data(fmt)
    ref = _reference(data)
    with open_dataset(files[fmt]) as ds:
        assert direct_file_array(ds.data) is not None  # the fast path, not dask's
        out = v.compute_virtual(
            ds, {"bf": v.disk_mask(DET, CENTRE, 2.5), "adf": v.annulus_mask(DET, CENTRE, 3.0, 5.0)},
            mean=True, maximum=True, block_bytes=block_bytes)
    np.testing.assert_array_equal(out["bf"], ref["bf"])  # counts: float32 products are exact
    np.testing.assert_array_equal(out["adf"], ref["adf"])
    np.testing.assert_array_equal(out["mean_pattern"], ref["mean_pattern"])  # exact for counts
    np.testing.assert_array_equal(out["max_pattern"], ref["max_pattern"])
    assert out["max_pattern"].dtype == ds.dtype


@pytest.mark.parametrize("fmt", FORMATS)
def test_navigator_and_iter_blocks_match_the_array(files, fmt):
    data = _data(fmt)
    with open_dataset(files[fmt]) as ds:
        got = v.navigator_images(ds)
        want = v.navigator_images(data)
        assert got["beam"].centre == pytest.approx(want["beam"].centre, abs=1e-9)
        assert got["beam"].radius == pytest.approx(want["beam"].radius, abs=1e-9)
        np.testing.assert_array_equal(got["bf"], want["bf"])
        np.testing.assert_array_equal(got["adf"], want["adf"])
        np.testing.assert_allclose(got["mean_pattern"], want["mean_pattern"], rtol=1e-12)
        for reuse in (False, True):
            seen = np.zeros(SCAN, int)
            for sy, sx, block in v.iter_blocks(ds, block_bytes=3 * PATTERN, reuse=reuse):
                np.testing.assert_array_equal(block, data[sy, sx])
                seen[sy, sx] += 1
            assert (seen == 1).all()


def test_every_block_is_bounded_and_at_most_two_are_in_flight(files, monkeypatch):
    """Bytes of every block read at once, and blocks alive at once, for a pass over a file."""
    sizes, alive, peak, lock = [], [0], [0], threading.Lock()
    buffers = set()
    read_into, mapped = FileArray.read_into, FileArray.mapped

    def counting_read(self, out, sy, sx):
        sizes.append(out.nbytes)
        buffers.add(out.__array_interface__["data"][0])  # where the thread's buffer starts
        return read_into(self, out, sy, sx)

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def __enter__(self):
            view = self.inner.__enter__()
            if view is not None:
                sizes.append(view.nbytes)
                with lock:
                    alive[0] += 1
                    peak[0] = max(peak[0], alive[0])
            self.view = view
            return view

        def __exit__(self, *exc):
            if self.view is not None:
                with lock:
                    alive[0] -= 1
            return self.inner.__exit__(*exc)

    monkeypatch.setattr(FileArray, "read_into", counting_read)
    monkeypatch.setattr(FileArray, "mapped", lambda self, sy, sx: Counting(mapped(self, sy, sx)))
    limit = 2 * 5 * PATTERN  # two scan rows
    for fmt in ("h5", "h5row", "h5c", "npy", "mib"):
        sizes.clear()
        buffers.clear()
        with open_dataset(files[fmt]) as ds:
            v.navigator_images(ds, beam=v.BeamEstimate(CENTRE, 2.5), block_bytes=limit)
        assert sum(sizes) == SCAN[0] * SCAN[1] * PATTERN  # the file read once
        assert max(sizes) <= limit
        assert len(buffers) <= v.WORKERS  # one buffer per reading thread, reused
        assert peak[0] <= v.WORKERS


def test_mib_frames_read_like_rosettasciio(files, counts):
    with open_dataset(files["mib"]) as ds:
        source = direct_file_array(ds.data)
        assert source._mib_frames() is not None
        for sy, sx in ((slice(0, 7), slice(0, 5)), (slice(2, 3), slice(1, 4)),
                       (slice(3, 6), slice(0, 5))):
            out = np.empty((sy.stop - sy.start, sx.stop - sx.start, *DET), np.uint16)
            source.read_into(out, sy, sx)
            np.testing.assert_array_equal(out, source[sy, sx])  # rosettasciio's read
            np.testing.assert_array_equal(out, counts[sy, sx])


def test_real_mib_files_read_alike(real_data_dir):
    """Vendor files: the direct frame reads against rosettasciio's, for every pixel type."""
    folder = real_data_dir / "quantumdetector"
    cases = [("001_4x2_6bit.mib", {}), ("002_4x2_6bit_roi128.mib", {}),
             ("002_merlin_test_roi_sig256x128_nav4x2_hot_pixel_52x_39y.mib", {}),
             ("Single_9_Frame_CounterDepth_12_Rows_256.mib", {"scan_shape": (3, 3)}),
             ("Single_9_Frame_CounterDepth_24_Rows_256.mib", {"scan_shape": (3, 3)}),
             ("Quad_9_Frame_CounterDepth_6_Rows_256.mib", {"scan_shape": (3, 3)})]
    for name, kwargs in cases:
        with open_dataset(folder / name, **kwargs) as ds:
            want = np.asarray(ds.data.compute())
            got = v.compute_virtual(ds, mean=True, maximum=True)
            np.testing.assert_allclose(got["mean_pattern"], want.mean(axis=(0, 1)), rtol=1e-12)
            np.testing.assert_array_equal(got["max_pattern"], want.max(axis=(0, 1)))
            for sy, sx, block in v.iter_blocks(ds, reuse=True):
                np.testing.assert_array_equal(block, want[sy, sx])


def test_sliced_or_cast_data_takes_the_dask_path(files, counts):
    with open_dataset(files["h5"]) as ds:
        assert direct_file_array(ds.data[1:]) is None
        assert direct_file_array(ds.data.astype(np.float32)) is None
        out = v.compute_virtual(ds.data[1:, 1:], mean=True)
    np.testing.assert_allclose(out["mean_pattern"], counts[1:, 1:].mean(axis=(0, 1)))


def test_raw_hdf5_blocks_are_read_with_pread_where_the_layout_allows(files, counts):
    """Unfiltered data whose storage chunks are runs of a block skip h5py (which keeps the GIL
    while HDF5 reads); other layouts, and chunks never written, go through h5py."""
    expect = {"h5row": True, "h5rows": True, "h5c": True, "h5": False}
    for fmt, fast in expect.items():
        with open_dataset(files[fmt]) as ds:
            source = direct_file_array(ds.data)
            out = np.empty((2, SCAN[1], *DET), np.uint16)
            assert source._h5_pread(out, 2, 4, 0, SCAN[1]) is fast
            if fast:
                np.testing.assert_array_equal(out, counts[2:4])
    with open_dataset(files["h5gaps"]) as ds:
        source = direct_file_array(ds.data)
        out = np.empty((2, SCAN[1], *DET), np.uint16)
        assert source._h5_pread(out, 2, 4, 0, SCAN[1])  # both rows written
        assert not source._h5_pread(out, 0, 2, 0, SCAN[1])  # row 1 never was

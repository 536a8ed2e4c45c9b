"""How the lazy array reads the file: the same values as numpy for any selection, and only the
patterns asked for (a pattern read never decodes a whole dask chunk)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from napari_4dstem_autoencoder.data import open_dataset
from napari_4dstem_autoencoder.data.file_array import Concat, FileArray, Source


_KEYS = [
    (slice(None),) * 4, (1, 2), (slice(1, 5, 2), slice(None, None, -1)), (-1, slice(0, 3), 2),
    (slice(0, 0),), (slice(2, 3), slice(1, 6, 3), slice(1, 4), slice(None, None, 2)),
    (np.array([0, 3, 2]), slice(1, 3)), (slice(None), np.array([5, 0])), (Ellipsis, 0),
    (slice(None, None, -2), 4, slice(3, 0, -1)),
]


def _cases(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 1000, (4, 6, 5, 7)).astype(np.uint16)
    f = h5py.File(tmp_path / "cases.h5", "w")
    grid = f.create_dataset("grid", data=truth, chunks=(1, 2, 5, 7))
    stack = f.create_dataset("stack", data=truth.reshape(24, 5, 7), chunks=(5, 5, 7))
    other = f.create_dataset("other", data=truth.reshape(3, 8, 5, 7))
    parts = [f.create_dataset(f"part{i}", data=truth.reshape(24, 5, 7)[a:b])
             for i, (a, b) in enumerate(((0, 7), (7, 8), (8, 24)))]
    five = f.create_dataset("five", data=np.stack([truth + 1, truth]))
    path = tmp_path / "cases.h5"
    return f, truth, {
        "grid": FileArray(path, Source(grid), (4, 6), "grid"),
        "stack": FileArray(path, Source(stack), (4, 6), "stack"),
        "regrid": FileArray(path, Source(other), (4, 6), "regrid"),
        "concat": FileArray(path, Source(Concat(parts)), (4, 6), "stack"),
        "five": FileArray(path, Source(five), (4, 6), "grid", lead=(1,)),
        "numpy": FileArray(path, Source(truth.reshape(24, 5, 7)), (4, 6), "stack"),
    }


@pytest.mark.parametrize("key", _KEYS, ids=[str(i) for i in range(len(_KEYS))])
def test_every_layout_reads_what_numpy_would(tmp_path, key):
    f, truth, arrays = _cases(tmp_path)
    with f:
        for name, array in arrays.items():
            got = array[key]
            np.testing.assert_array_equal(got, truth[key], err_msg=f"{name} {key}")
            assert got.dtype == truth.dtype


def test_a_pattern_or_a_strided_grid_reads_only_those_patterns(tmp_path, count_h5_reads):
    path = tmp_path / "stack.h5"
    data = np.random.default_rng(1).integers(0, 9, (64 * 64, 16, 16)).astype(np.uint16)
    with h5py.File(path, "w") as f:  # a 3-D stack in chunks of 256 frames, as detectors write
        f.create_dataset("frames", data=data, chunks=(256, 16, 16))
    with open_dataset(path, scan_shape=(64, 64), check_quality=False) as ds:
        assert ds.data.chunksize[0] > 1  # dask chunks span many patterns...
        count_h5_reads.clear()
        np.testing.assert_array_equal(ds.pattern(10, 20), data[10 * 64 + 20])
        assert count_h5_reads == [16 * 16]  # ...but one pattern reads one pattern
        count_h5_reads.clear()
        grid = ds.data[::16, ::16].compute()
        assert grid.shape == (4, 4, 16, 16) and sum(count_h5_reads) == 16 * 16 * 16
        count_h5_reads.clear()
        got = ds.patterns([5, 4000, 6, 70])
        np.testing.assert_array_equal(got, data[[5, 4000, 6, 70]])
        assert sum(count_h5_reads) <= 4 * 16 * 16 * 2  # never a whole chunk for four patterns
        # any order, repeats, dense runs (read as boxes) and scattered ones: numpy's answer
        idx = np.concatenate([[70, 5, 70], np.arange(300, 700), np.random.default_rng(2)
                              .integers(0, 64 * 64, 200)])
        np.testing.assert_array_equal(ds.patterns(idx), data[idx])

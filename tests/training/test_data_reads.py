"""Training patterns read from files: ``read_patterns`` and ``CachedPatterns.load`` against
plain numpy indexing, dense (one pass over the file in blocks) and sparse (picked patterns)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from napari_4dstem_autoencoder.data import open_dataset
from napari_4dstem_autoencoder.data.file_array import FileArray
from napari_4dstem_autoencoder.data.mib import write_mib
from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig
from napari_4dstem_autoencoder.training import data as tdata
from napari_4dstem_autoencoder.training.data import (CachedPatterns, fit_preprocessor_on,
                                                     read_patterns, split_positions)

SCAN, DET = (9, 7), (16, 12)


@pytest.fixture(scope="module")
def scan() -> np.ndarray:
    rng = np.random.default_rng(5)
    data = rng.poisson(4.0, size=(*SCAN, *DET))
    data[..., 6:10, 4:8] += 300
    return data.astype(np.uint16)


@pytest.fixture(scope="module")
def files(scan, tmp_path_factory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("train_reads")
    with h5py.File(folder / "scan.h5", "w") as f:
        f.create_dataset("data", data=scan, chunks=(2, 4, *DET))  # divides neither scan axis
    np.save(folder / "scan.npy", scan)
    return {"h5": folder / "scan.h5", "npy": folder / "scan.npy",
            "mib": write_mib(folder / "scan.mib", scan)}


def _gather(view, idx, **kwargs) -> np.ndarray:
    out = np.zeros((len(idx), *DET), np.int64)
    seen = np.zeros(len(idx), int)
    for where, raw in read_patterns(view, idx, **kwargs):
        out[where] = raw
        seen[where] += 1
    assert (seen == 1).all()  # every index delivered exactly once
    return out


@pytest.mark.parametrize("fmt", ["h5", "npy", "mib"])
def test_read_patterns_dense_and_sparse_match_numpy(files, scan, fmt):
    flat = scan.reshape(-1, *DET)
    n = flat.shape[0]
    rng = np.random.default_rng(0)
    dense = split_positions(n, None, 0.1, seed=1).train  # sorted, 90 %
    shuffled = rng.permutation(n)[: int(0.6 * n)]  # unsorted
    repeated = np.concatenate([shuffled, shuffled[:5]])  # with duplicates
    sparse = np.sort(rng.choice(n, 6, replace=False))
    with open_dataset(files[fmt]) as ds:
        for idx in (dense, shuffled, repeated, sparse, np.arange(n)):
            for kwargs in ({}, {"chunk": 5, "block_bytes": 3 * 2 * DET[0] * DET[1]}):
                np.testing.assert_array_equal(_gather(ds, idx, **kwargs), flat[idx])


def test_dense_reads_go_through_the_file_once_in_bounded_blocks(files, scan, monkeypatch):
    sizes = []
    read_into = FileArray.read_into

    def counting(self, out, sy, sx):
        sizes.append(out.nbytes)
        return read_into(self, out, sy, sx)

    monkeypatch.setattr(FileArray, "read_into", counting)
    limit = 2 * SCAN[1] * DET[0] * DET[1] * 2  # two scan rows of uint16 patterns
    idx = split_positions(SCAN[0] * SCAN[1], None, 0.1, seed=0).train
    with open_dataset(files["h5"]) as ds:
        got = _gather(ds, idx, block_bytes=limit)
    np.testing.assert_array_equal(got, scan.reshape(-1, *DET)[idx])
    assert sum(sizes) == scan.nbytes  # the whole file once, in order
    assert max(sizes) <= limit


@pytest.mark.parametrize("fmt", ["h5", "npy", "mib"])
def test_cached_patterns_match_the_preprocessed_patterns(files, scan, fmt, monkeypatch):
    flat = scan.reshape(-1, *DET)
    idx = split_positions(flat.shape[0], None, 0.2, seed=2).train
    with open_dataset(files[fmt]) as ds:
        prep = fit_preprocessor_on(flat[idx], PreprocessConfig(detector_bin=2), ds.name)
        want = prep.transform_patterns(flat[idx])
        dense = CachedPatterns.load(ds, prep, idx, chunk=7).data.numpy()[:, 0]
        monkeypatch.setattr(tdata, "DENSE_FRACTION", 2.0)  # the sparse path, for comparison
        sparse = CachedPatterns.load(ds, prep, idx[::-1].copy(), chunk=7).data.numpy()[:, 0]
    np.testing.assert_array_equal(dense, want)
    np.testing.assert_array_equal(sparse, want[::-1])

"""Virtual detectors: known answers against plain numpy, one pass, progress, beam estimate."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_4dstem_autoencoder.data import virtual as v
from napari_4dstem_autoencoder.data import Dataset4D


@pytest.fixture(scope="module")
def counts() -> np.ndarray:
    rng = np.random.default_rng(3)
    data = rng.poisson(2.0, size=(6, 5, 24, 20)).astype(np.uint16)
    data[..., 10:14, 8:12] += 50  # a bright direct beam centred at (11.5, 9.5)
    return data


def _small_chunks(a: np.ndarray) -> Dataset4D:
    return Dataset4D(data=da.from_array(a, chunks=(2, 3, 24, 20)))


def test_bright_field_and_dark_field_match_numpy(counts):
    ds = _small_chunks(counts)
    disk = v.disk_mask((24, 20), (11.5, 9.5), 3.0)
    ring = v.annulus_mask((24, 20), (11.5, 9.5), 4.0, 9.0)
    bf = v.virtual_bright_field(ds, radius=3.0, centre=(11.5, 9.5))
    adf = v.virtual_annular_dark_field(ds, 4.0, 9.0, centre=(11.5, 9.5))
    np.testing.assert_allclose(bf, (counts * disk).sum(axis=(2, 3)))
    np.testing.assert_allclose(adf, (counts * ring).sum(axis=(2, 3)))
    assert bf.shape == (6, 5) and disk.sum() == 32  # 32 pixel centres within r = 3 of a corner point


def test_mean_max_and_inputs_of_every_kind(counts):
    for source in (_small_chunks(counts), da.from_array(counts, chunks=(4, 4, 24, 20)), counts):
        np.testing.assert_allclose(v.mean_pattern(source), counts.mean(axis=(0, 1)))
        got = v.max_pattern(source)
        np.testing.assert_array_equal(got, counts.max(axis=(0, 1)))
        assert got.dtype == counts.dtype


def test_centre_of_mass_of_shifted_spots():
    data = np.zeros((2, 3, 16, 16), np.float32)
    for ry in range(2):
        for rx in range(3):
            data[ry, rx, 4 + ry, 5 + rx] = 2.0
            data[ry, rx, 6 + ry, 5 + rx] = 2.0
    com = v.centre_of_mass(data)
    assert com.shape == (2, 3, 2)
    np.testing.assert_allclose(com[..., 0], [[5, 5, 5], [6, 6, 6]])
    np.testing.assert_allclose(com[..., 1], [[5, 6, 7], [5, 6, 7]])
    data[0, 0] = 0
    assert np.isnan(v.centre_of_mass(data)[0, 0]).all()


class _CountingArray:
    """A numpy array that records every read (the box asked for)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads: list[tuple] = []

    def __getitem__(self, key):
        self.reads.append(tuple(k.indices(n)[:2] for k, n in zip(key[:2], self.shape)))
        return self.data[key]


def test_one_pass_reads_each_chunk_once_and_reports_progress(counts):
    source = _CountingArray(counts)
    ds = Dataset4D(data=da.from_array(source, chunks=(2, 3, 24, 20)))
    calls = []
    out = v.compute_virtual(ds, {"bf": v.disk_mask((24, 20), (11.5, 9.5), 3.0)}, mean=True,
                            maximum=True, progress=lambda done, total: calls.append((done, total)))
    assert set(out) == {"bf", "mean_pattern", "max_pattern"}
    reads = [r for r in source.reads if all(b > a for a, b in r)]  # not dask's meta probes
    assert len(reads) == len(set(reads)) == 3 * 2  # 6 chunks, each read once for all results
    assert calls[0] == (0, 30) and calls[-1] == (30, 30)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_estimate_beam_finds_disc():
    yy, xx = np.mgrid[0:64, 0:64]
    disc = (np.hypot(yy - 20.0, xx - 40.0) <= 6).astype(np.float32) * 100
    data = np.broadcast_to(disc, (4, 4, 64, 64)) + 1
    beam = v.estimate_beam(np.ascontiguousarray(data))
    assert beam.centre == pytest.approx((20.0, 40.0), abs=0.3)
    assert beam.radius == pytest.approx(6.0, abs=0.8)
    inner, outer = v.default_adf_radii(beam, (64, 64))
    assert beam.radius < inner < outer <= 23.0


def test_navigator_images_default_geometry(counts):
    out = v.navigator_images(_small_chunks(counts))
    assert out["beam"].centre == pytest.approx((11.5, 9.5), abs=0.5)
    assert out["bf"].shape == out["adf"].shape == (6, 5)
    # the bright beam dominates BF; ADF sees only the Poisson background
    assert out["bf"].mean() > 10 * out["adf"].mean() / max(out["adf_radii"][1], 1)


def test_nan_data_and_bad_shapes_raise():
    data = np.ones((2, 2, 8, 8), np.float32)
    data[1, 1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        v.mean_pattern(data)
    with pytest.raises(ValueError, match="has shape"):
        v.compute_virtual(np.ones((2, 2, 8, 8)), {"x": np.ones((4, 4))})
    with pytest.raises(ValueError, match="4-D"):
        v.mean_pattern(np.ones((8, 8, 8)))
    with pytest.raises(ValueError, match="inner < outer"):
        v.annulus_mask((8, 8), (4, 4), 3, 2)

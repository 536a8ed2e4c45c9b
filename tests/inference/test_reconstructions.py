"""The reconstruction store: in memory below its budget, a memory-mapped file above it, filled
batch by batch by the embedding pass, and equal to a fresh decode within float16 precision."""

import gc

import dask.array as da
import numpy as np
import pytest
import torch

from napari_4dstem_autoencoder.data.dataset import Dataset4D
from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor
from napari_4dstem_autoencoder.inference.embedding import embed_and_score, reconstruct
from napari_4dstem_autoencoder.inference.reconstructions import TOLERANCE, ReconstructionStore
from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
from napari_4dstem_autoencoder.model.config import ModelConfig

FAST = ModelConfig(pool_schedule="to4", decoder_canvas="target")


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(3)
    data = rng.poisson(20, size=(4, 5, 32, 32)).astype(np.uint16)
    torch.manual_seed(0)
    model = Autoencoder(out_shape=(32, 32), config=FAST).eval()
    ds = Dataset4D(da.from_array(data, chunks=(1, 5, -1, -1)))
    return model, Preprocessor.fit(ds, PreprocessConfig()), ds, data


def _filled(store: ReconstructionStore, rng: np.random.Generator) -> np.ndarray:
    ry, rx = store.scan_shape
    values = rng.random((ry, rx, *store.pattern_shape), dtype=np.float32)
    rows, cols = np.divmod(np.arange(ry * rx), rx)
    for start in range(0, ry * rx, 7):  # batch by batch, as the embedding pass writes
        sl = slice(start, start + 7)
        store.put(rows[sl], cols[sl], values[rows[sl], cols[sl]])
    store.finish()
    return values


def test_small_store_lives_in_memory_and_round_trips_within_float16():
    rng = np.random.default_rng(0)
    store = ReconstructionStore((3, 4), (8, 8), memory_budget=10_000)
    assert not store.on_disk and store.path is None and store.nbytes == 3 * 4 * 8 * 8 * 2
    assert not store.has(0, 0) and not store.complete
    with pytest.raises(KeyError):
        store.get(0, 0)
    values = _filled(store, rng)
    assert store.complete and not store.has(3, 0) and not store.has(-1, 0)
    got = store.get(2, 3)
    assert got.dtype == np.float32 and got.shape == (8, 8)
    np.testing.assert_allclose(got, values[2, 3], atol=TOLERANCE)
    with pytest.raises(ValueError, match="store holds"):
        store.put(np.array([0]), np.array([0]), np.zeros((1, 4, 4)))
    store.close()
    assert store.closed and not store.has(2, 3)


def test_store_over_budget_is_a_file_removed_on_close(tmp_path):
    rng = np.random.default_rng(1)
    store = ReconstructionStore((5, 6), (16, 16), memory_budget=0, directory=tmp_path / "res",
                                flush_bytes=1024)
    assert store.on_disk and store.path.exists() and store.folder.parent == tmp_path / "res"
    flushes = []
    real_flush = store._array.flush
    store._array.flush = lambda: flushes.append(1) or real_flush()
    values = _filled(store, rng)
    assert len(flushes) >= 5  # every ~1 KiB written: dirty pages never pile up
    np.testing.assert_allclose(store.get(4, 5), values[4, 5], atol=TOLERANCE)
    on_disk = np.load(store.path, mmap_mode="r")
    assert on_disk.dtype == np.float16 and on_disk.shape == (5, 6, 16, 16)
    del on_disk
    folder = store.folder
    store.close()
    store.close()  # idempotent
    assert not folder.exists() and list((tmp_path / "res").iterdir()) == []


def test_a_forgotten_store_removes_its_file(tmp_path):
    store = ReconstructionStore((2, 2), (8, 8), memory_budget=0, directory=tmp_path)
    folder = store.folder
    assert folder.exists()
    del store
    gc.collect()
    assert not folder.exists()


@pytest.mark.parametrize("budget", [2**30, 0], ids=["memory", "disk"])
def test_embedding_pass_fills_the_store_with_what_a_fresh_decode_gives(setup, tmp_path, budget):
    model, prep, ds, data = setup
    plain = embed_and_score(model, prep, ds, batch_size=3)
    with ReconstructionStore((4, 5), (32, 32), memory_budget=budget, directory=tmp_path) as store:
        kept = embed_and_score(model, prep, ds, batch_size=3, reconstructions=store)
        assert store.complete and store.on_disk == (budget == 0)
        np.testing.assert_allclose(kept.embeddings, plain.embeddings, atol=1e-6)
        np.testing.assert_allclose(kept.mse, plain.mse, rtol=1e-5)
        _, fresh = reconstruct(model, prep, data.reshape(-1, 32, 32))
        fresh = fresh.reshape(4, 5, 32, 32)
        for ry, rx in [(0, 0), (1, 3), (3, 4)]:
            np.testing.assert_allclose(store.get(ry, rx), fresh[ry, rx], atol=TOLERANCE + 1e-6)
    assert list(tmp_path.iterdir()) == []


def test_embedding_pass_keeps_reconstructions_without_scores(setup):
    model, prep, ds, _ = setup
    store = ReconstructionStore((4, 5), (32, 32))
    result = embed_and_score(model, prep, ds, batch_size=4, score=False, reconstructions=store)
    assert result.mse is None and store.complete


def test_a_store_of_another_shape_is_refused(setup):
    model, prep, ds, _ = setup
    with pytest.raises(ValueError, match="reconstruction store"):
        embed_and_score(model, prep, ds, reconstructions=ReconstructionStore((5, 4), (32, 32)))

"""Whole-scan embedding, reconstruction, error maps and exports."""

import threading

import dask.array as da
import h5py
import numpy as np
import pytest
import tifffile
import torch

from napari_4dstem_autoencoder.inference.embedding import (EmbeddingCancelled, embed_and_score,
                                                          reconstruct, safe_batch_size,
                                                          scan_blocks, scan_tiles)
from napari_4dstem_autoencoder.inference.export import export_hdf5, export_tiff, read_results
from napari_4dstem_autoencoder.data.dataset import Dataset4D
from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor
from napari_4dstem_autoencoder.model.autoencoder import Autoencoder
from napari_4dstem_autoencoder.model.config import ModelConfig

FAST = ModelConfig(pool_schedule="to4", decoder_canvas="target")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    return rng.poisson(20, size=(3, 5, 32, 32)).astype(np.uint16)


@pytest.fixture(scope="module")
def setup(data):
    torch.manual_seed(0)
    model = Autoencoder(out_shape=(32, 32), config=FAST).eval()
    ds = Dataset4D(da.from_array(data, chunks=(1, 2, -1, -1)))
    prep = Preprocessor.fit(ds, PreprocessConfig())
    return model, prep, ds


def test_embeddings_match_a_direct_encoder_pass_whatever_the_batch(setup, data):
    model, prep, ds = setup
    calls = []
    small = embed_and_score(model, prep, ds, batch_size=4, score=False,
                            progress=lambda d, t: calls.append((d, t))).embeddings
    big = embed_and_score(model, prep, ds, batch_size=256, score=False).embeddings
    assert small.shape == (3, 5, 32) and small.dtype == np.float32
    np.testing.assert_allclose(small, big, atol=1e-5)
    x = torch.from_numpy(prep.transform_patterns(data[2, 3])).reshape(1, 1, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(small[2, 3], model.embed(x)[0].numpy(), atol=1e-5)
    assert calls[-1] == (15, 15) and all(b[0] > a[0] for a, b in zip(calls, calls[1:]))


def test_tiles_cover_the_scan_once_and_never_exceed_the_batch():
    for shape, batch in [((7, 5), 4), ((3, 10), 4), ((4, 4), 256), ((2, 9), 9)]:
        seen = np.zeros(shape, int)
        for rows, cols in scan_tiles(shape, batch):
            assert (rows.stop - rows.start) * (cols.stop - cols.start) <= batch
            seen[rows, cols] += 1
        assert (seen == 1).all()


def test_blocks_follow_the_dask_chunks_and_split_only_oversized_ones():
    data = da.zeros((6, 8, 4, 4), dtype=np.uint16, chunks=(2, 8, 4, 4))  # 512 B per chunk
    blocks = list(scan_blocks(data, batch_size=4, max_block_bytes=10_000))
    assert blocks == [(slice(0, 2), slice(0, 8)), (slice(2, 4), slice(0, 8)),
                      (slice(4, 6), slice(0, 8))]
    small = list(scan_blocks(data, batch_size=4, max_block_bytes=100))
    seen = np.zeros((6, 8), int)
    for rows, cols in small:
        assert (rows.stop - rows.start) * (cols.stop - cols.start) <= 4
        seen[rows, cols] += 1
    assert (seen == 1).all()


def test_batches_stay_under_the_cuda_element_limit():
    assert safe_batch_size(1024, (256, 256)) * 128 * 256 * 256 < 2**31
    assert safe_batch_size(1024, (64, 64), canvas="fixed256") == safe_batch_size(1024, (256, 256))
    assert safe_batch_size(8, (64, 64)) == 8


def test_error_maps_agree_with_reconstruct(setup, data):
    model, prep, ds = setup
    maps = embed_and_score(model, prep, ds, batch_size=6).error_maps()
    inputs, recon = reconstruct(model, prep, data[1, 4])
    assert inputs.shape == recon.shape == (32, 32)
    assert 0 <= recon.min() and recon.max() <= 1
    mse = float(((inputs - recon) ** 2).mean())
    assert maps["mse"][1, 4] == pytest.approx(mse, rel=1e-4)
    assert maps["psnr"][1, 4] == pytest.approx(10 * np.log10(1 / mse), rel=1e-4)
    stack_in, stack_out = reconstruct(model, prep, data[0])
    assert stack_in.shape == stack_out.shape == (5, 32, 32)
    with pytest.raises(ValueError, match="pattern"):
        reconstruct(model, prep, data)


def test_embed_and_score_respects_scan_binning(setup, data):
    model, _, ds = setup
    prep = Preprocessor.fit(ds, PreprocessConfig(scan_bin=2))
    res = embed_and_score(model, prep, ds, batch_size=4)
    assert res.embeddings.shape == (1, 2, 32) and res.mse.shape == (1, 2)


def test_stop_cancels(setup):
    model, prep, ds = setup
    stop = threading.Event()
    stop.set()
    with pytest.raises(EmbeddingCancelled):
        embed_and_score(model, prep, ds, batch_size=4, stop=stop, score=False).embeddings


def test_streams_from_an_hdf5_file_in_bounded_batches(setup, data, tmp_path):
    """Each chunk is read once (not once per batch), and no read is larger than a chunk."""
    model, prep, _ = setup
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data, chunks=(1, 1, 32, 32))
    reads = []

    class Counting:
        def __init__(self, d):
            self.d, self.shape, self.dtype, self.ndim = d, d.shape, d.dtype, d.ndim

        def __getitem__(self, key):
            out = self.d[key]
            reads.append(int(np.prod(out.shape[:-2])) if out.ndim >= 2 else 1)
            return out

    with h5py.File(path, "r") as f:
        ds = Dataset4D(da.from_array(Counting(f["data"]), chunks=(1, 5, 32, 32)))
        emb = embed_and_score(model, prep, ds, batch_size=2, score=False).embeddings
    whole = embed_and_score(model, prep, setup[2], batch_size=5, score=False).embeddings
    np.testing.assert_allclose(emb, whole, atol=1e-5)
    assert max(reads) <= 5 and sum(reads) == 15


def test_hdf5_and_tiff_export_round_trip(tmp_path):
    emb = np.random.default_rng(0).random((4, 6, 32), dtype=np.float32)
    maps = {"mse": np.ones((4, 6), np.float32), "psnr": np.full((4, 6), 30, np.float32)}
    path = export_hdf5(tmp_path / "r.h5", emb, maps, {"name": "fast"}, {"config": {}},
                       extra={"labels": np.arange(24).reshape(4, 6)})
    res = read_results(path)
    np.testing.assert_array_equal(res["embeddings"], emb)
    assert res["error"]["psnr"][0, 0] == 30 and res["extra"]["labels"][3, 5] == 23
    assert res["model_config"] == {"name": "fast"}
    with pytest.raises(ValueError, match="error map"):
        export_hdf5(tmp_path / "bad.h5", emb, {"mse": np.ones((2, 2))})
    assert not (tmp_path / "bad.h5").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    export_tiff(tmp_path / "e.tif", emb)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "e.tif"), np.moveaxis(emb, -1, 0))
    export_tiff(tmp_path / "m.tif", maps["mse"])
    assert tifffile.imread(tmp_path / "m.tif").shape == (4, 6)


def test_embedding_without_scores_never_runs_the_decoder(setup, monkeypatch):
    """Encoder-only embedding when no error map (and no reconstruction) is asked for."""
    model, prep, ds = setup
    expected = embed_and_score(model, prep, ds, batch_size=4, score=True).embeddings

    def no_decoder(*args, **kwargs):
        raise AssertionError("the decoder ran")

    monkeypatch.setattr(model.decoder, "forward", no_decoder)
    monkeypatch.setattr(model, "decode", no_decoder)
    res = embed_and_score(model, prep, ds, batch_size=4, score=False)
    assert res.mse is None and res.psnr is None and res.error_maps() == {}
    np.testing.assert_allclose(res.embeddings, expected, atol=1e-6)
    with pytest.raises(AssertionError, match="decoder ran"):
        embed_and_score(model, prep, ds, batch_size=4, score=True)


def test_channels_last_inference_on_the_cpu_gives_the_contiguous_results(setup):
    """CPU embedding runs channels_last by default (faster oneDNN convolutions); embeddings and
    error maps are the ones a contiguous pass gives."""
    model, prep, ds = setup
    fast = embed_and_score(model, prep, ds)
    plain = embed_and_score(model, prep, ds, channels_last=False)
    np.testing.assert_allclose(fast.embeddings, plain.embeddings, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fast.mse, plain.mse, rtol=1e-3, atol=1e-7)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    embed_and_score(model, prep, ds)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)

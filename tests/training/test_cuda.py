"""CUDA code paths (bf16 autocast, channels_last, compile); skipped where no GPU is present.
Their CPU-side logic (device resolution, precision choice) is tested in test_config.py."""

import numpy as np
import pytest
import torch

from napari_4dstem_autoencoder.inference.embedding import embed_and_score
from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint
from napari_4dstem_autoencoder.training.engine import train
from napari_4dstem_autoencoder.training.events import BatchEnd, Finished, Started

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("compile_step", [False, True])
def test_bf16_channels_last_training_on_cuda(tiny_dataset, tiny_config, tmp_path, compile_step):
    path = tmp_path / "cuda.safetensors"
    config = tiny_config(device="cuda", amp="auto", channels_last="auto", epochs=2,
                         compile=compile_step, checkpoint_path=str(path), train_subset=8)
    events = list(train(tiny_dataset(scan_shape=(4, 4)), config))
    assert isinstance(events[0], Started) and events[0].device.startswith("cuda")
    done = events[-1]
    assert isinstance(done, Finished) and done.reason == "completed", done
    losses = [e.losses["mse"] for e in events if isinstance(e, BatchEnd)]
    assert all(np.isfinite(losses))
    assert not next(done.model.parameters()).is_cuda  # given back when the run ended
    loaded = load_checkpoint(path, device="cpu")  # a GPU-trained model loads on the CPU
    assert not next(loaded.model.parameters()).is_cuda


def test_cuda_embedding_matches_cpu(tiny_dataset, tiny_config, trained_run):
    done = trained_run.events[-1]
    loaded = load_checkpoint(done.checkpoint)
    ds = trained_run.dataset

    def embed(**options):
        return embed_and_score(loaded.model, loaded.preprocessor, ds, score=False,
                               **options).embeddings

    cpu = embed(device="cpu")
    gpu32 = embed(device="cuda", amp="off", channels_last=False)
    scale = max(float(np.abs(cpu).max()), 1e-6)
    assert float(np.abs(gpu32 - cpu).max()) / scale < 1e-2  # cuDNN may use TF32
    bf16 = embed(device="cuda")
    assert bf16.dtype == np.float32 and bf16.shape == cpu.shape
    assert float(np.abs(bf16 - cpu).max()) / scale < 0.1


def test_a_finished_run_returns_the_gpu_memory(tiny_dataset, tiny_config):
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    peak = []
    config = tiny_config(device="cuda", epochs=1, train_subset=8)
    for event in train(tiny_dataset(scan_shape=(4, 4)), config):
        if isinstance(event, BatchEnd):
            peak.append(torch.cuda.memory_allocated())
        done = event
    assert isinstance(done, Finished)
    assert max(peak) > before + 10 * 2**20  # weights, Adam state and activations were there
    assert torch.cuda.memory_allocated() <= before + 2**20
    assert torch.cuda.memory_reserved() <= before + 2**20
    kept = list(train(tiny_dataset(scan_shape=(4, 4)), config.replace(keep_model_on_device=True)))
    assert next(kept[-1].model.parameters()).is_cuda  # kept for browsing when asked

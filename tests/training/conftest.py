"""Tiny data and one shared short training run for the training tests.

The network is fixed (3.9 M parameters, 128 channels), so speed comes from tiny inputs:
32x32 patterns, a 3x3 scan, the parameter-identical ``to4``/``target`` schedule, batch 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
import pytest

from napari_4dstem_autoencoder.data.dataset import Dataset4D
from napari_4dstem_autoencoder.model.config import ModelConfig
from napari_4dstem_autoencoder.training.config import TrainConfig
from napari_4dstem_autoencoder.training.engine import train

#: the seed's objective on an architecture that is fast at 32x32 (tests pick presets explicitly)
FAST_MODEL = ModelConfig(pool_schedule="to4", decoder_canvas="target")


def make_scan(scan_shape=(3, 3), detector_shape=(32, 32), seed=0) -> np.ndarray:
    """Two 'phases' of disc patterns with Poisson noise, as uint16 counts."""
    rng = np.random.default_rng(seed)
    qy, qx = np.mgrid[0:detector_shape[0], 0:detector_shape[1]]
    cy, cx = detector_shape[0] / 2, detector_shape[1] / 2
    out = np.empty((*scan_shape, *detector_shape), dtype=np.uint16)
    for ry in range(scan_shape[0]):
        for rx in range(scan_shape[1]):
            radius = 5 if (ry + rx) % 2 else 9
            disc = ((qy - cy) ** 2 + (qx - cx) ** 2 < radius**2) * 200.0 + 2.0
            out[ry, rx] = rng.poisson(disc)
    return out


def make_dataset(scan_shape=(3, 3), detector_shape=(32, 32), seed=0) -> Dataset4D:
    return Dataset4D(da.from_array(make_scan(scan_shape, detector_shape, seed), chunks=(1, -1, -1, -1)))


def make_config(**changes) -> TrainConfig:
    base = dict(preset="seed", model=FAST_MODEL, epochs=1, batch_size=4, val_fraction=0.0, device="cpu",
                preview_every_seconds=None, seed=0)
    base.update(changes)
    return TrainConfig(**base)


@dataclass
class Run:
    events: list
    config: TrainConfig
    dataset: Dataset4D


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Run:
    """One epoch on a 3x3 scan with a validation split, previews every step and a checkpoint."""
    path = tmp_path_factory.mktemp("run") / "model.safetensors"
    config = make_config(val_fraction=0.25, preview_every_steps=1, checkpoint_path=str(path))
    ds = make_dataset()
    return Run(events=list(train(ds, config)), config=config, dataset=ds)


@pytest.fixture(scope="session")
def fast_model() -> ModelConfig:
    return FAST_MODEL


@pytest.fixture(scope="session")
def tiny_dataset():
    """Factory: ``tiny_dataset(scan_shape=(3, 3), detector_shape=(32, 32), seed=0)``."""
    return make_dataset


@pytest.fixture(scope="session")
def tiny_config():
    """Factory: ``tiny_config(**TrainConfig changes)`` on top of a fast CPU test config."""
    return make_config

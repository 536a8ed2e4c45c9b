"""The widgets' one doorway to the engine, io and analysis layers (no Qt here).

No other module of ``gui/`` imports the core at run time, apart from the napari hooks
(:mod:`.hooks`, napari's own doorway to the readers) and the Train dock's dispatch on the
engine's event types (``training.events``): those dataclasses are the protocol of the generator
:func:`train` hands out, not functions of the core. Widgets do call methods of the objects
these functions return (``preprocessor.scan_view``, ``transform_patterns``).

Everything heavy (torch, the training engine, scikit-learn) is imported inside the functions so
that importing the plugin, or opening napari, stays fast. Functions here run in worker threads
as well as on the GUI thread, so they never touch widgets or layers.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .._files import atomic_write_bytes, check_output, input_family

if TYPE_CHECKING:
    import torch

Progress = Callable[[int, int], None]


def available_devices() -> list[str]:
    """``auto``, ``cpu``, each ``cuda:N`` torch sees, and ``mps`` when present."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def _device(name: str) -> "torch.device":
    from ..training.device import resolve_device as _resolve

    return _resolve(name)


def resolve_device(device: str) -> str:
    """``auto`` -> the best device present, other names checked (the engine's own rule)."""
    return str(_device(device))


def presets() -> tuple[dict[str, Any], str]:
    """The presets by name (each with its ``summary`` and ``objective``) and the default's name."""
    from ..training.presets import DEFAULT_PRESET, PRESETS

    return dict(PRESETS), DEFAULT_PRESET


def default_learning_rate() -> float:
    from ..training.config import TrainConfig

    return TrainConfig.lr


def make_train_config(preset: str, loss_weights: dict[str, float | None] | None = None,
                      **values: Any) -> Any:
    """A frozen TrainConfig from widget values: ``loss_weights`` (``None``: the preset's) go
    into the preset's objective; keys the engine does not know are dropped."""
    from ..training.config import TrainConfig
    from ..training.presets import objective_with

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(preset=preset, objective=objective_with(preset, **(loss_weights or {})),
                       **{k: v for k, v in values.items() if k in known})


def train(dataset: Any, config: Any, stop: threading.Event, resume_from: Any = None):
    """The engine's event generator (runs inside a thread_worker)."""
    from ..training.engine import train as engine_train

    return engine_train(dataset, config, stop=stop, resume_from=resume_from)


def load_checkpoint(path: str, device: str = "cpu") -> Any:
    from ..training.checkpoints import load_checkpoint as _load

    return _load(path, device=_device(device))


def embed_and_score(loaded: Any, dataset: Any, device: str, progress: Progress | None = None,
                    stop: threading.Event | None = None, batch_size: int = 64, *,
                    keep_reconstructions: bool = True, memory_budget: int | None = None,
                    directory: str | None = None
                    ) -> tuple[np.ndarray, dict[str, np.ndarray], Any] | None:
    """Embeddings (Ry', Rx', 32), reconstruction-error maps (mse, psnr) and, with
    ``keep_reconstructions``, the reconstructions of a whole scan (an
    ``inference.reconstructions.ReconstructionStore`` whose ``source`` is ``(loaded, dataset)``;
    in memory up to ``memory_budget`` bytes, else a memory-mapped file under ``directory``,
    a temporary folder by default; None without ``keep_reconstructions`` or when the disk has
    no room for them). None when ``stop`` was set (a user's Stop is not an error); the
    partial store is then removed. However it ends, the model leaves an accelerator and its
    cached memory is given back (:func:`release_device_memory`)."""
    from ..inference.embedding import EmbeddingCancelled
    from ..inference.embedding import embed_and_score as _embed
    from ..inference.reconstructions import DEFAULT_MEMORY_BUDGET, ReconstructionStore

    store = None
    if keep_reconstructions:
        prep = loaded.preprocessor
        scan_shape = prep.scan_view(dataset).scan_shape
        shape = prep.output_shape(tuple(dataset.detector_shape))
        budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
        if _store_fits(scan_shape, shape, budget, directory):
            store = ReconstructionStore(scan_shape, shape, memory_budget=budget,
                                        directory=directory, source=(loaded, dataset))
    try:
        result = _embed(loaded.model, loaded.preprocessor, dataset, batch_size=batch_size,
                        device=_device(device), progress=progress, stop=stop,
                        reconstructions=store)
    except EmbeddingCancelled:
        if store is not None:
            store.close()
        return None
    except BaseException:
        if store is not None:
            store.close()
        raise
    finally:  # stopped, failed or done: the model leaves the GPU (browsing reads the store)
        release_device_memory(loaded, device)
    return result.embeddings, {"mse": result.mse, "psnr": result.psnr}, store


def _store_fits(scan_shape: tuple[int, int], shape: tuple[int, int], budget: int,
                directory: str | None) -> bool:
    """Whether reconstructions of this size can be kept: in memory under ``budget``, else on a
    disk with room for them and 1 GiB to spare (else the Inspector decodes each click)."""
    import shutil
    import tempfile
    from pathlib import Path

    nbytes = 2 * scan_shape[0] * scan_shape[1] * shape[0] * shape[1]  # float16
    if nbytes <= budget:
        return True
    where = Path(directory or tempfile.gettempdir()).absolute()
    while not where.exists() and where != where.parent:  # a folder still to be made
        where = where.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return False
    return free >= nbytes + 2**30


def reconstruct_one(loaded: Any, raw: np.ndarray, device: str, inputs: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(input, reconstruction) of one raw pattern, both in the model's [0, 1] space.
    ``inputs``: the pattern already preprocessed (then it is not preprocessed again)."""
    from ..inference.embedding import reconstruct

    inputs, recon = reconstruct(loaded.model, loaded.preprocessor, raw, _device(device),
                                inputs=inputs)
    shape = np.shape(recon)[-2:]
    return (np.asarray(inputs, dtype=np.float32).reshape(shape),
            np.asarray(recon, dtype=np.float32).reshape(shape))


def preprocess_one(loaded: Any, raw: np.ndarray) -> np.ndarray:
    """One raw pattern as the model sees it (float32 (H, W) in [0, 1])."""
    return np.asarray(loaded.preprocessor.transform_patterns(raw), dtype=np.float32)


def decode_latent(loaded: Any, z: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Decode one 32-D latent vector into a pattern in [0, 1] (for the traversal sliders)."""
    import torch

    model = loaded.model
    dev = next(model.parameters()).device
    with torch.no_grad():
        t = torch.as_tensor(np.asarray(z, dtype=np.float32)[None], device=dev)
        out = model.decode(t, tuple(out_shape))
    return out[0, 0].float().cpu().numpy()


def pattern_quality(inputs: np.ndarray, recon: np.ndarray) -> tuple[float, float]:
    """PSNR (dB, ``inf`` when exact) and SSIM (7x7 window) of one reconstruction, both arrays
    in [0, 1]: the project's one quality measure (``analysis.quality``). Model inputs are at
    least 32x32 pixels, so the window always fits."""
    from ..analysis.quality import reconstruction_quality

    return reconstruction_quality(inputs, recon, data_range=1.0)


def live_dimensions(embeddings: np.ndarray) -> int:
    """How many latent dimensions vary over the scan (dead units do not count)."""
    from ..analysis.quality import live_dimensions as _live

    return _live(embeddings)


def cluster(embeddings: np.ndarray, n_clusters: int, method: str, seed: int = 0, *,
            standardise: bool) -> np.ndarray:
    from ..analysis.clustering import cluster_embeddings

    return np.asarray(cluster_embeddings(embeddings, n_clusters, method=method, seed=seed,
                                         standardise=standardise))


def pca_scores(view: Any, preprocessor: Any, n_components: int,
               on_block: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """PCA scores ``(Ry, Rx, n)`` of the (preprocessed) patterns and their explained variance;
    ``on_block(start, block)`` sees each preprocessed block of the first read."""
    from ..analysis.clustering import pca_scores as scores

    return scores(view, n_components, preprocessor=preprocessor, on_block=on_block)


def class_means(view: Any, labels: np.ndarray, n_clusters: int, preprocessor: Any) -> np.ndarray:
    """Mean (preprocessed) pattern of each cluster of ``labels`` over ``view``."""
    from ..analysis.clustering import class_mean_patterns

    return class_mean_patterns(view, labels, n_clusters=n_clusters, preprocessor=preprocessor)


def pca_scores_and_class_means(view: Any, preprocessor: Any, n_components: int,
                               labels: np.ndarray, n_clusters: int
                               ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """:func:`pca_scores` and :func:`class_means` from ONE read of the scan."""
    from ..analysis.clustering import ClassMeans

    means = ClassMeans(labels, n_clusters)
    pca = pca_scores(view, preprocessor, n_components, on_block=means.add)
    return pca, means.result()


def compare_with_pca(labels: np.ndarray, pca: tuple[np.ndarray, np.ndarray], n_clusters: int,
                     method: str, standardise: bool) -> dict[str, Any]:
    """Cluster PCA scores as the embeddings were; labels matched to ``labels``' ids."""
    from ..analysis.clustering import adjusted_rand, match_labels

    pca_labels = match_labels(labels, cluster(pca[0], n_clusters, method,
                                              standardise=standardise))
    return {"pca_labels": pca_labels, "agreement": adjusted_rand(labels, pca_labels),
            "same_fraction": float(np.mean(pca_labels == labels))}


def project(embeddings: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    from ..analysis.clustering import project_2d

    flat = np.asarray(embeddings).reshape(-1, np.shape(embeddings)[-1])
    return np.asarray(project_2d(flat, method=method, seed=seed), dtype=np.float32)


def _inputs(state: Any) -> set:
    """The files the state's dataset and model were read from (never written to)."""
    inputs = set()
    if state.dataset is not None and state.dataset.path is not None:
        inputs |= input_family(state.dataset.path)
    if state.model is not None and state.model.path is not None:
        inputs.add(state.model.path)
    return inputs


def save_checkpoint_copy(source: str, path: str, state: Any) -> None:
    """Copy the checkpoint ``source`` to ``path`` atomically, read back before the rename;
    refuses ``path`` when it is one of the state's inputs or not a regular file."""
    from pathlib import Path

    from ..training.checkpoints import read_checkpoint

    if os.path.realpath(source) == os.path.realpath(path):
        return  # already there
    check_output(path, _inputs(state) - {Path(source)}, overwrite=True, what="checkpoint")
    atomic_write_bytes(path, Path(source).read_bytes(), verify=read_checkpoint)


def export(path: str, state: Any, labels: np.ndarray | None = None,
           pca_labels: np.ndarray | None = None) -> None:
    """Write embeddings (+ error maps, labels, configs) as HDF5, or the maps as a TIFF stack."""
    from ..inference.export import export_hdf5, export_tiff

    # the file dialog has asked before replacing a file; an input is never replaced
    check_output(path, _inputs(state), overwrite=True, what="export")
    loaded = state.model
    # the maps' grid: the file's calibration through the model's scan crop and binning
    calibration = None
    if state.dataset is not None:
        calibration = state.dataset.calibration
        if loaded is not None:
            calibration = loaded.preprocessor.output_calibration(calibration)
    if str(path).lower().endswith((".tif", ".tiff")):
        export_tiff(path, state.embeddings, channel_axis=-1, calibration=calibration)
        return
    extra = {} if labels is None else {"cluster_labels": np.asarray(labels)}
    if pca_labels is not None:
        extra["pca_cluster_labels"] = np.asarray(pca_labels)
    export_hdf5(path, state.embeddings, state.error_maps or {},
                loaded.model.config.to_dict() if loaded is not None else None,
                loaded.preprocessor.to_dict() if loaded is not None else None, extra,
                metadata={"dataset": state.dataset.name if state.dataset is not None else "",
                          "preset": loaded.preset if loaded is not None else None},
                calibration=calibration)


def virtual_images(dataset: Any, bf_radius: float, adf_inner: float, adf_outer: float,
                   centre: tuple[float, float] | None = None, progress: Progress | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Virtual bright field and annular dark field, both in one chunked pass over the data."""
    from ..data import virtual

    if centre is None:
        centre = virtual.estimate_beam(dataset).centre
    shape = tuple(dataset.detector_shape)
    out = virtual.compute_virtual(
        dataset, {"bf": virtual.disk_mask(shape, centre, bf_radius),
                  "adf": virtual.annulus_mask(shape, centre, adf_inner, adf_outer)},
        progress=progress)
    return out["bf"].astype(np.float32), out["adf"].astype(np.float32)


def beam_estimate(dataset: Any, beam: Any = None
                  ) -> tuple[tuple[float, float], float, tuple[float, float]]:
    """(centre (y, x), radius) of the direct beam and default ADF (inner, outer) radii.

    ``beam``: an estimate already made (the reader's, a ``BeamEstimate``); without it the beam
    is estimated, which reads a few hundred patterns.
    """
    from ..data import virtual

    if beam is None:
        beam = virtual.estimate_beam(dataset)
    inner, outer = virtual.default_adf_radii(beam, tuple(dataset.detector_shape))
    return (float(beam.centre[0]), float(beam.centre[1])), float(beam.radius), (float(inner), float(outer))


# -- preprocessing -------------------------------------------------------------------------

def preprocess_config(**values: Any) -> Any:
    """A PreprocessConfig (defaults for what is not given; ValueError on a bad value)."""
    from ..data.preprocess import PreprocessConfig

    return PreprocessConfig(**values)


def preprocessor(config: Any) -> Any:
    """An unfitted Preprocessor of ``config``: its scan view and output shape need no fit."""
    from ..data.preprocess import Preprocessor

    return Preprocessor(config)


def fit_preprocessor(dataset: Any, config: Any, max_patterns: int) -> Any:
    """A Preprocessor of ``config`` fitted on up to ``max_patterns`` positions of ``dataset``."""
    from ..data.preprocess import Preprocessor

    return Preprocessor.fit(dataset, config, max_patterns=max_patterns)


def plan_run(dataset: Any, config: Any, **options: Any) -> Any:
    """A run of ``config`` fitted to its device from timed steps (``training.plan``)."""
    from ..training.plan import plan_run as _plan

    return _plan(dataset, config, **options)


def time_training_steps(view: Any, config: Any) -> tuple[float, float]:
    from ..training.plan import time_training_steps as _time

    return _time(view, config)


def default_budget_minutes(device: str) -> float | None:
    """The time budget a run on ``device`` gets by default (None: no limit, on CUDA)."""
    from ..training.plan import DEFAULT_CPU_MINUTES

    return None if _device(device).type == "cuda" else DEFAULT_CPU_MINUTES


def release_device_memory(loaded: Any, device: str) -> None:
    """Move a model off the GPU and give the allocator's cache back (no-op on the CPU)."""
    from ..training.device import release_device_memory as _release

    _release(getattr(loaded, "model", None), _device(device))


def device_memory_text(device: str) -> str:
    """'GPU memory in use: …' for a CUDA device, '' elsewhere."""
    from ..training.device import device_memory

    held = device_memory(_device(device))
    if held is None:
        return ""
    allocated, reserved = held
    return (f"GPU memory in use: {allocated / 2**20:,.0f} MiB "
            f"(reserved by PyTorch: {reserved / 2**20:,.0f} MiB)")

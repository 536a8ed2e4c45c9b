"""The widgets' one doorway to the engine, io and analysis layers (no Qt here).

Everything heavy (torch, the training engine, scikit-learn) is imported inside the functions so
that importing the plugin, or opening napari, stays fast. Functions here run in worker threads
as well as on the GUI thread, so they never touch widgets or layers.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable

import numpy as np

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


def resolve_device(device: str) -> str:
    """``auto`` -> the best device present; anything else is returned unchanged."""
    if device != "auto":
        return device
    devices = available_devices()
    for d in devices:
        if d.startswith("cuda"):
            return d
    return "mps" if "mps" in devices else "cpu"


def preset_names() -> tuple[list[str], str]:
    from ..model.config import DEFAULT_PRESET, PRESETS

    return list(PRESETS), DEFAULT_PRESET


def default_learning_rate() -> float:
    from ..training.config import TrainConfig

    return TrainConfig.lr


def make_train_config(**values: Any) -> Any:
    """A frozen TrainConfig from widget values; keys the engine does not know are dropped."""
    from ..training.config import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in known})


def train(dataset: Any, config: Any, stop: threading.Event, resume_from: Any = None):
    """The engine's event generator (runs inside a thread_worker)."""
    from ..training.engine import train as engine_train

    return engine_train(dataset, config, stop=stop, resume_from=resume_from)


def load_checkpoint(path: str, device: str = "cpu") -> Any:
    from ..training.checkpoints import load_checkpoint as _load

    return _load(path, device=resolve_device(device))


def save_checkpoint(path: str, loaded: Any) -> None:
    """Write ``loaded`` (a LoadedModel) to ``path`` (atomic, safetensors + JSON)."""
    from ..training.checkpoints import save_checkpoint as _save

    _save(path, loaded.model, loaded.preprocessor, loaded.train_config, loaded.history)


def embed_and_score(loaded: Any, dataset: Any, device: str, progress: Progress | None = None,
                    stop: threading.Event | None = None, batch_size: int = 64
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """Embeddings (Ry', Rx', 32) and reconstruction-error maps (mse, psnr) of a whole scan;
    None when ``stop`` was set (a user's Stop is not an error)."""
    from ..inference.embedding import EmbeddingCancelled
    from ..inference.embedding import embed_and_score as _embed

    try:
        result = _embed(loaded.model, loaded.preprocessor, dataset, batch_size=batch_size,
                        device=resolve_device(device), progress=progress, stop=stop)
    except EmbeddingCancelled:
        return None
    return result.embeddings, {"mse": result.mse, "psnr": result.psnr}


def reconstruct_one(loaded: Any, raw: np.ndarray, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(input, reconstruction) of one raw pattern, both in the model's [0, 1] space."""
    from ..inference.embedding import reconstruct

    inputs, recon = reconstruct(loaded.model, loaded.preprocessor, raw, resolve_device(device))
    shape = np.shape(recon)[-2:]
    return (np.asarray(inputs, dtype=np.float32).reshape(shape),
            np.asarray(recon, dtype=np.float32).reshape(shape))


def decode_latent(loaded: Any, z: np.ndarray, out_shape: tuple[int, int], device: str,
                  level: float | None = None) -> np.ndarray:
    """Decode one 32-D latent vector into a pattern in [0, 1] (for the traversal sliders).

    ``level``: the pattern level a ``levelled`` model's decoder is given (see
    :func:`pattern_level`); without it such a model decodes at its training data's mean level.
    """
    import torch

    model = loaded.model
    dev = next(model.parameters()).device
    with torch.no_grad():
        t = torch.as_tensor(np.asarray(z, dtype=np.float32)[None], device=dev)
        lv = None if level is None else torch.tensor([float(level)], device=dev)
        out = model.decode(t, tuple(out_shape), level=lv)
    return out[0, 0].float().cpu().numpy()


def pattern_level(loaded: Any, dataset: Any, grid: tuple[int, int]) -> float | None:
    """Level (mean preprocessed value) of the pattern at ``grid`` of the model's scan view,
    for a model whose decoder is given it; ``None`` for any other model."""
    import torch

    model = loaded.model
    if not model.uses_level:  # checked first: no read for other models
        return None
    prep = loaded.preprocessor
    x = prep.transform_patterns(np.asarray(prep.scan_view(dataset).pattern(*grid))[None])
    # the model's own definition of the level, as encode_decode applies it
    return float(model.level_of(torch.as_tensor(np.asarray(x, dtype=np.float32))[:, None])[0])


def pattern_quality(inputs: np.ndarray, recon: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of one reconstruction, both arrays in [0, 1]."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a = np.asarray(inputs, dtype=np.float64)
    b = np.asarray(recon, dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    psnr = float("inf") if mse == 0 else float(peak_signal_noise_ratio(a, b, data_range=1.0))
    win = min(7, min(a.shape) // 2 * 2 - 1)
    ssim = float(structural_similarity(a, b, data_range=1.0, win_size=max(win, 3)))
    return psnr, ssim


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


def export(path: str, state: Any, labels: np.ndarray | None = None,
           pca_labels: np.ndarray | None = None) -> None:
    """Write embeddings (+ error maps, labels, configs) as HDF5, or the maps as a TIFF stack."""
    from ..inference.export import export_hdf5, export_tiff

    if str(path).lower().endswith((".tif", ".tiff")):
        export_tiff(path, state.embeddings, channel_axis=-1)
        return
    loaded = state.model
    extra = {} if labels is None else {"cluster_labels": np.asarray(labels)}
    if pca_labels is not None:
        extra["pca_cluster_labels"] = np.asarray(pca_labels)
    export_hdf5(path, state.embeddings, state.error_maps or {},
                loaded.model.config.to_dict() if loaded is not None else None,
                loaded.preprocessor.to_dict() if loaded is not None else None, extra,
                metadata={"dataset": state.dataset.name if state.dataset is not None else ""})


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


def beam_estimate(dataset: Any) -> tuple[tuple[float, float], float, tuple[float, float]]:
    """(centre (y, x), radius) of the direct beam and default ADF (inner, outer) radii."""
    from ..data import virtual

    beam = virtual.estimate_beam(dataset)
    inner, outer = virtual.default_adf_radii(beam, tuple(dataset.detector_shape))
    return (float(beam.centre[0]), float(beam.centre[1])), float(beam.radius), (float(inner), float(outer))


def open_sample_dataset(**kwargs: Any) -> Any:
    from ..data.sample import make_sample_dataset

    return make_sample_dataset(**kwargs)

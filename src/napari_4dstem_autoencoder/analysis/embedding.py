"""Embed whole scans, reconstruct patterns and score reconstructions, in bounded memory.

Scans are read tile by tile from the lazy dataset (whole scan rows when they fit in a batch,
else pieces of one row), preprocessed, and pushed through the encoder (and the decoder when
scoring). The next tile is read on a background thread while the current one computes, so
I/O overlaps compute; at most two tiles are in memory whatever the scan size.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..io.dataset import Dataset4D
from ..io.preprocess import Preprocessor
from ..models.autoencoder import Autoencoder
from ..training.device import Precision, choose_precision, resolve_device

Progress = Callable[[int, int], None]
#: CUDA's adaptive pooling asserts once a tensor holds 2**31 elements (B x 128 x H x W).
_MAX_ELEMENTS = 2**31 - 1
_CHANNELS = 128
_PSNR_FLOOR_MSE = 1e-12  # caps PSNR at 120 dB for perfect reconstructions


class EmbeddingCancelled(RuntimeError):
    """Raised when the ``stop`` event is set while a scan is being embedded."""


@dataclass
class EmbeddingResult:
    """Per-position results on the (scan-cropped/binned) grid."""

    embeddings: np.ndarray  # (Ry', Rx', latent) float32
    mse: np.ndarray | None = None  # (Ry', Rx') float32, in preprocessed [0, 1] units
    psnr: np.ndarray | None = None  # (Ry', Rx') float32 dB, data range 1

    def error_maps(self) -> dict[str, np.ndarray]:
        return {} if self.mse is None else {"mse": self.mse, "psnr": self.psnr}


def safe_batch_size(batch_size: int, input_shape: tuple[int, int], canvas: str = "target") -> int:
    """``batch_size`` reduced so no activation reaches CUDA's 2**31-element limit."""
    area = input_shape[0] * input_shape[1]
    if canvas == "fixed256":
        area = max(area, 256 * 256)  # the seed decoder always renders 256x256
    return max(1, min(int(batch_size), _MAX_ELEMENTS // (_CHANNELS * area)))


def scan_tiles(scan_shape: tuple[int, int], batch_size: int) -> Iterator[tuple[slice, slice]]:
    """Rectangular tiles of at most ``batch_size`` positions covering the scan row-major."""
    ry, rx = scan_shape
    if rx <= batch_size:
        rows = max(1, batch_size // rx)
        for r0 in range(0, ry, rows):
            yield slice(r0, min(ry, r0 + rows)), slice(0, rx)
    else:
        for r in range(ry):
            for c0 in range(0, rx, batch_size):
                yield slice(r, r + 1), slice(c0, min(rx, c0 + batch_size))


def _prepare(model: Autoencoder, device: str | torch.device, amp: str,
             channels_last: bool | str) -> tuple[torch.device, Precision]:
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model.to(dev).eval()
    precision = choose_precision(dev, amp, channels_last)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    return dev, precision


def embed_and_score(
    model: Autoencoder,
    preprocessor: Preprocessor,
    dataset: Dataset4D,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    *,
    score: bool = True,
    amp: str = "auto",
    channels_last: bool | str = "auto",
) -> EmbeddingResult:
    """Embeddings of every position and, with ``score``, per-position MSE and PSNR.

    One encoder pass per pattern; scoring adds one decoder pass. The model is moved to
    ``device`` and put in eval mode. ``progress(done, total)`` is called after each tile;
    setting ``stop`` raises :class:`EmbeddingCancelled` between tiles.
    """
    view = preprocessor.scan_view(dataset)
    ry, rx = view.scan_shape
    input_shape = preprocessor.output_shape(view.detector_shape)
    dev, precision = _prepare(model, device, amp, channels_last)
    batch = safe_batch_size(batch_size, input_shape, model.config.decoder_canvas)
    emb = np.zeros((ry, rx, model.config.latent_dim), dtype=np.float32)
    mse = np.zeros((ry, rx), dtype=np.float32) if score else None
    tiles = list(scan_tiles((ry, rx), batch))
    total, done = ry * rx, 0

    def read(tile: tuple[slice, slice]) -> np.ndarray:
        raw = np.asarray(view.data[tile].compute())
        flat = raw.reshape(-1, *raw.shape[-2:])
        return preprocessor.transform_patterns(flat)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-read") as pool:
        pending = pool.submit(read, tiles[0]) if tiles else None
        for i, tile in enumerate(tiles):
            if stop is not None and stop.is_set():
                pending.cancel()
                raise EmbeddingCancelled("embedding stopped")
            x_np = pending.result()
            pending = pool.submit(read, tiles[i + 1]) if i + 1 < len(tiles) else None
            x = precision.prepare_input(torch.from_numpy(x_np).unsqueeze(1).to(dev))
            with torch.inference_mode(), precision.autocast():
                z = model.embed(x)
                if score:
                    x_hat = model.decode(z, tuple(x.shape[-2:]))
            shape = (tile[0].stop - tile[0].start, tile[1].stop - tile[1].start)
            emb[tile] = z.float().cpu().numpy().reshape(*shape, -1)
            if score:
                err = (x_hat.float() - x.float()).pow(2).mean(dim=(1, 2, 3))
                mse[tile] = err.cpu().numpy().reshape(shape)
            done += shape[0] * shape[1]
            if progress is not None:
                progress(done, total)
    if not score:
        return EmbeddingResult(embeddings=emb)
    psnr = (10.0 * np.log10(1.0 / np.maximum(mse, _PSNR_FLOOR_MSE))).astype(np.float32)
    return EmbeddingResult(embeddings=emb, mse=mse, psnr=psnr)


def embed_dataset(
    model: Autoencoder,
    preprocessor: Preprocessor,
    dataset: Dataset4D,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    **kwargs,
) -> np.ndarray:
    """(Ry', Rx', latent) float32 embeddings of every position, streamed in batches."""
    return embed_and_score(model, preprocessor, dataset, batch_size, device, progress, stop,
                           score=False, **kwargs).embeddings


def reconstruction_error_maps(
    model: Autoencoder,
    preprocessor: Preprocessor,
    dataset: Dataset4D,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    **kwargs,
) -> dict[str, np.ndarray]:
    """``{"mse": (Ry', Rx'), "psnr": (Ry', Rx')}`` of each position's reconstruction."""
    return embed_and_score(model, preprocessor, dataset, batch_size, device, progress, stop,
                           score=True, **kwargs).error_maps()


def reconstruct(
    model: Autoencoder,
    preprocessor: Preprocessor,
    raw_patterns: np.ndarray,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, reconstructions), both preprocessed to [0, 1], for raw patterns.

    ``raw_patterns`` is one (Qy, Qx) pattern (results are (H, W)) or a stack (N, Qy, Qx)
    (results are (N, H, W)). Cheap enough per pattern for interactive browsing.
    """
    raw = np.asarray(raw_patterns)
    single = raw.ndim == 2
    if raw.ndim not in (2, 3):
        raise ValueError(f"expected a (Qy, Qx) pattern or an (N, Qy, Qx) stack, got {raw.shape}")
    x_np = preprocessor.transform_patterns(raw[None] if single else raw)
    dev, precision = _prepare(model, device, "off", False)
    out = np.empty_like(x_np)
    with torch.inference_mode():
        for start in range(0, len(x_np), batch_size):
            x = torch.from_numpy(x_np[start:start + batch_size]).unsqueeze(1).to(dev)
            x_hat, _ = model.encode_decode(x)
            out[start:start + len(x)] = x_hat[:, 0].float().cpu().numpy()
    return (x_np[0], out[0]) if single else (x_np, out)


__all__ = ["EmbeddingCancelled", "EmbeddingResult", "embed_and_score", "embed_dataset",
           "reconstruct", "reconstruction_error_maps", "safe_batch_size", "scan_tiles"]

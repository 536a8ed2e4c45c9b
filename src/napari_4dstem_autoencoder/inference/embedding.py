"""Embed whole scans, reconstruct patterns and score reconstructions, in bounded memory.

Scans are read one dask chunk at a time on a reader thread (each chunk read once), cut into
batches, preprocessed and queued; the caller's thread pushes the batches through the encoder
(and the decoder only when scoring or keeping reconstructions). Reading overlaps compute, and
memory is bounded by one chunk plus a few batches whatever the scan size; reconstructions that
are kept go, batch by batch, to a :class:`~.reconstructions.ReconstructionStore` (in memory
when small, a memory-mapped file otherwise).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..data.dataset import Dataset4D
from ..data.preprocess import Preprocessor
from ..model.autoencoder import Autoencoder
from ..training.device import Precision, choose_precision, resolve_device
from .reconstructions import ReconstructionStore

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
    precision = choose_precision(dev, amp, channels_last, inference=True)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    return dev, precision


def scan_blocks(data, batch_size: int, max_block_bytes: int) -> Iterator[tuple[slice, slice]]:
    """Scan regions to read one at a time: the dask array's own scan chunks (each read once,
    never re-read per batch), split into batch-sized tiles when a chunk exceeds
    ``max_block_bytes``."""
    qy, qx = data.shape[-2:]
    itemsize = np.dtype(data.dtype).itemsize
    rows = np.cumsum((0, *data.chunks[0]))
    cols = np.cumsum((0, *data.chunks[1]))
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
            if (r1 - r0) * (c1 - c0) * qy * qx * itemsize <= max_block_bytes:
                yield slice(int(r0), int(r1)), slice(int(c0), int(c1))
                continue
            for rs, cs in scan_tiles((int(r1 - r0), int(c1 - c0)), batch_size):
                yield (slice(int(r0) + rs.start, int(r0) + rs.stop),
                       slice(int(c0) + cs.start, int(c0) + cs.stop))


_DONE = object()


def _produce(view: Dataset4D, preprocessor: Preprocessor, blocks: list[tuple[slice, slice]],
             batch: int, out: queue.Queue, cancel: threading.Event) -> None:
    """Reader thread: read each block once, preprocess it batch by batch into ``out``."""
    try:
        for block in blocks:
            raw = np.asarray(view.data[block].compute())
            flat = raw.reshape(-1, *raw.shape[-2:])
            for start in range(0, len(flat), batch):
                x = preprocessor.transform_patterns(flat[start:start + batch])
                while not cancel.is_set():
                    try:
                        out.put((block, start, x), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if cancel.is_set():
                    return
            del raw, flat
        out.put(_DONE)
    except BaseException as exc:  # handed to the consumer, which re-raises it
        out.put(exc)


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
    max_block_bytes: int = 256 * 2**20,
    queue_batches: int = 4,
    reconstructions: ReconstructionStore | None = None,
) -> EmbeddingResult:
    """Embeddings of every position and, with ``score``, per-position MSE and PSNR.

    One encoder pass per pattern; scoring adds one decoder pass, and without ``score`` (nor
    ``reconstructions``) the decoder is never run. With ``reconstructions`` (a store shaped
    like the scan view's grid and the model input), each batch's decoded patterns are written
    to it as they are made (the same decoder pass the scores use). The model is moved to
    ``device`` and put in eval mode. A reader thread reads the scan one dask chunk at a time
    (at most ``max_block_bytes``) and preprocesses it into a queue of ``queue_batches``
    batches, so memory is bounded by one chunk plus a few batches whatever the scan size,
    and reading overlaps compute. ``progress(done, total)`` is called after each batch;
    setting ``stop`` raises :class:`EmbeddingCancelled` between batches.
    """
    view = preprocessor.scan_view(dataset)
    ry, rx = view.scan_shape
    input_shape = preprocessor.output_shape(view.detector_shape)
    dev, precision = _prepare(model, device, amp, channels_last)
    batch = safe_batch_size(batch_size, input_shape, model.config.decoder_canvas)
    emb = np.zeros((ry, rx, model.config.latent_dim), dtype=np.float32)
    mse = np.zeros((ry, rx), dtype=np.float32) if score else None
    if reconstructions is not None and (reconstructions.scan_shape != (ry, rx)
                                        or reconstructions.pattern_shape != tuple(input_shape)):
        raise ValueError(f"the reconstruction store holds {reconstructions.scan_shape} x "
                         f"{reconstructions.pattern_shape}, the scan view is {(ry, rx)} x "
                         f"{tuple(input_shape)}")
    decode = score or reconstructions is not None
    blocks = list(scan_blocks(view.data, batch, max_block_bytes))
    total, done = ry * rx, 0
    batches: queue.Queue = queue.Queue(maxsize=max(1, queue_batches))
    cancel = threading.Event()
    reader = threading.Thread(target=_produce, name="embed-reader", daemon=True,
                              args=(view, preprocessor, blocks, batch, batches, cancel))
    reader.start()
    try:
        while True:
            if stop is not None and stop.is_set():
                raise EmbeddingCancelled("embedding stopped")
            item = batches.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            (rows, cols), start, x_np = item
            x = precision.prepare_input(torch.from_numpy(x_np).unsqueeze(1).to(dev))
            with torch.inference_mode(), precision.autocast():
                z = model.embed(x)
                if decode:
                    x_hat = model.decode(z, tuple(x.shape[-2:]))
            # flat positions of this batch inside its block -> scan coordinates
            width = cols.stop - cols.start
            k = np.arange(start, start + len(x_np))
            yy, xx = rows.start + k // width, cols.start + k % width
            emb[yy, xx] = z.float().cpu().numpy()
            if score:
                mse[yy, xx] = (x_hat.float() - x.float()).pow(2).mean(dim=(1, 2, 3)).cpu().numpy()
            if reconstructions is not None:
                reconstructions.put(yy, xx, x_hat[:, 0].float().cpu().numpy())
            done += len(x_np)
            if progress is not None:
                progress(done, total)
    finally:
        cancel.set()
        reader.join(timeout=30)
    if reconstructions is not None:
        reconstructions.finish()
    if not score:
        return EmbeddingResult(embeddings=emb)
    psnr = (10.0 * np.log10(1.0 / np.maximum(mse, _PSNR_FLOOR_MSE))).astype(np.float32)
    return EmbeddingResult(embeddings=emb, mse=mse, psnr=psnr)


def reconstruct(
    model: Autoencoder,
    preprocessor: Preprocessor,
    raw_patterns: np.ndarray,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    *,
    inputs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, reconstructions), both preprocessed to [0, 1], for raw patterns.

    ``raw_patterns`` is one (Qy, Qx) pattern (results are (H, W)) or a stack (N, Qy, Qx)
    (results are (N, H, W)). Cheap enough per pattern for interactive browsing. ``inputs``:
    the patterns already preprocessed (``preprocessor.transform_patterns(raw_patterns)``),
    so they are not preprocessed again.
    """
    raw = np.asarray(raw_patterns)
    single = raw.ndim == 2
    if raw.ndim not in (2, 3):
        raise ValueError(f"expected a (Qy, Qx) pattern or an (N, Qy, Qx) stack, got {raw.shape}")
    if inputs is None:
        x_np = preprocessor.transform_patterns(raw[None] if single else raw)
    else:
        x_np = np.asarray(inputs, dtype=np.float32)
        x_np = x_np[None] if single else x_np
    dev, precision = _prepare(model, device, "off", False)
    out = np.empty_like(x_np)
    with torch.inference_mode():
        for start in range(0, len(x_np), batch_size):
            x = torch.from_numpy(x_np[start:start + batch_size]).unsqueeze(1).to(dev)
            x_hat, _ = model.encode_decode(x)
            out[start:start + len(x)] = x_hat[:, 0].float().cpu().numpy()
    return (x_np[0], out[0]) if single else (x_np, out)


__all__ = ["EmbeddingCancelled", "EmbeddingResult", "embed_and_score", "reconstruct",
           "safe_batch_size", "scan_blocks", "scan_tiles"]

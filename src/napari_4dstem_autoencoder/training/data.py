"""Training data: position subsets, and map-style torch datasets of preprocessed patterns.

Two sources share one interface (index -> (1, H, W) float32 tensor in [0, 1]):

- :class:`CachedPatterns` holds the preprocessed patterns in memory (used when they fit). When
  the positions asked for are dense in the scan (a training split usually is) the file is
  read once, in order, in blocks aligned to its storage chunks, by two threads that each read
  a block and preprocess its patterns (:func:`read_patterns` is the same read, unthreaded);
- :class:`StreamedPatterns` reads them from the lazy dataset on demand. It implements
  ``__getitems__`` so a ``DataLoader`` fetches a whole batch with one sorted, chunk-friendly
  read instead of one dask compute per pattern.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.dataset import Dataset4D
from ..data.preprocess import PreprocessConfig, Preprocessor
from ..data.virtual import iter_blocks, map_blocks

#: positions asked for / positions in the scan at or above which :func:`read_patterns` reads
#: the whole scan in blocks (each block read once, in file order) instead of picking patterns
DENSE_FRACTION = 0.25


@dataclasses.dataclass(frozen=True)
class Split:
    """Flat indices (into the scan view) used for training and validation."""

    train: np.ndarray
    val: np.ndarray


def split_positions(n_positions: int, subset: int | None, val_fraction: float, seed: int) -> Split:
    """A reproducible random subset of positions, split into train and validation.

    Validation gets ``round(val_fraction * n)`` positions (at least 2 when the fraction is
    non-zero, so batch statistics exist) while at least 2 stay for training.
    """
    rng = np.random.default_rng(seed)
    n = n_positions if subset is None else min(int(subset), n_positions)
    if n < 2:
        raise ValueError(f"training needs at least 2 positions, the scan has {n_positions}")
    chosen = rng.permutation(n_positions)[:n]
    n_val = 0
    if val_fraction > 0:
        n_val = max(2, int(round(val_fraction * n)))
        if n - n_val < 2:
            n_val = 0  # too few positions to hold any out
    val = np.sort(chosen[:n_val])
    train = np.sort(chosen[n_val:])
    return Split(train=train.astype(np.int64), val=val.astype(np.int64))


def reference_positions(train_idx: np.ndarray, max_patterns: int = 1024,
                        seed: int = 0) -> np.ndarray:
    """A seeded random subset (sorted) of at most ``max_patterns`` training positions.

    The preprocessing statistics and the model's data-derived buffers (output prior, balanced
    loss) are fitted on the patterns at these positions, read once.
    """
    idx = np.asarray(train_idx, dtype=np.int64)
    if idx.size > max_patterns:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(idx, size=max_patterns, replace=False))
    return idx


def fit_preprocessor_on(patterns: np.ndarray, config: PreprocessConfig,
                        name: str = "") -> Preprocessor:
    """Fit the preprocessing statistics on raw (N, Qy, Qx) patterns of a scan view.

    The patterns are laid out as a (N, 1, Qy, Qx) dataset and fitted with scan operations
    disabled (the view is already scan-cropped/binned).
    """
    fit_on = Dataset4D(np.asarray(patterns)[:, None], metadata={"name": name})
    detector_only = dataclasses.replace(config, scan_bin=1, scan_crop=None)
    fitted = Preprocessor.fit(fit_on, detector_only, max_patterns=len(patterns))
    return Preprocessor(config, fitted.stats)


class StreamedPatterns(Dataset):
    """Preprocessed patterns read lazily from a (scan-view) dataset by flat index."""

    def __init__(self, view: Dataset4D, preprocessor: Preprocessor, indices: np.ndarray) -> None:
        self.view = view
        self.preprocessor = preprocessor
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitems__(self, items: list[int]) -> list[torch.Tensor]:
        raw = self.view.patterns(self.indices[np.asarray(items, dtype=np.int64)])
        x = torch.from_numpy(self.preprocessor.transform_patterns(raw))
        return list(x.unsqueeze(1).unbind(0))

    def __getitem__(self, item: int) -> torch.Tensor:
        return self.__getitems__([item])[0]


def read_patterns(view: Dataset4D, indices: np.ndarray, chunk: int = 256,
                  block_bytes: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Raw patterns at flat scan ``indices`` as (where, patterns) pairs: ``patterns[i]`` is the
    pattern at ``indices[where[i]]``, in the file's dtype; every index is delivered once.

    Dense requests (at least :data:`DENSE_FRACTION` of the scan) read the scan once in order
    with :func:`~napari_4dstem_autoencoder.data.virtual.iter_blocks` (blocks of about
    ``block_bytes`` aligned to the file's chunks, the next read in the background) and pick the
    positions asked for from each block, at most ``chunk`` per pair; memory is two blocks plus
    one pair, whatever the file's size. Sparse requests read ``chunk`` patterns at a time with
    :meth:`Dataset4D.patterns` (each file chunk at most once per call, never a whole chunk for
    a few scattered patterns).
    """
    idx = np.asarray(indices, dtype=np.int64).ravel()
    if idx.size == 0:
        return
    if idx.size < DENSE_FRACTION * view.n_patterns:
        for start in range(0, idx.size, chunk):
            where = np.arange(start, min(start + chunk, idx.size))
            yield where, view.patterns(idx[where])
        return
    picks = _BlockPicks(view, idx)
    for sy, sx, block in iter_blocks(view, block_bytes=block_bytes, reuse=True):
        where, local = picks(sy, sx)
        patterns = block.reshape(-1, *block.shape[2:])
        for start in range(0, local.size, chunk):
            # a copy: the block's buffer is reused (or its pages unmapped) after the next
            yield where[start:start + chunk], patterns[local[start:start + chunk]]


class _BlockPicks:
    """For a block of the scan, which of the flat ``indices`` it holds: (where in
    ``indices``, flat position within the block), in file order."""

    def __init__(self, view: Dataset4D, indices: np.ndarray) -> None:
        if indices.min() < 0 or indices.max() >= view.n_patterns:
            raise IndexError(f"pattern index out of range 0..{view.n_patterns - 1}")
        self.order = np.argsort(indices, kind="stable")
        self.ordered = indices[self.order]
        self.rx = view.scan_shape[1]

    def __call__(self, sy: slice, sx: slice) -> tuple[np.ndarray, np.ndarray]:
        lo = np.searchsorted(self.ordered, sy.start * self.rx, side="left")
        hi = np.searchsorted(self.ordered, sy.stop * self.rx, side="left")
        rows, cols = np.divmod(self.ordered[lo:hi], self.rx)
        where = self.order[lo:hi]
        inside = (cols >= sx.start) & (cols < sx.stop)
        if not inside.all():  # a block of part rows: the columns it holds
            where, rows, cols = where[inside], rows[inside], cols[inside]
        return where, (rows - sy.start) * (sx.stop - sx.start) + (cols - sx.start)


class CachedPatterns(Dataset):
    """Preprocessed patterns held in one (N, 1, H, W) float32 tensor."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    @classmethod
    def load(cls, view: Dataset4D, preprocessor: Preprocessor, indices: np.ndarray,
             chunk: int = 256) -> "CachedPatterns":
        h, w = preprocessor.output_shape(view.detector_shape)
        idx = np.asarray(indices, dtype=np.int64).ravel()
        out = torch.empty((len(idx), 1, h, w), dtype=torch.float32)
        if idx.size == 0:
            return cls(out)
        dest = out.numpy()[:, 0]

        def put(where: np.ndarray, raw: np.ndarray) -> None:
            x = preprocessor.transform_patterns(raw)
            if where[-1] - where[0] == where.size - 1:  # a run: a plain copy
                dest[int(where[0]):int(where[-1]) + 1] = x
            else:
                dest[where] = x

        if idx.size < DENSE_FRACTION * view.n_patterns:
            for where, raw in read_patterns(view, idx, chunk):
                put(where, raw)
            return cls(out)
        # dense: one pass over the file, each block read and preprocessed by one of two
        # threads while the other reads the next (numpy releases the GIL in both)
        picks = _BlockPicks(view, idx)

        def work(sy: slice, sx: slice, block: np.ndarray) -> None:
            where, local = picks(sy, sx)
            patterns = block.reshape(-1, *block.shape[2:])
            for start in range(0, local.size, chunk):
                put(where[start:start + chunk], patterns[local[start:start + chunk]])

        for _ in map_blocks(view, work):
            pass
        return cls(out)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitems__(self, items: list[int]) -> list[torch.Tensor]:
        return list(self.data[torch.as_tensor(items, dtype=torch.long)].unbind(0))

    def __getitem__(self, item: int) -> torch.Tensor:
        return self.data[item]


def stack_batch(items: list[torch.Tensor]) -> torch.Tensor:
    """DataLoader collate: a list of (1, H, W) tensors -> (B, 1, H, W)."""
    return torch.stack(items, 0)


def preview_grid(scan_shape: tuple[int, int], max_positions: int) -> tuple[int, np.ndarray, tuple[int, int]]:
    """The coarse preview grid: (step, flat indices, grid shape) with at most ``max_positions``."""
    ry, rx = scan_shape
    step = 1
    while -(-ry // step) * -(-rx // step) > max_positions:
        step += 1
    ys = np.arange(0, ry, step)
    xs = np.arange(0, rx, step)
    flat = (ys[:, None] * rx + xs[None, :]).ravel()
    return step, flat.astype(np.int64), (len(ys), len(xs))

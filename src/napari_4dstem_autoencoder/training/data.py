"""Training data: position subsets, and map-style torch datasets of preprocessed patterns.

Two sources share one interface (index -> (1, H, W) float32 tensor in [0, 1]):

- :class:`CachedPatterns` holds the preprocessed patterns in memory (used when they fit);
- :class:`StreamedPatterns` reads them from the lazy dataset on demand. It implements
  ``__getitems__`` so a ``DataLoader`` fetches a whole batch with one sorted, chunk-friendly
  read instead of one dask compute per pattern.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.dataset import Dataset4D
from ..data.preprocess import PreprocessConfig, Preprocessor


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


class CachedPatterns(Dataset):
    """Preprocessed patterns held in one (N, 1, H, W) float32 tensor."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    @classmethod
    def load(cls, view: Dataset4D, preprocessor: Preprocessor, indices: np.ndarray,
             chunk: int = 256) -> "CachedPatterns":
        h, w = preprocessor.output_shape(view.detector_shape)
        out = torch.empty((len(indices), 1, h, w), dtype=torch.float32)
        for start in range(0, len(indices), chunk):
            raw = view.patterns(indices[start:start + chunk])
            out[start:start + len(raw), 0] = torch.from_numpy(
                preprocessor.transform_patterns(raw))
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

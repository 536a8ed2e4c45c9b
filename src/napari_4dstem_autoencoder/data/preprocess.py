"""Preprocessing: crop, bin, mask bad pixels, centre, scale (log/sqrt) and normalise to [0, 1].

Two halves:
- scan operations (crop, bin over probe positions) stay lazy on the dask array
  (:meth:`Preprocessor.scan_view`);
- detector operations run per batch of patterns (:meth:`Preprocessor.transform_patterns`),
  which is what training, embedding and the inspector call.

The fitted statistics (intensity range, bad-pixel mask) are part of a trained model: they are
JSON-serialisable (:meth:`Preprocessor.to_dict`) and travel in checkpoints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import numpy as np
from scipy import ndimage

from .._fields import checked_fields
from .dataset import Calibration, Dataset4D

Scaling = Literal["log", "sqrt", "none"]
Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open


@dataclass(frozen=True)
class PreprocessConfig:
    """What to do to the raw data before the network sees it."""

    scan_bin: int = 1
    detector_bin: int = 1
    scan_crop: Box | None = None
    detector_crop: Box | None = None
    scaling: Scaling = "log"
    normalise: bool = True
    mask_bad_pixels: bool = False
    centre_beam: bool = False
    #: percentile of scaled intensities mapped to 1.0 (robust to hot pixels)
    upper_percentile: float = 99.99

    def __post_init__(self) -> None:
        if int(self.scan_bin) < 1 or int(self.detector_bin) < 1:
            raise ValueError("binning factors must be >= 1")
        if self.scaling not in ("log", "sqrt", "none"):
            raise ValueError(f"unknown scaling {self.scaling!r}; choose log, sqrt or none")
        for name in ("scan_crop", "detector_crop"):
            box = getattr(self, name)
            if box is not None:
                if len(box) != 4 or box[0] >= box[1] or box[2] >= box[3] or min(box) < 0:
                    raise ValueError(f"{name} must be (y0, y1, x0, x1) with y0 < y1 and x0 < x1")
                object.__setattr__(self, name, tuple(int(v) for v in box))

    def scan_grid(self, scan_shape: tuple[int, int]
                  ) -> tuple[tuple[int, int], int, tuple[int, int]]:
        """Where the scan grid the model sees lies on a scan of ``scan_shape``: ``(origin,
        factor, shape)``, the crop's first position (row, column), the bin factor and the
        binned grid's shape.

        The one rule :meth:`Preprocessor.scan_view` applies: crop, then bin, the trailing rows
        and columns that do not fill a bin dropped. A crop that runs past the scan, or a bin
        that leaves no position, raises ValueError (nothing is clipped silently).
        """
        ry, rx = (int(n) for n in scan_shape)
        sy, sx = _crop_box((ry, rx), self.scan_crop, "scan")
        y0, y1, _ = sy.indices(ry)
        x0, x1, _ = sx.indices(rx)
        f = int(self.scan_bin)
        ny, nx = (y1 - y0) // f, (x1 - x0) // f
        if ny < 1 or nx < 1:
            raise ValueError(f"scan binning by {f} leaves no positions of {(y1 - y0, x1 - x0)}")
        return (y0, x0), f, (ny, nx)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "PreprocessConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessConfig":
        kwargs = checked_fields(cls, data, "preprocessing")
        for name in ("scan_crop", "detector_crop"):
            if kwargs.get(name) is not None:
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)


@dataclass
class PreprocessStats:
    """Statistics fitted on the training data (travel with the model)."""

    lo: float = 0.0
    hi: float = 1.0
    bad_pixels: list[tuple[int, int]] = field(default_factory=list)
    input_detector_shape: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "bad_pixels": [list(p) for p in self.bad_pixels],
                "input_detector_shape": list(self.input_detector_shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessStats":
        return cls(lo=float(data["lo"]), hi=float(data["hi"]),
                   bad_pixels=[(int(a), int(b)) for a, b in data.get("bad_pixels", [])],
                   input_detector_shape=tuple(int(v) for v in data.get("input_detector_shape", (0, 0))))


def _crop_box(shape: tuple[int, int], box: Box | None, what: str) -> tuple[slice, slice]:
    if box is None:
        return slice(None), slice(None)
    y0, y1, x0, x1 = box
    if y1 > shape[0] or x1 > shape[1]:
        raise ValueError(f"{what} crop {box} lies outside the {shape[0]}x{shape[1]} grid")
    return slice(y0, y1), slice(x0, x1)


def _bin_last2(a: np.ndarray, factor: int) -> np.ndarray:
    """Mean-bin the last two axes by ``factor`` (trailing rows/columns that don't fit are dropped)."""
    if factor == 1:
        return a
    h, w = a.shape[-2] // factor * factor, a.shape[-1] // factor * factor
    a = a[..., :h, :w]
    return a.reshape(*a.shape[:-2], h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


def find_bad_pixels(mean_pattern: np.ndarray, n_sigma: float = 8.0) -> list[tuple[int, int]]:
    """Hot or dead pixels: far from the median of their 3x3 neighbourhood in the mean pattern."""
    m = mean_pattern.astype(np.float64)
    local = ndimage.median_filter(m, size=3, mode="nearest")
    resid = m - local
    mad = np.median(np.abs(resid - np.median(resid))) * 1.4826
    scale = max(mad, 1e-6 * max(np.abs(m).max(), 1.0))
    hot = resid > n_sigma * scale + 0.5 * np.abs(local)
    dead = (m <= 0) & (local > n_sigma * scale)
    ys, xs = np.nonzero(hot | dead)
    return [(int(y), int(x)) for y, x in zip(ys, xs)]


class Preprocessor:
    """A fitted preprocessing pipeline: config + statistics."""

    def __init__(self, config: PreprocessConfig | None = None,
                 stats: PreprocessStats | None = None) -> None:
        self.config = config or PreprocessConfig()
        self.stats = stats

    # -- fitting -------------------------------------------------------------------------
    @classmethod
    def fit(cls, dataset: Dataset4D, config: PreprocessConfig | None = None,
            max_patterns: int = 1024, seed: int = 0) -> "Preprocessor":
        """Fit the statistics on up to ``max_patterns`` randomly chosen positions."""
        prep = cls(config)
        view = prep.scan_view(dataset)
        rng = np.random.default_rng(seed)
        n = min(max_patterns, view.n_patterns)
        idx = np.sort(rng.choice(view.n_patterns, size=n, replace=False))
        raw = view.patterns(idx).astype(np.float32)
        if not np.all(np.isfinite(raw)):
            raise ValueError(f"{dataset.name}: the data contains NaN or Inf values")
        bad = find_bad_pixels(raw.mean(axis=0)) if prep.config.mask_bad_pixels else []
        prep.stats = PreprocessStats(lo=0.0, hi=1.0, bad_pixels=bad,
                                     input_detector_shape=view.detector_shape)
        scaled = prep._transform(raw, normalise=False)
        lo = float(scaled.min())
        hi = float(np.percentile(scaled, prep.config.upper_percentile))
        if not hi > lo:
            hi = lo + 1.0  # constant data: map it to 0 rather than divide by zero
        prep.stats.lo, prep.stats.hi = lo, hi
        return prep

    # -- scan side (lazy) ----------------------------------------------------------------
    def scan_view(self, dataset: Dataset4D) -> Dataset4D:
        """The dataset after scan cropping and binning (lazy, the file's dtype kept when unbinned).

        Its grid is :meth:`PreprocessConfig.scan_grid` of the dataset's scan shape.
        """
        cfg = self.config
        (y0, x0), f, (ny, nx) = cfg.scan_grid(dataset.scan_shape)
        data, labels, calib = dataset.data, dataset.labels, dataset.calibration
        if cfg.scan_crop is not None or f > 1:
            window = (slice(y0, y0 + ny * f), slice(x0, x0 + nx * f))
            data = data[window]
            labels = labels[window] if labels is not None else None
        if f > 1:
            data = data.astype(np.float32).reshape(ny, f, nx, f, *data.shape[2:]).mean(axis=(1, 3))
            if labels is not None:
                labels = labels[::f, ::f]
            calib = dataclasses.replace(
                calib, scan_step=(calib.scan_step[0] * f, calib.scan_step[1] * f))
        if data is dataset.data:
            return dataset
        return dataset.with_data(data, labels=labels, calibration=calib)

    # -- detector side (per batch) -------------------------------------------------------
    def output_shape(self, detector_shape: tuple[int, int]) -> tuple[int, int]:
        h, w = detector_shape
        if self.config.detector_crop is not None:
            y0, y1, x0, x1 = self.config.detector_crop
            h, w = y1 - y0, x1 - x0
        f = self.config.detector_bin
        return h // f, w // f

    def output_calibration(self, calibration: Calibration) -> Calibration:
        f = self.config.scan_bin
        g = self.config.detector_bin
        return dataclasses.replace(
            calibration,
            scan_step=(calibration.scan_step[0] * f, calibration.scan_step[1] * f),
            detector_step=(calibration.detector_step[0] * g, calibration.detector_step[1] * g),
        )

    def transform_patterns(self, raw: np.ndarray) -> np.ndarray:
        """(N, Qy, Qx) or (Qy, Qx) raw patterns -> float32 network input in [0, 1]."""
        if self.stats is None:
            raise RuntimeError("the preprocessor is not fitted; call Preprocessor.fit first")
        return self._transform(np.asarray(raw), normalise=self.config.normalise)

    def _transform(self, raw: np.ndarray, normalise: bool) -> np.ndarray:
        cfg, stats = self.config, self.stats
        x = np.array(raw, dtype=np.float32, copy=True)
        single = x.ndim == 2
        if single:
            x = x[None]
        expected = tuple(stats.input_detector_shape) if stats else None
        if expected and expected != (0, 0) and tuple(x.shape[-2:]) != expected:
            raise ValueError(
                f"patterns are {x.shape[-2]}x{x.shape[-1]} but the preprocessing was fitted on "
                f"{expected[0]}x{expected[1]}"
            )
        if stats and stats.bad_pixels:
            x = _fill_bad_pixels(x, stats.bad_pixels)
        sy, sx = _crop_box(x.shape[-2:], cfg.detector_crop, "detector")
        x = x[:, sy, sx]
        if cfg.centre_beam:
            x = _centre_patterns(x)
        x = _bin_last2(x, cfg.detector_bin).astype(np.float32, copy=False)
        np.maximum(x, 0, out=x)
        if cfg.scaling == "log":
            np.log1p(x, out=x)
        elif cfg.scaling == "sqrt":
            np.sqrt(x, out=x)
        if normalise:
            x -= stats.lo
            x /= stats.hi - stats.lo
            np.clip(x, 0.0, 1.0, out=x)
        return x[0] if single else x

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(),
                "stats": self.stats.to_dict() if self.stats is not None else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessor":
        stats = data.get("stats")
        return cls(PreprocessConfig.from_dict(data["config"]),
                   PreprocessStats.from_dict(stats) if stats is not None else None)


def _fill_bad_pixels(x: np.ndarray, bad: list[tuple[int, int]]) -> np.ndarray:
    """Replace bad pixels by the mean of their good 3x3 neighbours."""
    good = np.ones(x.shape[-2:], dtype=np.float32)
    ys, xs = zip(*bad)
    good[list(ys), list(xs)] = 0
    kernel = np.ones((1, 3, 3), dtype=np.float32)
    num = ndimage.convolve(x * good, kernel, mode="nearest")
    den = ndimage.convolve(good[None], kernel, mode="nearest")
    filled = num / np.maximum(den, 1e-6)
    return np.where(good[None] > 0, x, filled).astype(np.float32)


def _centre_patterns(x: np.ndarray) -> np.ndarray:
    """Shift each pattern (integer pixels) so its centre of mass sits at the detector centre."""
    h, w = x.shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w]
    total = x.sum(axis=(-2, -1))
    total = np.where(total > 0, total, 1)
    cy = (x * yy).sum(axis=(-2, -1)) / total
    cx = (x * xx).sum(axis=(-2, -1)) / total
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        dy = int(round((h - 1) / 2 - cy[i]))
        dx = int(round((w - 1) / 2 - cx[i]))
        out[i] = np.roll(x[i], (dy, dx), axis=(0, 1))
    return out


def lazy_transform(dataset: Dataset4D, prep: Preprocessor) -> da.Array:
    """The whole preprocessed scan as a lazy float32 dask array (Ry', Rx', Qy', Qx')."""
    view = prep.scan_view(dataset)
    data = view.data.rechunk({2: -1, 3: -1})
    out_shape = prep.output_shape(view.detector_shape)

    def block(b: np.ndarray) -> np.ndarray:
        flat = b.reshape(-1, *b.shape[-2:])
        return prep.transform_patterns(flat).reshape(*b.shape[:2], *out_shape)

    return data.map_blocks(block, dtype=np.float32, chunks=(*data.chunks[:2], (out_shape[0],), (out_shape[1],)))

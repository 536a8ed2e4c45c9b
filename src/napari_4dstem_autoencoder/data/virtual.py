"""Virtual detectors over a whole scan, chunk by chunk with bounded memory.

Every virtual detector is a weight image over the detector; a block of patterns (n, Qy*Qx)
times the stacked weights (Qy*Qx, k) gives all k virtual images of the block in one matrix
product. :func:`compute_virtual` therefore computes bright field, dark field, centre of mass,
mean and maximum pattern in a single read of the data; the named functions are thin wrappers.

Memory is bounded by the chunk size (whole-pattern chunks of ~64 MiB, see ``data.chunks``) times
the two blocks in flight (one being read while the previous one is reduced), never by the file.
"""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import dask.array as da
import numpy as np
from scipy import ndimage

from ..data.chunks import rechunk_whole_patterns
from ..data.dataset import Dataset4D

Progress = Callable[[int, int], None]
DatasetLike = Any  # Dataset4D, a 4-D dask array or a 4-D numpy array


@dataclass(frozen=True)
class BeamEstimate:
    """Direct-beam disc on the detector, in detector pixels (row, column)."""

    centre: tuple[float, float]
    radius: float


# -- blocks ----------------------------------------------------------------------------------

def _as_dask(dataset: DatasetLike) -> tuple[da.Array, str]:
    if isinstance(dataset, Dataset4D):
        return dataset.data, dataset.name
    data = dataset if isinstance(dataset, da.Array) else da.from_array(np.asarray(dataset))
    if data.ndim != 4:
        raise ValueError(f"expected a 4-D array (Ry, Rx, Qy, Qx), got shape {tuple(data.shape)}")
    if data.chunks[2] != (data.shape[2],) or data.chunks[3] != (data.shape[3],) \
            or not isinstance(dataset, da.Array):
        data = rechunk_whole_patterns(data)  # a dask array already in whole patterns is kept as is
    return data, "array"


def iter_blocks(dataset: DatasetLike, progress: Progress | None = None
                ) -> Iterator[tuple[slice, slice, np.ndarray]]:
    """Yield (row slice, column slice, block) over the scan, one dask chunk at a time.

    The next block is read in a background thread while the caller reduces the current one
    (file reading and decompression mostly release the GIL). ``progress(done, total)`` counts
    patterns.
    """
    data, _ = _as_dask(dataset)
    if data.chunks[2] != (data.shape[2],) or data.chunks[3] != (data.shape[3],):
        data = rechunk_whole_patterns(data)
    ys = np.cumsum((0,) + data.chunks[0])
    xs = np.cumsum((0,) + data.chunks[1])
    keys = [(i, j) for i in range(len(ys) - 1) for j in range(len(xs) - 1)]
    total = int(data.shape[0] * data.shape[1])

    def read(key: tuple[int, int]) -> np.ndarray:
        i, j = key
        return np.asarray(data.blocks[i, j].compute(scheduler="synchronous"))

    done = 0
    if progress is not None:
        progress(0, total)
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, keys[0]) if keys else None
        for n, key in enumerate(keys):
            block = pending.result()
            pending = pool.submit(read, keys[n + 1]) if n + 1 < len(keys) else None
            i, j = key
            yield slice(ys[i], ys[i + 1]), slice(xs[j], xs[j + 1]), block
            done += block.shape[0] * block.shape[1]
            if progress is not None:
                progress(done, total)


# -- the one-pass reduction ------------------------------------------------------------------

def compute_virtual(dataset: DatasetLike, detectors: Mapping[str, np.ndarray] | None = None, *,
                    mean: bool = False, maximum: bool = False,
                    progress: Progress | None = None) -> dict[str, np.ndarray]:
    """Integrate weight images ``detectors`` (name -> (Qy, Qx)) over every pattern, in one pass.

    Returns name -> (Ry, Rx) float64 image, plus ``"mean_pattern"`` (float64) and
    ``"max_pattern"`` (the data's dtype) when asked.
    """
    data, name = _as_dask(dataset)
    ry, rx, qy, qx = (int(s) for s in data.shape)
    detectors = dict(detectors or {})
    for key, w in detectors.items():
        if np.shape(w) != (qy, qx):
            raise ValueError(f"{name}: virtual detector {key!r} has shape {np.shape(w)}, "
                             f"the detector is {qy}x{qx}")
    names = list(detectors)
    weights = (np.stack([np.asarray(detectors[k], np.float32).ravel() for k in names], axis=1)
               if names else None)
    images = np.zeros((ry, rx, len(names)), dtype=np.float64)
    total = np.zeros((qy, qx), dtype=np.float64) if mean else None
    peak = None
    integer = np.issubdtype(data.dtype, np.integer)
    for sy, sx, block in iter_blocks(data, progress):
        flat = block.reshape(-1, qy * qx)
        if weights is not None:
            # float32 product per pattern (exact for counts < 2**24), float64 image
            images[sy, sx] = (flat.astype(np.float32, copy=False) @ weights).reshape(
                block.shape[0], block.shape[1], len(names))
        if total is not None:
            # integer counts sum exactly (and fastest) in uint64/int64
            acc = (np.uint64 if np.issubdtype(data.dtype, np.unsignedinteger) else np.int64) \
                if integer else np.float64
            total += np.add.reduce(flat, axis=0, dtype=acc).reshape(qy, qx)
        if maximum:
            bmax = flat.max(axis=0).reshape(qy, qx)
            peak = bmax if peak is None else np.maximum(peak, bmax)
    out = {k: images[..., n] for n, k in enumerate(names)}
    if total is not None:
        out["mean_pattern"] = total / (ry * rx)
    if maximum:
        out["max_pattern"] = peak
    for key, value in out.items():
        if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.all(np.isfinite(value)):
            raise ValueError(f"{name}: the {key.replace('_', ' ')} is not finite; "
                             "the data contains NaN or Inf values")
    return out


# -- detector geometry -----------------------------------------------------------------------

def _radius_grid(shape: tuple[int, int], centre: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return np.hypot(yy - centre[0], xx - centre[1])


def disk_mask(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """1 inside the disc (pixel centres within ``radius``), 0 outside, float32."""
    return (_radius_grid(shape, centre) <= radius).astype(np.float32)


def annulus_mask(shape: tuple[int, int], centre: tuple[float, float],
                 inner: float, outer: float) -> np.ndarray:
    """1 on the ring inner < r <= outer, float32."""
    if not outer > inner >= 0:
        raise ValueError(f"annular detector needs 0 <= inner < outer, got {inner}, {outer}")
    r = _radius_grid(shape, centre)
    return ((r > inner) & (r <= outer)).astype(np.float32)


def estimate_beam(dataset: DatasetLike, n_sample: int = 256) -> BeamEstimate:
    """Direct-beam centre and radius from the mean of about ``n_sample`` patterns.

    The patterns lie on a regular grid over the scan (a strided slice, which dask passes to the
    file library so only those patterns are read, not their whole chunks). The beam is the
    connected region above half of the (smoothed) maximum that contains the brightest pixel; its
    centre is the intensity-weighted centroid, its radius sqrt(area / pi).
    """
    data, _ = _as_dask(dataset) if not isinstance(dataset, Dataset4D) else (dataset.data, "")
    ry, rx = int(data.shape[0]), int(data.shape[1])
    stride = 1
    while -(-ry // stride) * -(-rx // stride) > n_sample:
        stride += 1
    grid = np.asarray(data[::stride, ::stride].compute())
    mean = grid.reshape(-1, *grid.shape[2:]).astype(np.float64).mean(axis=0)
    return estimate_beam_from_pattern(mean)


def estimate_beam_from_pattern(pattern: np.ndarray) -> BeamEstimate:
    """:func:`estimate_beam` on one (mean) pattern."""
    p = ndimage.gaussian_filter(np.asarray(pattern, dtype=np.float64), 1.0)
    lo, hi = float(p.min()), float(p.max())
    h, w = p.shape
    if not hi > lo:
        return BeamEstimate(((h - 1) / 2, (w - 1) / 2), min(h, w) / 8)
    above = p >= lo + 0.5 * (hi - lo)
    labels, _ = ndimage.label(above)
    region = labels == labels[np.unravel_index(np.argmax(p), p.shape)]
    weights = np.where(region, p - lo, 0.0)
    cy, cx = ndimage.center_of_mass(weights)
    radius = max(1.0, float(np.sqrt(region.sum() / np.pi)))
    return BeamEstimate((float(cy), float(cx)), radius)


def default_adf_radii(beam: BeamEstimate, detector_shape: tuple[int, int]) -> tuple[float, float]:
    """An annular dark-field detector just outside the direct beam, reaching the detector edge."""
    cy, cx = beam.centre
    edge = min(cy, cx, detector_shape[0] - 1 - cy, detector_shape[1] - 1 - cx)
    inner = min(1.5 * beam.radius + 1.0, max(edge - 1.0, 0.0))
    return inner, max(edge, inner + 1.0)


def _geometry(dataset: DatasetLike, centre: tuple[float, float] | None,
              radius: float | None) -> tuple[tuple[int, int], tuple[float, float], float]:
    data, _ = _as_dask(dataset)
    shape = (int(data.shape[2]), int(data.shape[3]))
    if centre is None or radius is None:
        beam = estimate_beam(dataset)
        centre = centre if centre is not None else beam.centre
        radius = radius if radius is not None else beam.radius
    return shape, (float(centre[0]), float(centre[1])), float(radius)


# -- named virtual images --------------------------------------------------------------------

def virtual_bright_field(dataset: DatasetLike, radius: float | None = None,
                         centre: tuple[float, float] | None = None,
                         progress: Progress | None = None) -> np.ndarray:
    """Sum inside the direct-beam disc at every position (Ry, Rx); beam estimated when not given."""
    shape, c, r = _geometry(dataset, centre, radius)
    return compute_virtual(dataset, {"bf": disk_mask(shape, c, r)}, progress=progress)["bf"]


def virtual_annular_dark_field(dataset: DatasetLike, inner: float, outer: float,
                               centre: tuple[float, float] | None = None,
                               progress: Progress | None = None) -> np.ndarray:
    """Sum on the ring inner < r <= outer around ``centre`` (estimated beam centre by default)."""
    shape, c, _ = _geometry(dataset, centre, 1.0 if centre is not None else None)
    return compute_virtual(dataset, {"adf": annulus_mask(shape, c, inner, outer)},
                           progress=progress)["adf"]


def mean_pattern(dataset: DatasetLike, progress: Progress | None = None) -> np.ndarray:
    """Mean diffraction pattern over the scan (float64)."""
    return compute_virtual(dataset, mean=True, progress=progress)["mean_pattern"]


def max_pattern(dataset: DatasetLike, progress: Progress | None = None) -> np.ndarray:
    """Pixel-wise maximum over the scan (the data's dtype)."""
    return compute_virtual(dataset, maximum=True, progress=progress)["max_pattern"]


def centre_of_mass(dataset: DatasetLike, progress: Progress | None = None,
                   mask: np.ndarray | None = None) -> np.ndarray:
    """Centre of mass of every pattern in detector pixels, (Ry, Rx, 2) as (row, column).

    Positions whose (masked) pattern sums to zero get NaN.
    """
    data, _ = _as_dask(dataset)
    qy, qx = int(data.shape[2]), int(data.shape[3])
    yy, xx = np.mgrid[0:qy, 0:qx].astype(np.float32)
    m = np.ones((qy, qx), np.float32) if mask is None else np.asarray(mask, np.float32)
    out = compute_virtual(dataset, {"sum": m, "y": yy * m, "x": xx * m}, progress=progress)
    with np.errstate(invalid="ignore", divide="ignore"):
        com = np.stack([out["y"] / out["sum"], out["x"] / out["sum"]], axis=-1)
    com[out["sum"] == 0] = np.nan
    return com


def navigator_images(dataset: DatasetLike, progress: Progress | None = None,
                     beam: BeamEstimate | None = None) -> dict[str, Any]:
    """Bright field, annular dark field and mean pattern in one pass, with the geometry used."""
    data, _ = _as_dask(dataset)
    shape = (int(data.shape[2]), int(data.shape[3]))
    beam = beam or estimate_beam(dataset)
    inner, outer = default_adf_radii(beam, shape)
    out: dict[str, Any] = compute_virtual(
        dataset, {"bf": disk_mask(shape, beam.centre, beam.radius),
                  "adf": annulus_mask(shape, beam.centre, inner, outer)},
        mean=True, progress=progress)
    out.update(beam=beam, adf_radii=(inner, outer))
    return out

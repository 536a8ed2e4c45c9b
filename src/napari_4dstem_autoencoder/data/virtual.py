"""Virtual detectors over a whole scan, chunk by chunk with bounded memory.

Every virtual detector is a weight image over the detector; a block of patterns (n, Qy*Qx)
times the stacked weights (Qy*Qx, k) gives all k virtual images of the block in one matrix
product. :func:`compute_virtual` therefore computes bright field, dark field, centre of mass,
mean and maximum pattern in a single read of the data; the named functions are thin wrappers.

Reading (:func:`map_blocks`): a dataset read straight from its file (``open_dataset``'s, not
sliced or cast) goes in blocks of :data:`READ_BLOCK_BYTES` (16 MiB) of whole patterns aligned to
the file's storage chunks; two threads each read a block into their own buffer (HDF5 decodes
into it; .npy and .mib blocks are views of the file's pages, mapped for the block only) and
reduce it at once, while it is in the CPU's cache. Any other array goes in its dask chunks
(whole patterns, ~64 MiB, see ``data.chunks``). Memory is bounded by the two blocks in flight,
never by the file.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import dask.array as da
import numpy as np
from scipy import ndimage

from ..data.chunks import DEFAULT_CHUNK_BYTES, rechunk_whole_patterns, scan_chunks
from ..data.dataset import Dataset4D
from ..data.file_array import direct_file_array

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


#: bytes of one block the one-pass reductions read from a file: whole patterns, aligned to the
#: file's storage chunks. Two are in flight (one read while the other is reduced); small enough
#: to stay in the CPU's cache between the read and the reduction, large enough that one call
#: into the file library per block costs nothing.
READ_BLOCK_BYTES = 16 * 2**20
#: float32 bytes reduced per step (the converted patterns a matrix product takes at a time)
STEP_BYTES = 2**20


def _block_plan(data: da.Array, block_bytes: int | None
                ) -> tuple[Any, da.Array, list[tuple[slice, slice]]]:
    """(direct source or None, the array to read, the (row slice, column slice) of every
    block, row-major)."""
    source = direct_file_array(data)
    if source is not None:
        chunks = scan_chunks(tuple(int(s) for s in data.shape), data.dtype.itemsize,
                             source.file_chunk_scan(), block_bytes or READ_BLOCK_BYTES)
        ry, rx = (int(s) for s in data.shape[:2])
        ys = list(range(0, ry, chunks[0])) + [ry]
        xs = list(range(0, rx, chunks[1])) + [rx]
    else:
        if data.chunks[2] != (data.shape[2],) or data.chunks[3] != (data.shape[3],) \
                or block_bytes is not None:
            data = rechunk_whole_patterns(data, block_bytes or DEFAULT_CHUNK_BYTES)
        ys = [int(v) for v in np.cumsum((0,) + data.chunks[0])]
        xs = [int(v) for v in np.cumsum((0,) + data.chunks[1])]
    keys = [(slice(ys[i], ys[i + 1]), slice(xs[j], xs[j + 1]))
            for i in range(len(ys) - 1) for j in range(len(xs) - 1)]
    return source, data, keys


def iter_blocks(dataset: DatasetLike, progress: Progress | None = None, *,
                block_bytes: int | None = None, reuse: bool = False
                ) -> Iterator[tuple[slice, slice, np.ndarray]]:
    """Yield (row slice, column slice, block) over the scan, row-major, each block read once.

    A dataset that reads straight from its file (``open_dataset``'s, not sliced or cast) is read
    in blocks of about ``block_bytes`` (:data:`READ_BLOCK_BYTES`) aligned to the file's storage
    chunks, each decoded straight into its buffer; any other array in its dask chunks (rechunked
    to whole patterns of about ``block_bytes`` when asked). The next block is read in a
    background thread while the caller reduces the current one (file reading, decompression and
    copies release the GIL). ``reuse``: two buffers take turns, so a block is valid only until
    the next one is asked for (memory: two blocks, whatever the file's size); from a
    memory-mapped file (.npy, .mib) each block is then a read-only view of the block's pages,
    mapped until the next one is asked for. Otherwise every block is a new array. Blocks read
    into a buffer come in the machine's byte order (big-endian .mib counts are swapped as they
    are copied), others in the data's dtype. ``progress(done, total)`` counts patterns.
    """
    data, _ = _as_dask(dataset)
    source, data, keys = _block_plan(data, block_bytes)
    total = int(data.shape[0] * data.shape[1])
    detector = tuple(int(s) for s in data.shape[2:])
    if source is not None:
        biggest = max(((k[0].stop - k[0].start) * (k[1].stop - k[1].start) for k in keys),
                      default=0)
        size = biggest * int(np.prod(detector))
        native = np.dtype(data.dtype).newbyteorder("=")
        buffers = [np.empty(size, native), np.empty(size, native)] if reuse else None

    def read(n: int) -> np.ndarray:
        sy, sx = keys[n]
        if source is None:
            return np.asarray(data[sy, sx].compute(scheduler="synchronous"))
        shape = (sy.stop - sy.start, sx.stop - sx.start, *detector)
        if buffers is None:
            out = np.empty(shape, native)
        else:
            out = buffers[n % 2][:int(np.prod(shape))].reshape(shape)
        source.read_into(out, sy, sx)
        return out

    done = 0
    if progress is not None:
        progress(0, total)
    if reuse and source is not None and source.mappable():
        for sy, sx in keys:  # a memory-mapped file: each block a view of its own pages
            with source.mapped(sy, sx) as view:
                if view is None:
                    view = buffers[0][:(sy.stop - sy.start) * (sx.stop - sx.start)
                                      * int(np.prod(detector))].reshape(
                        sy.stop - sy.start, sx.stop - sx.start, *detector)
                    source.read_into(view, sy, sx)
                yield sy, sx, view
                view = None  # let go before the map closes
            done += (sy.stop - sy.start) * (sx.stop - sx.start)
            if progress is not None:
                progress(done, total)
        return
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, 0) if keys else None
        for n, (sy, sx) in enumerate(keys):
            block = pending.result()
            # the other buffer held block n - 1, which the caller has let go by asking for n
            pending = pool.submit(read, n + 1) if n + 1 < len(keys) else None
            yield sy, sx, block
            done += block.shape[0] * block.shape[1]
            if progress is not None:
                progress(done, total)


#: threads of :func:`map_blocks`: each reads a block into its own buffer and reduces it, so
#: reading one block overlaps reducing another (file reads and numpy release the GIL)
WORKERS = 2
#: after this many blocks :func:`map_blocks` checks that its threads run side by side (process
#: CPU time at least ``_SIDE_BY_SIDE`` x wall time) and goes on with one thread when they do not
_PROBE_BLOCKS = 8
_SIDE_BY_SIDE = 1.25


def map_blocks(dataset: DatasetLike, work: Callable[[slice, slice, np.ndarray], Any],
               progress: Progress | None = None, *, block_bytes: int | None = None,
               workers: int | None = None) -> Iterator[Any]:
    """``work(row slice, column slice, block)`` on every block of :func:`iter_blocks`' plan,
    in ``workers`` threads (:data:`WORKERS`); yields the results in block order.

    Each thread reads a block into its own buffer (reused: ``work`` must not keep ``block``)
    and hands it to ``work`` at once, so the block is still in the CPU's cache; a memory-mapped
    file (.npy, .mib) hands over a view of the block's own pages instead (mapped for the call
    only; possibly strided and big-endian). At most ``workers`` blocks are in flight, whatever
    the file's size. With the default ``workers``, a pass whose threads turn out to take turns
    on one core (a busy machine: process CPU time under 1.25 x wall time over the first
    :data:`_PROBE_BLOCKS` blocks) goes on in the caller's thread alone, which costs less CPU
    than threads handing over. ``progress(done, total)`` counts patterns, called from the
    caller's thread in block order.
    """
    data, _ = _as_dask(dataset)
    source, data, keys = _block_plan(data, block_bytes)
    total = int(data.shape[0] * data.shape[1])
    detector = tuple(int(s) for s in data.shape[2:])
    native = np.dtype(data.dtype).newbyteorder("=")
    local = threading.local()

    def task(n: int) -> tuple[Any, int]:
        sy, sx = keys[n]
        count = (sy.stop - sy.start) * (sx.stop - sx.start)
        if source is None:
            block = np.asarray(data[sy, sx].compute(scheduler="synchronous"))
        else:
            with source.mapped(sy, sx) as view:
                if view is not None:  # a memory-mapped file: its pages, not a copy
                    result = work(sy, sx, view)
                    view = None  # let go before the map closes
                    return result, count
            shape = (sy.stop - sy.start, sx.stop - sx.start, *detector)
            size = int(np.prod(shape))
            buf = getattr(local, "buffer", None)
            if buf is None or buf.size < size:
                buf = local.buffer = np.empty(size, native)
            block = buf[:size].reshape(shape)
            source.read_into(block, sy, sx)
        return work(sy, sx, block), count

    done = 0
    if progress is not None:
        progress(0, total)
    width = max(1, int(workers or WORKERS))
    adapt = workers is None and width > 1 and len(keys) > 2 * _PROBE_BLOCKS
    t0, c0 = time.perf_counter(), time.process_time()
    pool = cf.ThreadPoolExecutor(max_workers=width) if width > 1 else None
    pending: collections.deque = collections.deque()
    n = finished = 0
    try:
        while n < len(keys) or pending:
            while pool is not None and n < len(keys) and len(pending) < width:
                pending.append(pool.submit(task, n))
                n += 1
            if pending:
                result, count = pending.popleft().result()
            else:  # one thread: in the caller's, no hand-over at all
                result, count = task(n)
                n += 1
            done += count
            finished += 1
            if adapt and finished == _PROBE_BLOCKS:
                adapt = False
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if cpu < _SIDE_BY_SIDE * wall:
                    # the threads take turns on one core (a busy machine, a CPU quota): one
                    # thread costs less CPU than two switching (caches, the GIL)
                    width = 1
            if width == 1 and pool is not None and not pending:
                pool.shutdown(wait=True)
                pool = None
            if progress is not None:
                progress(done, total)
            yield result
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def _one_blas_thread() -> Any:
    """One BLAS thread for the narrow matrix products below: a multi-threaded OpenBLAS spins on
    products this small (16 patterns x 2 detectors), measured 10-30x slower than one thread on a
    busy 2-core machine, and the other worker has the other core. (Process-wide while a pass
    runs, for the BLAS numpy uses; torch's threads are not touched.)"""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


# -- the one-pass reduction ------------------------------------------------------------------

def compute_virtual(dataset: DatasetLike, detectors: Mapping[str, np.ndarray] | None = None, *,
                    mean: bool = False, maximum: bool = False,
                    progress: Progress | None = None,
                    block_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Integrate weight images ``detectors`` (name -> (Qy, Qx)) over every pattern, in one pass.

    Returns name -> (Ry, Rx) float64 image, plus ``"mean_pattern"`` (float64) and
    ``"max_pattern"`` (the data's dtype) when asked. Each block (:func:`map_blocks`: two
    threads, each reading a block of about ``block_bytes`` and reducing it while it is in the
    CPU's cache) is reduced a few patterns at a time: converted to float32 into a buffer of
    :data:`STEP_BYTES`, times the stacked weights (one matrix product for every detector), and
    summed over patterns (a second one, against ones) for the mean. Per pattern the product is
    float32 (exact for sums < 2**24); the mean of 8- and 16-bit counts is exact (float32 sums of
    at most 256 patterns, accumulated in float64), other types sum in 64 bits as they are.
    """
    data, name = _as_dask(dataset)
    ry, rx, qy, qx = (int(s) for s in data.shape)
    q = qy * qx
    detectors = dict(detectors or {})
    for key, w in detectors.items():
        if np.shape(w) != (qy, qx):
            raise ValueError(f"{name}: virtual detector {key!r} has shape {np.shape(w)}, "
                             f"the detector is {qy}x{qx}")
    names = list(detectors)
    weights = (np.stack([np.asarray(detectors[k], np.float32).ravel() for k in names], axis=1)
               if names else None)
    images = np.zeros((ry, rx, len(names)), dtype=np.float64)
    total = np.zeros(q, dtype=np.float64) if mean else None
    peak = None
    dtype = np.dtype(data.dtype)
    small_counts = dtype.kind in "ui" and dtype.itemsize <= 2
    wide_acc = (np.uint64 if dtype.kind == "u" else np.int64) if dtype.kind in "ui" else np.float64
    step = max(1, min(256, STEP_BYTES // (4 * q)))
    exact_sum = small_counts and mean
    convert = weights is not None or exact_sum
    ones = np.ones(step, np.float32)
    local = threading.local()

    def work(sy: slice, sx: slice, block: np.ndarray) -> tuple[Any, Any]:
        frames = block.reshape(-1, qy, qx)  # a view, also of a strided (.mib) block
        n = frames.shape[0]
        if convert and getattr(local, "x", None) is None:
            local.x, local.part = np.empty((step, q), np.float32), np.empty(q, np.float32)
        got = np.empty((n, len(names)), np.float32) if weights is not None else None
        summed = np.zeros(q, np.float64) if exact_sum else None
        run, in_run = (np.zeros(q, np.float32), 0) if exact_sum else (None, 0)
        for i in range(0, n if convert else 0, step):
            m = min(step, n - i)
            x = local.x[:m]
            np.copyto(x.reshape(m, qy, qx), frames[i:i + m], casting="unsafe")
            if weights is not None:
                np.matmul(x, weights, out=got[i:i + m])
            if exact_sum:
                if in_run + m > 256:  # float32 sums of counts < 2**16 are exact to 256 patterns
                    summed += run
                    run[:] = 0
                    in_run = 0
                np.matmul(ones[:m], x, out=local.part)  # the patterns' sum: one BLAS call
                run += local.part
                in_run += m
        if got is not None:
            images[sy, sx] = got.reshape(block.shape[0], block.shape[1], len(names))
        if exact_sum:
            summed += run
        elif total is not None:
            summed = np.add.reduce(frames, axis=0, dtype=wide_acc).reshape(q)
        return summed, (frames.max(axis=0) if maximum else None)

    with _one_blas_thread():
        for summed, bmax in map_blocks(data, work, progress, block_bytes=block_bytes):
            if total is not None:
                total += summed
            if maximum:
                peak = bmax if peak is None else np.maximum(peak, bmax)
    out = {k: images[..., n] for n, k in enumerate(names)}
    if total is not None:
        out["mean_pattern"] = total.reshape(qy, qx) / (ry * rx)
    if maximum:
        out["max_pattern"] = peak.reshape(qy, qx).astype(dtype, copy=False)
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
    file library so only those patterns are read, not their whole chunks; from an HDF5 file or a
    memory-mapped one, one pattern a read, which HDF5 does far faster than one strided
    selection, and which leaves no mapped pages behind). The beam is the
    connected region above half of the (smoothed) maximum that contains the brightest pixel; its
    centre is the intensity-weighted centroid, its radius sqrt(area / pi).
    """
    data, _ = _as_dask(dataset) if not isinstance(dataset, Dataset4D) else (dataset.data, "")
    ry, rx = int(data.shape[0]), int(data.shape[1])
    stride = 1
    while -(-ry // stride) * -(-rx // stride) > n_sample:
        stride += 1
    source = direct_file_array(data)
    if source is not None and source.point_reads_preferred():
        # one pattern a read (see FileArray.point_reads_preferred)
        total = np.zeros(tuple(int(s) for s in data.shape[2:]), np.float64)
        one = np.empty(total.shape, np.dtype(data.dtype).newbyteorder("="))
        count = 0
        for y in range(0, ry, stride):
            for x in range(0, rx, stride):
                total += source.read_pattern(y, x, one)
                count += 1
        mean = total / count
    else:
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
                     beam: BeamEstimate | None = None, *,
                     block_bytes: int | None = None) -> dict[str, Any]:
    """Bright field, annular dark field and mean pattern in one pass, with the geometry used
    (``block_bytes``: see :func:`compute_virtual`)."""
    data, _ = _as_dask(dataset)
    shape = (int(data.shape[2]), int(data.shape[3]))
    beam = beam or estimate_beam(dataset)
    inner, outer = default_adf_radii(beam, shape)
    out: dict[str, Any] = compute_virtual(
        dataset, {"bf": disk_mask(shape, beam.centre, beam.radius),
                  "adf": annulus_mask(shape, beam.centre, inner, outer)},
        mean=True, progress=progress, block_bytes=block_bytes)
    out.update(beam=beam, adf_radii=(inner, outer))
    return out

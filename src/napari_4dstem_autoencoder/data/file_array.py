"""The array every dataset's dask array reads from: the file's own array, seen as
(Ry, Rx, Qy, Qx), read by exactly the selection asked for, errors naming the file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import dask.array as da
import numpy as np

from .chunks import scan_chunks
from .errors import DatasetError


@dataclass
class Source:
    """A file's array with what the reader knows about it."""

    array: Any                       # h5py/zarr dataset, memmap, numpy, dask, Concat
    label: str = "data"              # named in read errors ("dataset /entry/data")
    dtype: np.dtype | None = None    # after ``convert`` (None: the array's own)
    convert: Callable[[np.ndarray], np.ndarray] | None = None


def as_source(source: Any) -> Source:
    return source if isinstance(source, Source) else Source(plain_source(source))


class Concat:
    """Several (n_i, Qy, Qx) frame stacks read as one (sum n_i, Qy, Qx) stack (Arina files)."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [int(p.shape[0]) for p in parts])
        self.shape = (int(self.starts[-1]), *(int(s) for s in parts[0].shape[1:]))
        self.dtype = np.dtype(parts[0].dtype)
        self.ndim = len(self.shape)
        self.chunks = getattr(parts[0], "chunks", None)

    def locate(self, frame: int) -> tuple[Any, int]:
        i = int(np.searchsorted(self.starts, frame, side="right") - 1)
        return self.parts[i], frame - int(self.starts[i])

    def __getitem__(self, key: tuple) -> np.ndarray:
        sel, rest = key[0], tuple(key[1:])
        if isinstance(sel, (int, np.integer)):
            part, local = self.locate(int(sel))
            return np.asarray(part[(local, *rest)])
        start, stop, step = sel.indices(self.shape[0])
        out = []
        for i, part in enumerate(self.parts):
            lo, hi = int(self.starts[i]), int(self.starts[i + 1])
            first = start if start >= lo else start + -(-(lo - start) // step) * step
            if first >= min(stop, hi):
                continue
            out.append(np.asarray(part[(slice(first - lo, min(stop, hi) - lo, step), *rest)]))
        if not out:
            return np.asarray(self.parts[0][(slice(0, 0), *rest)])
        return np.concatenate(out, axis=0) if len(out) > 1 else out[0]


def _read(array: Any, key: tuple) -> np.ndarray:
    """``array[key]`` as numpy, for any source (a dask source computes synchronously)."""
    out = array[key]
    if isinstance(out, da.Array):
        out = out.compute(scheduler="synchronous")
    return np.asarray(out)


class FileArray:
    """(Ry, Rx, Qy, Qx) view of a file's array that dask reads from (see the module docstring).

    ``mode``: ``"grid"`` (the file's array is 4-D on this scan grid), ``"stack"`` (a 3-D frame
    stack laid out row-major on the scan), ``"regrid"`` (a 4-D array on another grid of the
    same number of positions). ``lead`` indexes leading axes away (5-D depth).
    """

    def __init__(self, path: Path, source: Source, scan: tuple[int, int], mode: str,
                 lead: tuple[int, ...] = ()) -> None:
        self.path, self.source, self.mode, self.lead = path, source, mode, lead
        self.base = source.array
        base_shape = tuple(int(s) for s in self.base.shape)[len(lead):]
        self.base_shape = base_shape
        self.shape = (int(scan[0]), int(scan[1]), *base_shape[-2:])
        self.ndim = 4
        self.dtype = np.dtype(source.dtype if source.dtype is not None else self.base.dtype)
        self.convert = source.convert

    # -- reading -------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return self._getitem(key)
        except (DatasetError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise DatasetError(self.path, (
                f"reading {self.source.label} at scan {self._where(key)} failed: "
                f"{type(exc).__name__}: {exc} (the file is corrupt or truncated there)")) from exc

    def _where(self, key: Any) -> str:
        key = key if isinstance(key, tuple) else (key,)
        parts = []
        for k, n in zip(key[:2], self.shape[:2]):
            if isinstance(k, slice):
                a, b, s = k.indices(n)
                parts.append(f"{a}:{b}" + (f":{s}" if s != 1 else ""))
            else:
                parts.append(str(k))
        return "[" + ", ".join(parts) + "]"

    def _getitem(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (4 - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (4 - len(key))
        if len(key) != 4:
            raise IndexError(f"too many indices for a 4-D scan: {key!r}")
        if not all(isinstance(k, (slice, int, np.integer)) for k in key):
            return self._fancy(key)
        ky, kx, kq1, kq2 = (int(k) if isinstance(k, np.integer) else k for k in key)
        for k, n in ((ky, self.shape[0]), (kx, self.shape[1])):
            if isinstance(k, int) and not -n <= k < n:
                raise IndexError(f"index {k} is out of bounds for a scan axis of size {n}")
        # file libraries take positive steps only: read forwards, flip afterwards
        (sy, fy), (sx, fx) = _forward(ky, self.shape[0]), _forward(kx, self.shape[1])
        (sq1, fq1), (sq2, fq2) = ((_forward(k, n) if isinstance(k, slice) else (k, False))
                                  for k, n in zip((kq1, kq2), self.shape[2:]))
        ny, nx = len(range(*sy.indices(self.shape[0]))), len(range(*sx.indices(self.shape[1])))
        if ny == 0 or nx == 0:
            q = np.empty(self.shape[2:], dtype=self.dtype)[sq1, sq2]
            out = np.empty((ny, nx, *q.shape), dtype=self.dtype)
        elif self.mode == "grid":
            out = _read(self.base, (*self.lead, sy, sx, sq1, sq2))
        else:
            out = self._read_stack(sy, sx, sq1, sq2)
        if self.convert is not None and out.size:
            out = self.convert(out)
        out = out.astype(self.dtype, copy=False)
        flips = [fy, fx] + [f for f, k in ((fq1, sq1), (fq2, sq2)) if isinstance(k, slice)]
        if any(flips):
            out = out[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
        if isinstance(ky, int) or isinstance(kx, int):
            out = out[(0 if isinstance(ky, int) else slice(None), 0 if isinstance(kx, int) else slice(None))]
        return out

    def _fancy(self, key: tuple) -> np.ndarray:
        """Integer-array or boolean indices: read their bounding box, then index it."""
        box, rest = [], []
        for k, n in zip(key, self.shape):
            if isinstance(k, (slice, int, np.integer)):
                s, _ = _forward(int(k) if isinstance(k, np.integer) else k, n) \
                    if not isinstance(k, slice) else (k, False)
                box.append(k if isinstance(k, slice) else s)
                rest.append(slice(None) if isinstance(k, slice) else 0)
                continue
            k = np.asarray(k)
            if k.dtype == bool:
                k = np.nonzero(k)[0]
            k = np.where(k < 0, k + n, k).astype(np.int64)
            lo, hi = (int(k.min()), int(k.max()) + 1) if k.size else (0, 0)
            box.append(slice(lo, hi, 1))
            rest.append(k - lo)
        return self._getitem(tuple(box))[tuple(rest)]

    def _read_stack(self, sy: slice, sx: slice, kq1: Any, kq2: Any) -> np.ndarray:
        ry, rx = self.shape[:2]
        y0, y1, ys = sy.indices(ry)
        x0, x1, xs = sx.indices(rx)
        if (x0, x1, xs) == (0, rx, 1) and ys == 1:  # whole rows: one contiguous run of frames
            frames = self._frames(y0 * rx, y1 * rx, 1, kq1, kq2)
            return frames.reshape(y1 - y0, rx, *frames.shape[1:])
        rows = [self._frames(r * rx + x0, r * rx + x1, xs, kq1, kq2) for r in range(y0, y1, ys)]
        return np.stack(rows, axis=0)

    def _frames(self, start: int, stop: int, step: int, kq1: Any, kq2: Any) -> np.ndarray:
        """Frames start:stop:step of the file, counted row-major over its positions."""
        if self.mode == "stack":
            return _read(self.base, (*self.lead, slice(start, stop, step), kq1, kq2))
        cols = self.base_shape[1]  # "regrid": a 4-D array on another grid
        frames = np.arange(start, stop, step)
        out = []
        for row in np.unique(frames // cols):
            sel = frames[frames // cols == row] % cols
            out.append(_read(self.base, (*self.lead, int(row),
                                         slice(int(sel[0]), int(sel[-1]) + 1, step), kq1, kq2)))
        return np.concatenate(out, axis=0)

    # -- what the file knows without reading data --------------------------------------------
    def _storage_chunks(self) -> tuple[int, ...] | None:
        chunks = getattr(self.base, "chunks", None)
        if isinstance(self.base, da.Array) or chunks is None:
            return None
        try:
            return tuple(int(c) for c in chunks)[len(self.lead):]
        except (TypeError, ValueError):
            return None

    def file_chunk_scan(self) -> tuple[int, int]:
        """Scan positions (rows, columns) one storage chunk spans; (1, 1) when unchunked."""
        chunks = self._storage_chunks()
        if not chunks:
            return (1, 1)
        if self.mode == "stack":
            k, rx = chunks[0], self.shape[1]
            return (1, k) if k <= rx else (-(-k // rx), rx)
        return (min(chunks[0], self.shape[0]), min(chunks[1], self.shape[1]))

    def _h5_parts(self) -> list[Any] | None:
        import h5py

        parts = self.base.parts if isinstance(self.base, Concat) else [self.base]
        return parts if all(isinstance(p, h5py.Dataset) for p in parts) else None

    def written(self, flat: np.ndarray) -> np.ndarray | None:
        """For flat scan indices, whether the file ever wrote their storage (None: unknown)."""
        if self._h5_parts() is None:
            return None
        from .hdf5 import chunk_written

        out = np.empty(len(flat), dtype=bool)
        rx = self.shape[1]
        for n, f in enumerate(int(v) for v in flat):
            if self.mode == "grid":
                target, coord = self.base, (*self.lead, f // rx, f % rx, 0, 0)
            elif self.mode == "regrid":
                cols = self.base_shape[1]
                target, coord = self.base, (*self.lead, f // cols, f % cols, 0, 0)
            elif isinstance(self.base, Concat):
                target, local = self.base.locate(f)
                coord = (local, 0, 0)
            else:
                target, coord = self.base, (*self.lead, f, 0, 0)
            got = chunk_written(target, coord)
            if got is None:
                return None
            out[n] = got
        return out

    def stored_bytes(self) -> int | None:
        parts = self._h5_parts()
        if parts is None:
            return None
        from .hdf5 import stored_bytes

        sizes = [stored_bytes(p) for p in parts]
        return None if any(s is None for s in sizes) else int(sum(sizes))

    def fill_value(self) -> Any:
        parts = self._h5_parts()
        if parts is None:
            return None
        from .hdf5 import fill_value

        return fill_value(parts[0])


def _forward(k: int | slice, n: int) -> tuple[slice, bool]:
    """A positive-step slice selecting what ``k`` selects, and whether to reverse the result."""
    if not isinstance(k, slice):
        k = k + n if k < 0 else k
        return slice(k, k + 1, 1), False
    r = range(*k.indices(n))
    if r.step > 0:
        return slice(r.start, r.stop, r.step), False
    if not len(r):
        return slice(0, 0, 1), False
    return slice(r[-1], r[0] + 1, -r.step), True


def dask_chunks(array: FileArray) -> tuple[int, ...]:
    return scan_chunks(array.shape, array.dtype.itemsize, array.file_chunk_scan())


def dask_name(path: Path, array: FileArray, meta: dict[str, Any]) -> str:
    from dask.base import tokenize

    st = os.stat(path)
    token = tokenize(str(path.resolve()), st.st_size, st.st_mtime_ns, array.source.label,
                     array.mode, array.lead, array.shape, str(array.dtype),
                     meta.get("complex_data", ""))
    return f"stem4d-{meta.get('format', 'file')}-{token}"


def plain_source(data: Any) -> Any:
    """The file's own array behind a plain ``da.from_array`` (h5py, zarr, memmap), else ``data``.

    Reading the file's array directly lets a pattern read reach the file library as one
    selection (and lets HDF5's chunk index say what was never written). Anything more than a
    bare from_array (a transpose, a stack, rosettasciio's memory-map tasks) is kept as it is.
    """
    if not isinstance(data, da.Array):
        return data
    graph = data.__dask_graph__()
    layers = getattr(graph, "layers", None)
    if layers is None or len(layers) > 2:
        return data
    if not all(str(name).startswith(("array-", "original-")) for name in layers):
        return data
    found = [v for v in dict(graph).values()
             if hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, da.Array)
             and not type(v).__module__.startswith("dask")
             and tuple(v.shape) == tuple(data.shape) and np.dtype(v.dtype) == data.dtype]
    unique = {id(v): v for v in found}
    return next(iter(unique.values())) if len(unique) == 1 else data

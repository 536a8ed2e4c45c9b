"""The array every dataset's dask array reads from: the file's own array, seen as
(Ry, Rx, Qy, Qx), read by exactly the selection asked for, errors naming the file."""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

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
            raise self._read_error(key, exc) from exc

    def _read_error(self, key: Any, exc: Exception) -> DatasetError:
        """A read that failed, named by file, array and scan positions."""
        return DatasetError(self.path, (
            f"reading {self.source.label} at scan {self._where(key)} failed: "
            f"{type(exc).__name__}: {exc} (the file is corrupt or truncated there)"))

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

    # -- block reads into a buffer (the one-pass reductions) ----------------------------------
    def read_into(self, out: np.ndarray, sy: slice, sx: slice) -> None:
        """Read the whole patterns at scan rows ``sy`` x columns ``sx`` (forward, unit steps)
        into ``out``, a C-contiguous (ny, nx, Qy, Qx) array of this array's dtype (or that dtype
        in the machine's byte order: big-endian .mib counts are swapped on the way).

        Nothing of the block's size is allocated where the file's array allows: an h5py dataset
        decodes straight into ``out`` (through a handle without HDF5's chunk cache, since the
        one-pass readers ask for whole, aligned storage chunks, which the cache would only copy
        once more); a memory map (.npy) is copied, and a contiguous run of it is read with one
        ``pread``. Anything else (a dask source, a converted dtype) reads ``self[sy, sx]``.
        """
        try:
            self._read_into(out, sy, sx)
        except (DatasetError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise self._read_error((sy, sx), exc) from exc

    def _read_into(self, out: np.ndarray, sy: slice, sx: slice) -> None:
        ry, rx = self.shape[:2]
        (y0, y1, _), (x0, x1, _) = sy.indices(ry), sx.indices(rx)
        plain = (self.convert is None and np.dtype(self.base.dtype) == self.dtype
                 and out.flags.c_contiguous and _native(out.dtype) == _native(self.dtype)
                 and out.shape == (y1 - y0, x1 - x0, *self.shape[2:]))
        frame = self._mib_frames() if plain else None
        if frame is not None:
            self._read_mib(out, y0, y1, x0, x1, frame)
            return
        if plain and self.mode == "grid":
            sel, dest = (*self.lead, slice(y0, y1), slice(x0, x1)), out
        elif plain and self.mode == "stack" and (x0, x1) == (0, rx):
            sel, dest = (*self.lead, slice(y0 * rx, y1 * rx)), out.reshape(-1, *self.shape[2:])
        else:
            out[...] = self._getitem((sy, sx))
            return
        base = self.base
        if _is_h5(base):
            if not (self.mode == "grid" and not self.lead and self._h5_pread(out, y0, y1, x0, x1)):
                self._uncached(base).read_direct(dest, sel)
        elif isinstance(base, np.memmap) and not self._pread(base, sel, dest):
            np.copyto(dest, base[sel])
        elif isinstance(base, np.ndarray) and not isinstance(base, np.memmap):
            np.copyto(dest, base[sel])
        elif not isinstance(base, np.ndarray):
            out[...] = self._getitem((sy, sx))

    @contextlib.contextmanager
    def mapped(self, sy: slice, sx: slice) -> Iterator[np.ndarray | None]:
        """The whole patterns at [sy, sx] as a read-only view of the file's pages, or None.

        For the files the readers already memory-map (.npy, Merlin .mib): only the block's byte
        range is mapped, and unmapped on leaving, so what the block touched leaves this
        process's memory with it; nothing is copied (a .mib block is a strided view, frame
        headers skipped and rows flipped as rosettasciio presents them, in big-endian order).
        None where the block is not one run of the file (part rows of a .mib, a strided
        .npy) or the file is read otherwise: use :meth:`read_into` then.
        """
        run = self._file_run(sy, sx)
        if run is None:
            yield None
            return
        path, offset, count, dtype, shape = run
        start = offset // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
        with open(path, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), offset - start + count * dtype.itemsize,
                           access=mmap.ACCESS_READ, offset=start)
        try:
            view = np.frombuffer(mm, dtype, count=count, offset=offset - start)
            if dtype.names:  # .mib frames: the counts, rows flipped
                view = view["data"][:, ::-1, :]
            block = view.reshape(shape)
            yield block
        finally:
            block = view = None
            try:
                mm.close()
            except BufferError:  # the caller kept a view: the map closes with it
                pass

    def mappable(self) -> bool:
        """Whether :meth:`mapped` gives views of this file (whole-row blocks at least)."""
        return self._file_run(slice(0, 1), slice(0, self.shape[1])) is not None

    def _file_run(self, sy: slice, sx: slice) -> tuple[Any, int, int, np.dtype, tuple] | None:
        """(file, byte offset, items, item dtype, block shape) when positions [sy, sx] are one
        run of a memory-mappable file, else None."""
        ry, rx = self.shape[:2]
        (y0, y1, ys), (x0, x1, xs) = sy.indices(ry), sx.indices(rx)
        if ys != 1 or xs != 1 or y1 <= y0 or x1 <= x0 or self.convert is not None:
            return None
        shape = (y1 - y0, x1 - x0, *self.shape[2:])
        frame = self._mib_frames() if isinstance(self.base, da.Array) else None
        if frame is not None:
            if (x0, x1) != (0, rx) and y1 - y0 > 1:
                return None
            first = y0 * rx + x0
            return self.path, first * frame.itemsize, (y1 - y0) * (x1 - x0), frame, shape
        mm = self.base
        if not isinstance(mm, np.memmap) or not isinstance(mm.base, mmap.mmap) \
                or not mm.flags.c_contiguous or np.dtype(mm.dtype) != self.dtype \
                or getattr(mm, "filename", None) is None:
            return None
        if self.mode not in ("grid", "stack") or self.lead \
                or ((x0, x1) != (0, rx) and y1 - y0 > 1):
            return None  # grid and stack files hold position (y, x) as frame y * rx + x
        first = y0 * rx + x0
        per = int(np.prod(self.shape[2:]))
        return (mm.filename, int(mm.offset) + first * per * mm.itemsize,
                (y1 - y0) * (x1 - x0) * per, np.dtype(mm.dtype), shape)

    def point_reads_preferred(self) -> bool:
        """Whether a scattered or strided set of patterns reads faster (or with less memory) one
        pattern a read, with :meth:`read_pattern`, than as one selection: HDF5 walks a strided
        hyperslab slowly, chunk by chunk; a strided slice of a memory map leaves every page it
        touched mapped into this process (its resident memory), a read into a buffer does not."""
        if self.convert is not None or self.lead:
            return False
        if _is_h5(self.base):
            return self.mode == "grid"
        return self._file_run(slice(0, 1), slice(0, 1)) is not None

    def read_pattern(self, y: int, x: int, out: np.ndarray | None = None) -> np.ndarray:
        """The pattern at scan position (y, x), into ``out`` ((Qy, Qx), this dtype in the
        machine's byte order) when given: HDF5 through its chunk cache (neighbouring reads
        share chunks), memory-mapped files with one ``pread`` of the pattern."""
        if out is None:
            out = np.empty(self.shape[2:], _native(self.dtype))
        if _is_h5(self.base):
            out[...] = self[y, x]
        else:
            self.read_into(out.reshape(1, 1, *out.shape), slice(y, y + 1), slice(x, x + 1))
        return out

    def _mib_frames(self) -> np.dtype | None:
        """A Merlin .mib read by rosettasciio (a dask source): the frame record to read its
        frames straight from the file with, or None. Checked once against rosettasciio's own
        read of the first and the last pattern, so a layout it reads otherwise (a quad
        detector, an unusual header) keeps the dask path."""
        cached = getattr(self, "_mib", False)
        if cached is not False:
            return cached
        frame = None
        if self.path.suffix.lower() == ".mib" and isinstance(self.base, da.Array) \
                and not self.lead and self.convert is None:
            try:
                from .mib import mib_frame_dtype

                frame = mib_frame_dtype(self.path)
                ry, rx = self.shape[:2]
                if frame is None or frame["data"].shape != tuple(self.shape[2:]) \
                        or _native(frame["data"].base) != _native(self.dtype) \
                        or os.path.getsize(self.path) < ry * rx * frame.itemsize:
                    frame = None
                for y, x in (((0, 0), (ry - 1, rx - 1)) if frame is not None else ()):
                    mine = np.empty((1, 1, *self.shape[2:]), _native(self.dtype))
                    self._read_mib(mine, y, y + 1, x, x + 1, frame)
                    if not np.array_equal(mine[0, 0], self._getitem((y, x))):
                        frame = None
                        break
            except Exception:  # anything odd: the dask path, which reports errors properly
                frame = None
        self._mib = frame  # set once, checked: threads that race here agree
        return frame

    def _read_mib(self, out: np.ndarray, y0: int, y1: int, x0: int, x1: int,
                  frame: np.dtype) -> None:
        """Frames of positions [y0:y1, x0:x1] (row-major frame order) into ``out``: one
        ``pread`` per run of frames into a per-thread buffer, then the rows flipped, as
        rosettasciio presents them."""
        rx = self.shape[1]
        runs = ([(y0 * rx, y1 * rx)] if (x0, x1) == (0, rx)
                else [(y * rx + x0, y * rx + x1) for y in range(y0, y1)])
        dest = out.reshape(-1, *self.shape[2:])
        local = _SCRATCH.__dict__
        with open(self.path, "rb", buffering=0) as fh:
            done = 0
            for a, b in runs:
                nbytes = (b - a) * frame.itemsize
                buf = local.get("mib")
                if buf is None or buf.size < nbytes:
                    buf = local["mib"] = np.empty(nbytes, np.uint8)
                view = memoryview(buf[:nbytes])
                got = 0
                while got < nbytes:
                    n = os.preadv(fh.fileno(), [view[got:]], a * frame.itemsize + got)
                    if n <= 0:
                        raise OSError(f"the file ends before frame {a + got // frame.itemsize}")
                    got += n
                frames = buf[:nbytes].view(frame)["data"]
                np.copyto(dest[done:done + b - a], frames[:, ::-1, :], casting="unsafe")
                done += b - a

    def _h5_layout(self) -> tuple[str, Any] | None:
        """("contiguous", byte offset) or ("chunked", chunk shape) when the dataset's bytes can
        be read from its file as they are (no filters, the machine's byte order, every chunk a
        whole-pattern box), else None. h5py keeps the GIL while HDF5 reads, so two threads
        reading an HDF5 file take turns; a ``pread`` of the same bytes lets them overlap."""
        cached = getattr(self, "_h5raw", False)
        if cached is not False:
            return cached
        layout = None
        try:
            import h5py

            ds = self.base
            dcpl = ds.id.get_create_plist()
            kind = dcpl.get_layout()
            native = np.dtype(ds.dtype).isnative and np.dtype(ds.dtype) == self.dtype
            if native and dcpl.get_nfilters() == 0 and dcpl.get_external_count() == 0:
                if kind == h5py.h5d.CONTIGUOUS and ds.id.get_offset() is not None:
                    layout = ("contiguous", int(ds.id.get_offset()))
                elif kind == h5py.h5d.CHUNKED and tuple(ds.chunks[2:]) == tuple(ds.shape[2:]):
                    layout = ("chunked", tuple(int(c) for c in ds.chunks))
        except Exception:  # an old HDF5 without these queries, a virtual dataset...
            layout = None
        self._h5raw = layout
        return layout

    def _h5_pread(self, out: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> bool:
        """Read positions [y0:y1, x0:x1] of a raw HDF5 dataset (see :meth:`_h5_layout`) into
        ``out`` with ``pread``: one per block of a contiguous dataset, one per storage chunk of
        a chunked one when each chunk is a run of ``out`` (chunks of one scan row, or of whole
        rows). False (nothing read) when the layout or a chunk does not allow it."""
        layout = self._h5_layout()
        if layout is None:
            return False
        ry, rx = self.shape[:2]
        pattern = int(np.prod(self.shape[2:])) * out.itemsize
        view = memoryview(out.reshape(-1).view(np.uint8))
        runs = []  # (file offset, out offset, bytes)
        if layout[0] == "contiguous":
            if (x0, x1) != (0, rx) and y1 - y0 > 1:
                return False
            runs.append((layout[1] + (y0 * rx + x0) * pattern, 0, view.nbytes))
        else:
            cy, cx = layout[1][:2]
            whole_rows = (x0, x1) == (0, rx) and cx >= rx
            if not (cy == 1 or whole_rows) or y0 % cy or x0 % cx \
                    or (y1 % cy and y1 != ry) or (x1 % cx and x1 != rx):
                return False
            width = x1 - x0
            offsets, sizes = self._h5_chunk_index(cy, cx)
            for y in range(y0, y1, cy):
                for x in range(x0, x1, cx):
                    at, size = int(offsets[y // cy, x // cx]), int(sizes[y // cy, x // cx])
                    if at < 0:
                        return False  # never written: HDF5 supplies the fill value
                    rows, cols = min(cy, y1 - y), min(cx, x1 - x)
                    if rows * cols * pattern > size:
                        return False
                    runs.append((at, ((y - y0) * width + (x - x0)) * pattern,
                                 rows * cols * pattern))
        fd = os.open(self.base.file.filename, os.O_RDONLY)
        try:
            for at, where, nbytes in runs:
                got = 0
                while got < nbytes:
                    n = os.preadv(fd, [view[where + got:where + nbytes]], at + got)
                    if n <= 0:
                        raise OSError(f"the file ends {nbytes - got} bytes early")
                    got += n
        finally:
            os.close(fd)
        return True

    def _h5_chunk_index(self, cy: int, cx: int) -> tuple[np.ndarray, np.ndarray]:
        """File offset and stored size of every storage chunk, by chunk (row, column); offset -1
        where a chunk was never written. Built once, from one walk of HDF5's chunk index
        (about 10x faster than asking for every chunk by its coordinates)."""
        index = getattr(self, "_h5index", None)
        if index is None:
            ds = self.base
            grid = (-(-self.shape[0] // cy), -(-self.shape[1] // cx))
            offsets = np.full(grid, -1, np.int64)
            sizes = np.zeros(grid, np.int64)

            def visit(info: Any) -> None:
                y, x = info.chunk_offset[0] // cy, info.chunk_offset[1] // cx
                if info.byte_offset is not None and y < grid[0] and x < grid[1]:
                    offsets[y, x], sizes[y, x] = info.byte_offset, info.size

            try:
                ds.id.chunk_iter(visit)
            except (AttributeError, NotImplementedError, RuntimeError):  # HDF5 < 1.12.3
                for y in range(grid[0]):
                    for x in range(grid[1]):
                        info = ds.id.get_chunk_info_by_coord((y * cy, x * cx, 0, 0))
                        if info.byte_offset is not None:
                            offsets[y, x], sizes[y, x] = info.byte_offset, info.size
            index = self._h5index = (offsets, sizes)
        return index

    def _uncached(self, ds: Any) -> Any:
        """The h5py dataset opened again without a chunk cache (``ds`` when that fails)."""
        cached = getattr(self, "_direct", None)
        if cached is None:
            import h5py

            cached = ds
            try:
                dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
                dapl.set_chunk_cache(0, 0, 1.0)
                cached = h5py.Dataset(h5py.h5d.open(ds.file.id, ds.name.encode(), dapl=dapl))
            except Exception:  # an odd layout or an external link: the dataset as it is
                cached = ds
            self._direct = cached
        return cached

    @staticmethod
    def _pread(mm: np.memmap, sel: tuple, dest: np.ndarray) -> bool:
        """Read a C-ordered memory map's selection with one ``pread`` when it is one contiguous
        run of the file (whole trailing axes); False when it is not (the caller copies)."""
        name = getattr(mm, "filename", None)
        if name is None or not mm.flags.c_contiguous or not isinstance(mm.base, mmap.mmap):
            return False  # not the file's own map (a view's ``offset`` would be its parent's)
        sel = tuple(sel) + (slice(None),) * (mm.ndim - len(sel))
        runs = []  # (first index, count, axis length)
        for k, n in zip(sel, mm.shape):
            if isinstance(k, slice):
                a, b, step = k.indices(n)
                if step != 1:
                    return False
                runs.append((a, max(b - a, 0), n))
            else:
                runs.append((int(k), 1, n))
        wide = next((i for i, (_, count, _) in enumerate(runs) if count != 1), len(runs))
        if any(count != n for _, count, n in runs[wide + 1:]):
            return False  # not one contiguous run of the file
        first = int(np.ravel_multi_index([a for a, _, _ in runs], mm.shape))
        offset = int(mm.offset) + first * mm.itemsize
        if dest.dtype != mm.dtype:
            return False  # a byte-order change: numpy's copy converts
        view = memoryview(dest).cast("B")
        with open(name, "rb", buffering=0) as fh:
            done = 0
            while done < view.nbytes:
                got = os.preadv(fh.fileno(), [view[done:]], offset + done)
                if got <= 0:
                    raise OSError(f"the file ends {view.nbytes - done} bytes early")
                done += got
        return True

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


#: per-thread scratch of the direct .mib reads (a block's frames with their headers)
_SCRATCH = threading.local()


def _native(dtype: np.dtype) -> np.dtype:
    """``dtype`` in the machine's byte order."""
    return np.dtype(dtype).newbyteorder("=")


def _is_h5(array: Any) -> bool:
    try:
        import h5py
    except ImportError:  # pragma: no cover
        return False
    return isinstance(array, h5py.Dataset)


def direct_file_array(data: Any) -> FileArray | None:
    """The :class:`FileArray` a dask array reads from when it is that array as it is (a plain
    ``from_array``, not sliced, cast or rechunked by anything else), else None."""
    if not isinstance(data, da.Array):
        return None
    layers = getattr(data.__dask_graph__(), "layers", None)
    key = "original-" + str(data.name)
    if layers is None or len(layers) != 2 or key not in layers or data.name not in layers:
        return None
    try:
        array = layers[key][key]
    except (KeyError, TypeError):
        return None
    if not isinstance(array, FileArray) or tuple(array.shape) != tuple(data.shape) \
            or array.dtype != data.dtype:
        return None
    return array


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

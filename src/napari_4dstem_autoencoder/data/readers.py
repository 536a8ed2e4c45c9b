"""``open_dataset``: any supported 4D-STEM file -> a lazy :class:`Dataset4D`.

Vendor formats go through rosettasciio (``lazy=True``), HDF5 through h5py (+ hdf5plugin),
``.npy`` through a read-only memory map. Whatever the format, the result has axes
(Ry, Rx, Qy, Qx), the file's dtype, and chunks holding whole patterns.

Axis rules (documented in docs/data.md):
- Arrays keep their stored order: the first scan axis is the row axis (Ry). py4DSTEM and
  Prismatic call their first axes "Rx, Qx", but it is the slow, displayed-as-rows axis in
  those tools too, so their files load without transposition.
- A 3-D stack (N, Qy, Qx) needs a scan shape: ``scan_shape=``, else one recorded in the file
  (h5ebsd header, a ``scan_shape`` attribute, a .mib acquisition), else a square N (with a
  warning); otherwise a clear error.
- A 5-D array (extra leading axis, e.g. Prismatic's CBED depth) is reduced by
  ``depth_index`` (default 0) with a warning naming the axis.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import dask.array as da
import numpy as np

from .chunks import rechunk_whole_patterns, scan_chunks
from .dataset import Calibration, Dataset4D
from .errors import DatasetError

#: suffix -> format name (the value of ``metadata["format"]``)
SUFFIX_FORMATS: dict[str, str] = {
    ".mib": "quantumdetector", ".hdr": "quantumdetector",
    ".blo": "blockfile",
    ".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph",
    ".emd": "emd",
    ".xml": "empad", ".raw": "empad",
    ".hspy": "hspy", ".zspy": "zspy",
    ".tvips": "tvips",
    ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".nxs": "hdf5",
    ".npy": "npy",
}

#: budget for checking every value for NaN/Inf when opening float data; beyond it a sample
FINITE_CHECK_BYTES = 64 * 2**20

_ARINA_DATA = re.compile(r"^(?P<stem>.+)_data_\d{6}\.h5$")


def open_dataset(path: str | os.PathLike[str], *, scan_shape: tuple[int, int] | None = None,
                 dataset: str | int | None = None, depth_index: int = 0,
                 check_finite: bool = True, **options: Any) -> Dataset4D:
    """Open a 4D-STEM file lazily.

    Parameters
    ----------
    path
        The file. Companion files open their dataset: a Merlin ``.hdr`` opens its ``.mib``, an
        EMPAD ``.raw`` its ``.xml``, an Arina ``*_data_000001.h5`` its ``*_master.h5``.
    scan_shape
        (Ry, Rx) for files that store a flat stack of patterns (or to override the file's).
    dataset
        Which array when several qualify: the HDF5 internal path, or the signal title or index
        for vendor files holding several signals. The ambiguity error lists the choices.
    depth_index
        Index along the extra leading axis of 5-D data.
    check_finite
        For float data, check for NaN/Inf (every value up to 64 MiB, else a sample of patterns).
    options
        Passed to the rosettasciio reader (e.g. ``chunks=``).
    """
    path = _check_path(Path(path))
    path = primary_file(path)
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DatasetError(path, f"not a 4D-STEM file: the file type {path.suffix or '(none)'!r} is "
                                 f"not one of {', '.join(sorted(set(SUFFIX_FORMATS)))}")
    closers: list[Callable[[], None]] = []
    try:
        data, calib, meta, recorded_scan = _READERS[fmt](path, dataset, closers, options)
        data = _to_4d(path, data, scan_shape, recorded_scan, depth_index, meta)
        if 0 in data.shape:
            raise DatasetError(path, f"the dataset is empty (shape {tuple(data.shape)})")
        data = rechunk_whole_patterns(data)
        ds = Dataset4D(data=data, calibration=calib, metadata=meta, path=path)
        for closer in closers:
            ds.add_closer(closer)
        if check_finite and np.issubdtype(data.dtype, np.floating):
            _check_finite(ds)
        return ds
    except BaseException as exc:
        for closer in reversed(closers):
            try:
                closer()
            except Exception:
                pass
        if isinstance(exc, DatasetError):
            raise
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if isinstance(exc, MemoryError):  # only a corrupt header asks for this much at open time
            raise DatasetError(path, f"the header describes an impossibly large array ({exc}); "
                                     "the file is corrupt") from exc
        raise DatasetError(path, f"could not be read as {fmt}: {type(exc).__name__}: {exc}") from exc


# -- paths ---------------------------------------------------------------------------------

def _check_path(path: Path) -> Path:
    if not path.exists():
        raise DatasetError(path, "no such file")
    if path.is_dir():
        if path.suffix.lower() != ".zspy":
            raise DatasetError(path, "is a folder, not a 4D-STEM file")
    elif path.stat().st_size == 0:
        raise DatasetError(path, "the file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise DatasetError(path, "cannot be read (permission denied)")
    return path


def primary_file(path: Path) -> Path:
    """The file that opens a dataset, given any of its files (see :func:`open_dataset`)."""
    suffix = path.suffix.lower()
    if suffix == ".hdr":
        mib = path.with_suffix(".mib")
        if not mib.is_file():
            raise DatasetError(path, f"Merlin header without its data file {mib.name}")
        return mib
    if suffix == ".raw":
        xml = empad_header_for(path)
        if xml is None:
            raise DatasetError(path, "EMPAD .raw file without an .xml header naming it in the same folder")
        return xml
    match = _ARINA_DATA.match(path.name)
    if match:
        master = path.with_name(f"{match.group('stem')}_master.h5")
        if master.is_file():
            return master
    return path


def empad_header_for(raw: Path) -> Path | None:
    """The EMPAD .xml in the same folder that names ``raw`` (or the only .xml there)."""
    xmls = sorted(raw.parent.glob("*.xml"))
    for xml in xmls:
        try:
            if raw.name in xml.read_text(errors="replace"):
                return xml
        except OSError:
            continue
    return xmls[0] if len(xmls) == 1 else None


# -- format readers: each returns (array, calibration, metadata, recorded scan shape) --------

Read = tuple[Any, Calibration, dict[str, Any], "tuple[int, int] | None"]


def _rsciio_module(fmt: str) -> Any:
    import importlib

    logging.getLogger("rsciio").setLevel(logging.ERROR)  # the numba fallback notice is noise here
    return importlib.import_module(f"rsciio.{fmt}")


def _read_rsciio(fmt: str, path: Path, dataset: str | int | None, closers: list,
                 options: dict[str, Any]) -> Read:
    if fmt == "blockfile":
        with open(path, "rb") as fh:
            if fh.read(6) != b"IMGBLO":
                raise DatasetError(path, "not a NanoMegas blockfile (no 'IMGBLO' signature)")
    module = _rsciio_module(fmt)
    kwargs = dict(options)
    if fmt == "zspy":
        # rsciio opens lazy zspy files in mode "r+", which zarr 3's read-only ZipStore refuses
        # ("Store is read-only but mode is 'r+'"); reading needs only "r".
        kwargs.setdefault("mode", "r")
    signals = module.file_reader(str(path), lazy=True, **kwargs)
    for sig in signals:
        closers.extend(_graph_closers(sig["data"]))
    return _signal_to_read(path, fmt, _pick_signal(path, signals, dataset))


def _read_mib(path: Path, dataset: str | int | None, closers: list, options: dict[str, Any]) -> Read:
    from .mib import check_mib_size

    check_mib_size(path)
    return _read_rsciio("quantumdetector", path, dataset, closers, options)


def _read_hdf5(path: Path, dataset: str | int | None, closers: list, options: dict[str, Any]) -> Read:
    import h5py

    from . import hdf5

    f = h5py.File(path, "r")
    closers.append(f.close)
    if hdf5.is_arina_master(f):
        return _read_arina(path, f, closers)
    if hdf5.is_emd_file(f) or hdf5.is_velox_emd(f):
        f.close()
        return _read_rsciio("emd", path, dataset, closers, options)
    candidates = hdf5.find_pattern_datasets(f)
    if not candidates:
        raise DatasetError(path, "not a 4D-STEM file: it holds no 3-D or 4-D numeric dataset")
    if dataset is None:
        if len(candidates) > 1:
            listing = "; ".join(f"{name} {shape}" for name, shape in candidates)
            raise DatasetError(path, f"several datasets could be the 4D-STEM data ({listing}); "
                                     "pick one with dataset='<path>'")
        name = candidates[0][0]
    else:
        name = "/" + str(dataset).lstrip("/")
        if name not in f or not isinstance(f[name], h5py.Dataset):
            listing = ", ".join(c[0] for c in candidates) or "none"
            raise DatasetError(path, f"no dataset {name!r}; candidates: {listing}")
    ds = f[name]
    recorded = hdf5.recorded_scan_shape(f, name)
    chunks = _h5_chunks(ds)
    data = da.from_array(ds, chunks=chunks, name=f"h5-{path.name}-{name}-{os.stat(path).st_mtime_ns}")
    calib = _h5_calibration(ds)
    meta = {"format": "hdf5", "hdf5_path": name, "title": name.rsplit("/", 1)[-1]}
    return data, calib, meta, recorded


def _h5_chunks(ds: Any) -> tuple[int, ...]:
    if ds.ndim == 4:
        return scan_chunks(ds.shape, ds.dtype.itemsize, ds.chunks)
    if ds.ndim == 3:
        per = ds.shape[1] * ds.shape[2] * ds.dtype.itemsize
        n = max(1, (64 * 2**20) // max(per, 1))
        if ds.chunks:
            n = max(ds.chunks[0], n // ds.chunks[0] * ds.chunks[0])
        return (min(n, ds.shape[0]), ds.shape[1], ds.shape[2])
    return tuple(ds.chunks or ds.shape)


def _h5_calibration(ds: Any) -> Calibration:
    """Calibration from attributes ``scan_step``/``scan_unit``/``detector_step``/``detector_unit``."""
    attrs = ds.attrs
    kwargs: dict[str, Any] = {}
    for key in ("scan_step", "detector_step"):
        if key in attrs:
            v = np.ravel(attrs[key]).astype(float)
            kwargs[key] = (float(v[0]), float(v[-1]))
    for key in ("scan_unit", "detector_unit"):
        if key in attrs:
            v = attrs[key]
            kwargs[key] = v.decode() if isinstance(v, bytes) else str(v)
    return Calibration(**kwargs)


def _read_arina(path: Path, f: Any, closers: list) -> Read:
    from . import hdf5

    stacks = hdf5.arina_frames(f, path)
    # externally linked data files stay open after the master closes: close each of them
    closers.extend(s.file.close for s in stacks)
    info = hdf5.arina_calibration(f)
    parts = [da.from_array(s, chunks=(max(1, min(s.shape[0], (64 * 2**20) // (s.shape[1] * s.shape[2] * s.dtype.itemsize))),
                                      s.shape[1], s.shape[2])) for s in stacks]
    data = da.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    # DECTRIS writes counts into uint32 containers even when the detector saturates far below
    # 2**16 (here 8352); keep uint16 then, as rosettasciio does, so a scan takes half the memory.
    if data.dtype == np.uint32 and (info.get("saturation_value", 2**32) < 2**16
                                    or info.get("bit_depth", 32) <= 16):
        data = data.astype(np.uint16)
    step = info.get("detector_step")
    calib = Calibration(detector_step=(step, step) if step else (1.0, 1.0),
                        detector_unit=info.get("detector_unit", "px"))
    meta = {"format": "arina", "title": path.stem.replace("_master", ""),
            "n_data_files": len(stacks)}
    return data, calib, meta, None


def _read_npy(path: Path, dataset: str | int | None, closers: list, options: dict[str, Any]) -> Read:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.ndim == 4:
        chunks: Any = scan_chunks(arr.shape, arr.dtype.itemsize)
    else:
        chunks = "auto"
    data = da.from_array(arr, chunks=chunks, name=f"npy-{path.name}-{os.stat(path).st_mtime_ns}")
    return data, Calibration(), {"format": "npy", "title": path.stem}, None


_READERS: dict[str, Callable[..., Read]] = {
    "quantumdetector": _read_mib,
    "hdf5": _read_hdf5,
    "npy": _read_npy,
}
for _fmt in ("blockfile", "digitalmicrograph", "emd", "empad", "hspy", "zspy", "tvips"):
    _READERS[_fmt] = (lambda fmt: lambda p, d, c, o: _read_rsciio(fmt, p, d, c, o))(_fmt)


# -- rosettasciio signal dictionaries --------------------------------------------------------

def _pick_signal(path: Path, signals: list[dict[str, Any]], which: str | int | None) -> dict[str, Any]:
    def title(sig: dict[str, Any]) -> str:
        return str(sig.get("metadata", {}).get("General", {}).get("title", "")) or "untitled"

    if isinstance(which, int):
        if not 0 <= which < len(signals):
            raise DatasetError(path, f"signal index {which} out of range; the file holds {len(signals)}")
        return signals[which]
    if isinstance(which, str):
        named = [s for s in signals if title(s) == which]
        if not named:
            raise DatasetError(path, f"no signal titled {which!r}; titles: {[title(s) for s in signals]}")
        return named[0]
    usable = [s for s in signals if np.ndim(s["data"]) in (3, 4, 5)]
    if not usable:
        shapes = [tuple(np.shape(s["data"])) for s in signals]
        raise DatasetError(path, f"not 4D-STEM data: the file holds arrays of shape {shapes}, "
                                 "expected (scan y, scan x, detector y, detector x)")
    four = [s for s in usable if np.ndim(s["data"]) == 4] or usable
    if len(four) > 1:
        listing = "; ".join(f"{i}: {title(s)} {tuple(np.shape(s['data']))}" for i, s in enumerate(signals)
                            if s in four)
        raise DatasetError(path, f"several signals could be the 4D-STEM data ({listing}); "
                                 "pick one with dataset=<index or title>")
    return four[0]


def _signal_to_read(path: Path, fmt: str, sig: dict[str, Any]) -> Read:
    data = sig["data"]
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks="auto")
    axes = sig.get("axes", [])
    calib = Calibration()
    if len(axes) == data.ndim and data.ndim >= 4:
        ny, nx, qy, qx = axes[-4], axes[-3], axes[-2], axes[-1]
        calib = Calibration(
            scan_step=(_scale(ny), _scale(nx)), scan_unit=_unit(ny, nx),
            detector_step=(_scale(qy), _scale(qx)), detector_unit=_unit(qy, qx),
        )
    elif len(axes) == data.ndim == 3:
        qy, qx = axes[-2], axes[-1]
        calib = Calibration(detector_step=(_scale(qy), _scale(qx)), detector_unit=_unit(qy, qx))
    general = sig.get("metadata", {}).get("General", {})
    meta: dict[str, Any] = {"format": fmt, "title": general.get("title") or path.stem,
                            "axes_names": [str(a.get("name", "")) for a in axes]}
    if data.ndim == 5 and axes:
        meta["extra_axis"] = {"name": str(axes[0].get("name", "")), "size": int(data.shape[0])}
    return data, calib, meta, None


def _scale(axis: dict[str, Any]) -> float:
    try:
        value = float(axis.get("scale", 1.0))
    except (TypeError, ValueError):
        return 1.0
    return value if math.isfinite(value) and value > 0 else 1.0


def _unit(*axes: dict[str, Any]) -> str:
    unit = axes[0].get("units")
    if unit in (None, "", "<undefined>", "1"):
        return "px"
    return str(unit)


def _graph_closers(data: Any) -> list[Callable[[], None]]:
    """Closers for file handles a lazy rosettasciio array holds (h5py files, zarr stores)."""
    if not isinstance(data, da.Array):
        return []
    closers: list[Callable[[], None]] = []
    seen: set[int] = set()
    for value in dict(data.__dask_graph__()).values():
        file = getattr(value, "file", None)  # h5py.Dataset
        if file is not None and hasattr(file, "close") and id(file) not in seen:
            seen.add(id(file))
            closers.append(file.close)
            continue
        store = getattr(value, "store", None)  # zarr.Array
        if store is not None and hasattr(store, "close") and id(store) not in seen:
            seen.add(id(store))
            closers.append(store.close)
    return closers


# -- shape rules -----------------------------------------------------------------------------

def _to_4d(path: Path, data: Any, scan_shape: tuple[int, int] | None,
           recorded: tuple[int, int] | None, depth_index: int, meta: dict[str, Any]) -> da.Array:
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks="auto")
    if data.ndim == 5:
        extra = meta.get("extra_axis", {"name": "axis 0", "size": data.shape[0]})
        if not 0 <= depth_index < data.shape[0]:
            raise DatasetError(path, f"5-D data: depth_index {depth_index} is outside the "
                                     f"{extra['name'] or 'leading'} axis of size {data.shape[0]}")
        warnings.warn(f"{path.name}: 5-D data {tuple(data.shape)}; using index {depth_index} of the "
                      f"leading axis {extra['name']!r} (choose another with depth_index=)", stacklevel=3)
        data = data[depth_index]
        meta["depth_index"] = depth_index
    if data.ndim == 3:
        n = data.shape[0]
        shape = scan_shape or recorded
        if shape is None:
            side = math.isqrt(n)
            if side * side != n:
                raise DatasetError(path, f"a stack of {n} patterns with no scan shape recorded; "
                                         "pass scan_shape=(rows, columns)")
            shape = (side, side)
            warnings.warn(f"{path.name}: {n} patterns with no scan shape recorded; assuming a "
                          f"square {side}x{side} scan (pass scan_shape= to override)", stacklevel=3)
            meta["scan_shape_assumed"] = True
        if shape[0] * shape[1] != n:
            raise DatasetError(path, f"scan shape {tuple(shape)} needs {shape[0] * shape[1]} patterns "
                                     f"but the file holds {n}")
        data = data.reshape(int(shape[0]), int(shape[1]), *data.shape[1:])
    elif data.ndim == 4 and scan_shape is not None and tuple(scan_shape) != tuple(data.shape[:2]):
        if scan_shape[0] * scan_shape[1] != data.shape[0] * data.shape[1]:
            raise DatasetError(path, f"scan shape {tuple(scan_shape)} does not fit the "
                                     f"{data.shape[0]}x{data.shape[1]} positions in the file")
        data = data.reshape(int(scan_shape[0]), int(scan_shape[1]), *data.shape[2:])
    if data.ndim != 4:
        raise DatasetError(path, f"not 4D-STEM data: the array has {data.ndim} axes "
                                 f"{tuple(data.shape)}, expected (scan y, scan x, detector y, detector x)")
    if min(data.shape[2:]) < 2:
        raise DatasetError(path, f"detector axes {tuple(data.shape[2:])} are too small for patterns")
    return data


def _check_finite(ds: Dataset4D) -> None:
    nbytes = ds.data.nbytes
    if nbytes <= FINITE_CHECK_BYTES:
        bad = int((~da.isfinite(ds.data)).sum().compute())
        where = "values"
    else:
        n = min(64, ds.n_patterns)
        idx = np.unique(np.linspace(0, ds.n_patterns - 1, n).astype(np.int64))
        bad = int((~np.isfinite(ds.patterns(idx))).sum())
        where = f"values in {len(idx)} sampled patterns"
    if bad:
        raise DatasetError(ds.path, f"the data contains {bad} NaN or Inf {where}; 4D-STEM counts must "
                                    "be finite (open with check_finite=False to inspect it anyway)")

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

How the lazy array reads (``data/file_array.py``): every dataset's dask array reads through one
:class:`FileArray` over the file's own array (an h5py or zarr dataset, a memory map, or
rosettasciio's lazy array). It presents (Ry, Rx, Qy, Qx) without dask reshapes, so a dask slice of one pattern (or a
strided navigator grid) reaches the file library as that selection and reads only those
patterns; it applies per-read conversions (Arina's uint16, a complex magnitude); and a failed
read raises :class:`DatasetError` naming the file and the scan positions.

What a file cannot do (docs/data.md, "Bad input"): run code (object arrays are refused before
anything decodes them: zarr metadata is inspected first, ``.npy`` loads with
``allow_pickle=False``, HDF5 object/reference datasets are never pattern data), or open
silently when its values are not what they seem (:class:`DataWarning`: all zero, constant,
never written, negative counts; complex data is refused unless ``complex_data="magnitude"``).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import re
import stat
import struct
import warnings
from pathlib import Path
from typing import Any, Callable

import dask.array as da
import numpy as np

from .dataset import Calibration, Dataset4D
from .errors import DataWarning, DatasetError
from .file_array import Concat, FileArray, Source, as_source, dask_chunks, dask_name, plain_source
from .quality import inspect_values
from .zarr_safety import check_zarr_store

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

@dataclasses.dataclass(frozen=True)
class Candidate:
    """One array of a file that could be the 4D-STEM data: what ``open_dataset(dataset=)``
    takes (an HDF5 path, or a signal index), its shape, dtype and (for signals) title."""

    key: str | int
    shape: tuple[int, ...]
    dtype: str
    title: str = ""

    def describe(self) -> str:
        """'/data_counts  32×32×64×64  float32' (the line a chooser shows)."""
        name = f"{self.key}: {self.title}" if self.title else str(self.key)
        return f"{name}  {'×'.join(str(n) for n in self.shape)}  {self.dtype}"


class AmbiguousDatasetError(DatasetError):
    """The file holds several arrays that could be the 4D-STEM data; ``candidates`` lists them
    (``Candidate``), so a caller can ask which one and open it with ``dataset=candidate.key``."""

    def __init__(self, path: str | os.PathLike[str] | None, candidates: list[Candidate],
                 what: str = "datasets") -> None:
        self.candidates = list(candidates)
        self.what = what
        listing = ", ".join(f"{c.key}{' (' + c.title + ')' if c.title else ''} "
                            f"{'x'.join(str(n) for n in c.shape)} {c.dtype}"
                            for c in self.candidates)
        example = self.candidates[0].key if self.candidates else "/data"
        example = repr(example) if isinstance(example, str) else example
        super().__init__(path, f"several {what} could be the 4D-STEM data ({listing}); pick one "
                               f"with dataset={example} (the CLI's --dataset option; napari "
                               "asks which one)")

    def __reduce__(self):
        return type(self), (self.path, self.candidates, self.what)


#: ``open_dataset(complex_data=...)``: refuse complex values, or use their magnitude |z|
COMPLEX_MODES = ("refuse", "magnitude")

_ARINA_DATA = re.compile(r"^(?P<stem>.+)_data_\d{6}\.h5$")


def open_dataset(path: str | os.PathLike[str], *, scan_shape: tuple[int, int] | None = None,
                 dataset: str | int | None = None, depth_index: int = 0,
                 check_finite: bool = True, check_quality: bool = True,
                 complex_data: str = "refuse", **options: Any) -> Dataset4D:
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
        For float data, raise on NaN/Inf (every value up to 64 MiB, else a sample of patterns).
    check_quality
        Warn (:class:`DataWarning`) when the data is all zero, constant, never written (HDF5
        chunks that do not exist) or holds negative counts, from the same bounded sample. The
        problems found are also listed in ``metadata["warnings"]``.
    complex_data
        ``"refuse"`` (default): complex values raise :class:`DatasetError`; ``"magnitude"``:
        open their magnitude |z| as float32 (complex64) or float64 (complex128).
    options
        Passed to the rosettasciio reader (e.g. ``chunks=``).
    """
    if complex_data not in COMPLEX_MODES:
        raise ValueError(f"complex_data must be one of {COMPLEX_MODES}, got {complex_data!r}")
    given = _check_path(Path(path))
    path = primary_file(given)
    if path != given:
        path = _check_path(path)
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DatasetError(path, f"not a 4D-STEM file: the file type {path.suffix or '(none)'!r} is "
                                 f"not one of {', '.join(sorted(set(SUFFIX_FORMATS)))}")
    closers: list[Callable[[], None]] = []
    try:
        return _open(path, fmt, closers, scan_shape, dataset, depth_index, check_finite,
                     check_quality, complex_data, options)
    except BaseException as exc:
        for closer in reversed(closers):
            try:
                closer()
            except Exception:
                pass
        # the traceback's frames hold the file's array (a memory map keeps its file open)
        _release_frames(exc)
        if isinstance(exc, DatasetError):
            raise
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if isinstance(exc, MemoryError):  # only a corrupt header asks for this much at open time
            raise DatasetError(path, f"the header describes an impossibly large array ({exc}); "
                                     "the file is corrupt") from exc
        raise DatasetError(path, f"could not be read as {fmt}: {type(exc).__name__}: {exc}") from exc


def _open(path: Path, fmt: str, closers: list, scan_shape: Any, dataset: Any, depth_index: int,
          check_finite: bool, check_quality: bool, complex_data: str,
          options: dict[str, Any]) -> Dataset4D:
    source, calib, meta, recorded = _READERS[fmt](path, dataset, closers, options, scan_shape)
    array = _scan_array(path, as_source(source), scan_shape, recorded, depth_index, meta)
    _check_value_type(path, array, complex_data, meta)
    data = da.from_array(array, chunks=dask_chunks(array), name=dask_name(path, array, meta),
                         meta=np.empty((0, 0, 0, 0), dtype=array.dtype))
    meta["file_chunk_scan"] = array.file_chunk_scan()
    ds = Dataset4D(data=data, calibration=calib, metadata=meta, path=path)
    for closer in closers:
        ds.add_closer(closer)
    if check_finite or check_quality:
        inspect_values(ds, array, check_finite, check_quality)
    return ds


def _release_frames(exc: BaseException) -> None:
    import traceback

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if e.__traceback__ is not None:
            traceback.clear_frames(e.__traceback__)
        todo += [e.__cause__, e.__context__]


# -- paths ---------------------------------------------------------------------------------

_SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_path(path: Path) -> Path:
    """Stat the path once and say exactly what is wrong with it; open nothing."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DatasetError(path, "is a symbolic link loop (following its links leads back to "
                                     "itself, or through too many links)") from None
        if exc.errno == errno.ENOENT and os.path.islink(path):
            raise DatasetError(path, f"is a dangling symbolic link: its target "
                                     f"{os.readlink(path)!r} does not exist") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise DatasetError(path, "no such file") from None
        if exc.errno == errno.EACCES:
            raise DatasetError(path, "cannot be read (permission denied)") from None
        raise DatasetError(path, f"cannot be opened: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        if path.suffix.lower() != ".zspy":
            raise DatasetError(path, "is a folder, not a 4D-STEM file")
    elif not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _SPECIAL_FILES if test(st.st_mode)), "a special file")
        raise DatasetError(path, f"is not a regular file ({kind}); 4D-STEM data must be a file "
                                 "on disk")
    elif st.st_size == 0:
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
    xmls = sorted(x for x in raw.parent.glob("*.xml") if x.is_file())  # never a FIFO: it blocks
    for xml in xmls:
        try:
            with open(xml, "rb") as fh:
                if raw.name.encode() in fh.read(1 << 20):
                    return xml
        except OSError:
            continue
    return xmls[0] if len(xmls) == 1 else None


# -- format readers: each returns (source, calibration, metadata, recorded scan shape) -------
#
# The source is the file's array as the format library gives it (an h5py dataset, rosettasciio's
# lazy dask array, a memory map) or a :class:`Source` that says more (a per-read conversion).

Read = tuple[Any, Calibration, dict[str, Any], "tuple[int, int] | None"]


def _rsciio_module(fmt: str) -> Any:
    import importlib

    logging.getLogger("rsciio").setLevel(logging.ERROR)  # the numba fallback notice is noise here
    return importlib.import_module(f"rsciio.{fmt}")


def _read_rsciio(fmt: str, path: Path, dataset: str | int | None, closers: list,
                 options: dict[str, Any], scan_shape: Any = None) -> Read:
    if fmt == "blockfile":
        check_blockfile_size(path)
    if fmt == "zspy":
        check_zarr_store(path)  # before zarr or rosettasciio decodes anything
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


def _read_mib(path: Path, dataset: str | int | None, closers: list, options: dict[str, Any],
              scan_shape: Any = None) -> Read:
    from .mib import check_mib_size

    frames = check_mib_size(path)
    hdr = path.with_suffix(".hdr")
    options = dict(options)
    if scan_shape is not None and "navigation_shape" not in options:
        # the caller knows the scan: read every frame as a stack, reshaped by the scan shape
        options["navigation_shape"] = (frames,)
    read = _read_rsciio("quantumdetector", path, dataset, closers, options)
    shape = tuple(int(n) for n in read[0].array.shape)
    used = math.prod(shape[:-2])
    if "navigation_shape" not in options and (not hdr.is_file() or used != frames):
        left = ("" if used >= frames else "; the last frame is left out" if frames - used == 1
                else f"; the last {frames - used} frames are left out")
        origin = (f"there is no {hdr.name} beside it, so" if not hdr.is_file()
                  else f"{hdr.name} does not say how the frames lie on the scan, so")
        fix = (f"pass scan_shape=(rows, columns) with rows x columns = {frames}, or put the "
               "acquisition's .hdr beside the file")
        if len(shape) == 4:
            guess = f"{shape[0]}x{shape[1]}"
            problem = (f"{origin} the scan shape was guessed from the frame time stamps: {guess} "
                       f"({used} of the {frames} frames in the file{left}). If the scan was not "
                       f"{guess} (an interrupted acquisition, or a wrong guess), {fix}")
        else:
            problem = (f"{origin} the scan shape is unknown: {used} of the {frames} frames in the "
                       f"file were read as a stack{left}; {fix}")
        warnings.warn(DataWarning(path, problem), stacklevel=4)
        read[2]["scan_shape_guessed"] = True
    return read


def check_blockfile_size(path: Path) -> None:
    """Signature, then the file size against the header (rosettasciio opens a cut file lazily)."""
    layout = "<6sHIIIHHHH"  # ID, MAGIC, offset 1 (VBF), offset 2 (patterns), ?, DP_SZ, rot, NX, NY
    with open(path, "rb") as fh:
        head = fh.read(struct.calcsize(layout))
    if head[:6] != b"IMGBLO":
        raise DatasetError(path, "not a NanoMegas blockfile (no 'IMGBLO' signature)")
    if len(head) < struct.calcsize(layout):
        raise DatasetError(path, f"truncated blockfile: {len(head)} bytes, shorter than its header")
    _, _, _, offset2, _, dp, _, nx, ny = struct.unpack(layout, head)
    expected = offset2 + nx * ny * (6 + dp * dp)
    size = path.stat().st_size
    if nx * ny * dp == 0:
        raise DatasetError(path, f"the blockfile header describes an empty scan ({ny}x{nx} patterns "
                                 f"of {dp}x{dp} pixels)")
    if size < expected:
        missing = expected - size
        raise DatasetError(path, (
            f"truncated blockfile: the header describes {ny}x{nx} patterns of {dp}x{dp} pixels "
            f"after a {offset2}-byte header, {expected} bytes in all, but the file holds {size} "
            f"bytes ({missing} bytes, about {math.ceil(missing / (6 + dp * dp))} patterns, missing)"))


def _read_hdf5(path: Path, dataset: str | int | None, closers: list, options: dict[str, Any],
               scan_shape: Any = None) -> Read:
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
    if dataset is None:
        if not candidates:
            raise DatasetError(path, "not a 4D-STEM file: it holds no 3-D or 4-D numeric dataset")
        if len(candidates) > 1:
            raise AmbiguousDatasetError(path, [
                Candidate(name, tuple(shape), str(f[name].dtype)) for name, shape in candidates])
        name = candidates[0][0]
    else:
        name = "/" + str(dataset).lstrip("/")
        if name not in f or not isinstance(f[name], h5py.Dataset):
            listing = ", ".join(c[0] for c in candidates) or "none"
            raise DatasetError(path, f"no dataset {name!r}; candidates: {listing}")
    ds = f[name]
    problem = hdf5.pattern_dtype_problem(ds.dtype)
    if problem:  # refused before reading a value
        raise DatasetError(path, f"dataset {name} {problem}; 4D-STEM patterns are numbers")
    recorded = hdf5.recorded_scan_shape(f, name)
    calib = _h5_calibration(ds, f)
    meta = {"format": "hdf5", "hdf5_path": name, "title": name.rsplit("/", 1)[-1]}
    return Source(ds, label=f"dataset {name}"), calib, meta, recorded


#: attribute names that carry a step with its unit in the name (``scan_step_A``,
#: ``detector_sampling_mrad_per_px``, ``detector_step_1/nm``...), as simulation scripts write
_STEP_WITH_UNIT = re.compile(r"^(?P<axis>scan|detector)_(?:step|sampling|pixel_size)_"
                             r"(?P<unit>[A-Za-z\u00c5\u00b5/0-9]+?)(?:_per_px)?$")
#: spellings of units in attribute names -> the unit napari (pint) and people read
_UNIT_SPELLINGS = {"a": "Å", "ang": "Å", "angstrom": "Å", "\u00e5": "Å", "nm": "nm", "pm": "pm",
                   "um": "µm", "\u00b5m": "µm", "mrad": "mrad", "rad": "rad", "px": "px",
                   "1/a": "1/Å", "1/nm": "1/nm", "a-1": "1/Å", "nm-1": "1/nm"}


def _unit_name(text: str) -> str:
    return _UNIT_SPELLINGS.get(text.strip().lower(), text.strip())


def _h5_calibration(ds: Any, f: Any = None) -> Calibration:
    """Calibration from HDF5 attributes, the dataset's first, then its parent groups' and the file's.

    Read: ``scan_step`` / ``scan_unit`` / ``detector_step`` / ``detector_unit`` (a number or
    a pair, and a unit string), or a step whose unit is in its name, as simulations write them
    (``scan_step_A = 2.0``, ``detector_sampling_mrad_per_px = 1.28``). Unreadable values are
    skipped (the default is 1 px).
    """
    holders = [ds.attrs]
    if f is not None:
        parent = ds.parent
        while True:
            holders.append(parent.attrs)
            if parent.name == "/":
                break
            parent = parent.parent
    found: dict[str, Any] = {}
    for attrs in holders:  # the nearest holder wins
        try:
            keys = list(attrs.keys())
        except Exception:
            continue
        for key in keys:
            axis, unit = None, None
            if key in ("scan_step", "detector_step"):
                axis = key.split("_")[0]
            else:
                match = _STEP_WITH_UNIT.match(key)
                if match:
                    axis, unit = match.group("axis"), _unit_name(match.group("unit"))
            if axis is not None and f"{axis}_step" not in found:
                try:
                    v = np.ravel(attrs[key]).astype(float)
                    step = (float(v[0]), float(v[-1]))
                except (TypeError, ValueError, IndexError, OSError):
                    continue
                if all(math.isfinite(x) and x > 0 for x in step):
                    found[f"{axis}_step"] = step
                    if unit is not None:
                        found.setdefault(f"{axis}_unit", unit)
        for key in ("scan_unit", "detector_unit"):
            if key in keys and key not in found:
                try:
                    v = attrs[key]
                except (OSError, TypeError):
                    continue
                v = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
                found[key] = _unit_name(v) if v.strip() else "px"
    return Calibration(**found)


def _read_arina(path: Path, f: Any, closers: list) -> Read:
    from . import hdf5

    stacks = hdf5.arina_frames(f, path)
    # externally linked data files stay open after the master closes: close each of them
    closers.extend(s.file.close for s in stacks)
    info = hdf5.arina_calibration(f)
    source = Source(Concat(stacks) if len(stacks) > 1 else stacks[0], label="frames")
    # DECTRIS writes counts into uint32 containers even when the detector saturates far below
    # 2**16 (here 8352); keep uint16 then, as rosettasciio does, so a scan takes half the memory.
    if stacks[0].dtype == np.uint32 and (info.get("saturation_value", 2**32) < 2**16
                                         or info.get("bit_depth", 32) <= 16):
        source.dtype = np.dtype(np.uint16)
        source.convert = lambda x: x.astype(np.uint16)
    step = info.get("detector_step")
    calib = Calibration(detector_step=(step, step) if step else (1.0, 1.0),
                        detector_unit=info.get("detector_unit", "px"))
    meta = {"format": "arina", "title": path.stem.replace("_master", ""),
            "n_data_files": len(stacks)}
    return source, calib, meta, None


def _read_npy(path: Path, dataset: str | int | None, closers: list, options: dict[str, Any],
              scan_shape: Any = None) -> Read:
    refusal = ("holds Python objects (a pickled object array); refused without loading it, "
               "because unpickling runs code from the file")
    with open(path, "rb") as fh:  # the header only: refuse pickled object arrays by their dtype
        try:
            version = np.lib.format.read_magic(fh)
            header = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                      else np.lib.format.read_array_header_2_0(fh) if version == (2, 0) else None)
        except ValueError as exc:
            raise DatasetError(path, f"not a valid .npy file ({exc})") from None
    if header is not None and np.dtype(header[2]).hasobject:
        raise DatasetError(path, refusal)
    try:  # allow_pickle=False: numpy itself never unpickles here either
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "object" in str(exc).lower() or "pickle" in str(exc).lower():
            raise DatasetError(path, refusal) from None
        raise
    return Source(arr, label="array"), Calibration(), {"format": "npy", "title": path.stem}, None


_READERS: dict[str, Callable[..., Read]] = {
    "quantumdetector": _read_mib,
    "hdf5": _read_hdf5,
    "npy": _read_npy,
}
for _fmt in ("blockfile", "digitalmicrograph", "emd", "empad", "hspy", "zspy", "tvips"):
    _READERS[_fmt] = (lambda fmt: lambda p, d, c, o, s=None: _read_rsciio(fmt, p, d, c, o))(_fmt)


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
        if not named and which.strip().isdigit():  # an index as text (the CLI's --dataset 1)
            return _pick_signal(path, signals, int(which))
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
        raise AmbiguousDatasetError(path, [
            Candidate(i, tuple(int(n) for n in np.shape(s["data"])), str(s["data"].dtype), title(s))
            for i, s in enumerate(signals) if any(s is t for t in four)], what="signals")
    return four[0]


def _signal_to_read(path: Path, fmt: str, sig: dict[str, Any]) -> Read:
    data = sig["data"]
    axes = sig.get("axes", [])
    ndim = np.ndim(data)
    calib = Calibration()
    if len(axes) == ndim and ndim >= 4:
        ny, nx, qy, qx = axes[-4], axes[-3], axes[-2], axes[-1]
        calib = Calibration(
            scan_step=(_scale(ny), _scale(nx)), scan_unit=_unit(ny, nx),
            detector_step=(_scale(qy), _scale(qx)), detector_unit=_unit(qy, qx),
        )
    elif len(axes) == ndim == 3:
        qy, qx = axes[-2], axes[-1]
        calib = Calibration(detector_step=(_scale(qy), _scale(qx)), detector_unit=_unit(qy, qx))
    general = sig.get("metadata", {}).get("General", {})
    meta: dict[str, Any] = {"format": fmt, "title": general.get("title") or path.stem,
                            "axes_names": [str(a.get("name", "")) for a in axes]}
    if ndim == 5 and axes:
        meta["extra_axis"] = {"name": str(axes[0].get("name", "")), "size": int(np.shape(data)[0])}
    label = f"signal {meta['title']!r}"
    return Source(plain_source(data), label=label), calib, meta, None


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

def _scan_array(path: Path, source: Source, scan_shape: tuple[int, int] | None,
                recorded: tuple[int, int] | None, depth_index: int, meta: dict[str, Any]) -> FileArray:
    shape = tuple(int(s) for s in source.array.shape)
    lead: tuple[int, ...] = ()
    if len(shape) == 5:
        extra = meta.get("extra_axis", {"name": "axis 0", "size": shape[0]})
        if not 0 <= depth_index < shape[0]:
            raise DatasetError(path, f"5-D data: depth_index {depth_index} is outside the "
                                     f"{extra['name'] or 'leading'} axis of size {shape[0]}")
        warnings.warn(DataWarning(path, (
            f"5-D data {shape}; using index {depth_index} of the leading axis "
            f"{extra['name']!r} (choose another with depth_index=)")), stacklevel=4)
        lead, shape = (depth_index,), shape[1:]
        meta["depth_index"] = depth_index
    if len(shape) == 3:
        n = shape[0]
        grid = scan_shape or recorded
        if grid is None:
            side = math.isqrt(n)
            if side * side != n:
                raise DatasetError(path, f"a stack of {n} patterns with no scan shape recorded; "
                                         "pass scan_shape=(rows, columns)")
            grid = (side, side)
            warnings.warn(DataWarning(path, (
                f"{n} patterns with no scan shape recorded; assuming a square {side}x{side} "
                "scan (pass scan_shape= to override)")), stacklevel=4)
            meta["scan_shape_assumed"] = True
        if grid[0] * grid[1] != n:
            raise DatasetError(path, f"scan shape {tuple(grid)} needs {grid[0] * grid[1]} patterns "
                                     f"but the file holds {n}")
        array = FileArray(path, source, (int(grid[0]), int(grid[1])), "stack", lead)
    elif len(shape) == 4:
        mode, grid = "grid", shape[:2]
        if scan_shape is not None and tuple(scan_shape) != tuple(shape[:2]):
            if scan_shape[0] * scan_shape[1] != shape[0] * shape[1]:
                raise DatasetError(path, f"scan shape {tuple(scan_shape)} does not fit the "
                                         f"{shape[0]}x{shape[1]} positions in the file")
            mode, grid = "regrid", (int(scan_shape[0]), int(scan_shape[1]))
        array = FileArray(path, source, grid, mode, lead)
    else:
        raise DatasetError(path, f"not 4D-STEM data: the array has {len(shape)} axes "
                                 f"{shape}, expected (scan y, scan x, detector y, detector x)")
    if min(array.shape[2:]) < 2:
        raise DatasetError(path, f"detector axes {tuple(array.shape[2:])} are too small for patterns")
    return array


def _check_value_type(path: Path, array: FileArray, complex_data: str, meta: dict[str, Any]) -> None:
    """Refuse what is not numbers (before reading a value); complex -> refuse or magnitude."""
    dtype = array.dtype
    if dtype.kind == "O":
        raise DatasetError(path, f"the {array.source.label} holds Python objects (object dtype), "
                                 "not numbers; refused without reading it")
    if dtype.kind in "SUaV":
        raise DatasetError(path, f"the {array.source.label} holds {dtype} records or strings, "
                                 "not numbers")
    if dtype.kind == "b":
        raise DatasetError(path, f"the {array.source.label} holds booleans, not counts")
    if dtype.kind == "c":
        if complex_data != "magnitude":
            raise DatasetError(path, (
                f"the {array.source.label} holds complex values ({dtype}); diffraction counts are "
                "real. Open with complex_data='magnitude' to use their magnitude |z| (the phase "
                "is dropped)"))
        real = np.float32 if dtype.itemsize <= 8 else np.float64
        previous = array.convert
        array.convert = (lambda x: np.abs(x).astype(real)) if previous is None else \
            (lambda x: np.abs(previous(x)).astype(real))
        array.dtype = np.dtype(real)
        meta["complex_data"] = "magnitude"
    elif dtype.kind not in "iuf":
        raise DatasetError(path, f"the {array.source.label} holds {dtype} values, not numbers")

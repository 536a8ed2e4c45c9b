"""HDF5 files read with h5py: generic files, DECTRIS Arina masters, kikuchipy h5ebsd headers.

Compressed chunks (bitshuffle/LZ4 from DECTRIS detectors, Blosc, ...) decode through the filters
that importing ``hdf5plugin`` registers with HDF5.

Safety: h5py never unpickles anything, and nothing here dereferences object references stored
in a file; datasets of object, string, reference or compound type are never pattern candidates
(:func:`pattern_dtype_problem`), and the small header values read here (``n_rows``...) are
read only when they are small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the compression filters with HDF5)
import numpy as np

from .errors import DatasetError


def find_pattern_datasets(f: h5py.File) -> list[tuple[str, tuple[int, ...]]]:
    """Numeric datasets that could hold 4D-STEM data: 4-D ones, or 3-D ones if no 4-D exists.

    External links (Arina data files) are not followed here; see :func:`arina_frames`.
    """
    found: list[tuple[str, tuple[int, ...]]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.ndim in (3, 4, 5):
            if pattern_dtype_problem(obj.dtype) is None and min(obj.shape[-2:]) >= 2:
                found.append(("/" + name, tuple(obj.shape)))

    f.visititems(visit)
    for ndim in (4, 3, 5):
        same = [c for c in found if len(c[1]) == ndim]
        if same:
            return same
    return []


def pattern_dtype_problem(dtype: np.dtype) -> str | None:
    """Why a dataset of this type cannot hold diffraction patterns, or None when it can."""
    dtype = np.dtype(dtype)
    if h5py.check_dtype(ref=dtype) is not None:
        return "holds HDF5 object references, not numbers (references are never followed)"
    if h5py.check_dtype(vlen=dtype) is not None or dtype.kind == "O":
        return "holds variable-length or Python-object values, not numbers"
    if dtype.kind in "SUa":
        return f"holds strings ({dtype}), not numbers"
    if dtype.kind == "V":
        return f"holds compound or opaque records ({dtype}), not numbers"
    if dtype.kind == "b":
        return "holds booleans, not counts"
    if dtype.kind not in "iufc":
        return f"holds {dtype} values, not numbers"
    return None


def _small_value(obj: Any) -> Any:
    """The value of a small header dataset or attribute (None when it is not small)."""
    if isinstance(obj, h5py.Dataset):
        if obj.size > 16 or pattern_dtype_problem(obj.dtype) is not None:
            return None
        return obj[()]
    return obj


def recorded_scan_shape(f: h5py.File, dataset_path: str) -> tuple[int, int] | None:
    """A scan shape recorded beside a 3-D pattern stack, or None.

    Looks for a ``scan_shape`` attribute on the dataset, then for an h5ebsd header
    (``<scan>/EBSD/Header/n_rows`` and ``n_columns``, as kikuchipy and EDAX write).
    """
    ds = f[dataset_path]
    if "scan_shape" in ds.attrs:
        try:
            shape = tuple(int(v) for v in np.ravel(ds.attrs["scan_shape"]))
        except (TypeError, ValueError):
            shape = ()
        if len(shape) == 2:
            return shape  # type: ignore[return-value]
    group = ds.parent
    for _ in range(3):
        header = group.get("Header")
        if isinstance(header, h5py.Group) and "n_rows" in header and "n_columns" in header:
            rows, cols = _small_value(header["n_rows"]), _small_value(header["n_columns"])
            try:
                return int(np.ravel(rows)[0]), int(np.ravel(cols)[0])
            except (TypeError, ValueError, IndexError):
                return None
        if group.name == "/":
            break
        group = group.parent
    return None


def is_arina_master(f: h5py.File) -> bool:
    """A DECTRIS NeXus master file: /entry/data holds (external links to) frame stacks."""
    data = f.get("entry/data")
    return isinstance(data, h5py.Group) and any(k.startswith("data_") for k in data.keys()) and \
        "entry/instrument/detector" in f


def is_emd_file(f: h5py.File) -> bool:
    """EMD: py4DSTEM / emdfile 1.0 (root ``emd_group_type``) or Berkeley/NCEM (``version_major``)."""
    attrs = f.attrs
    return "emd_group_type" in attrs or ("version_major" in attrs and "version_minor" in attrs)


def is_velox_emd(f: h5py.File) -> bool:
    return "Version" in f and "Data" in f


def arina_frames(f: h5py.File, path: Path) -> list[h5py.Dataset]:
    """The frame stacks an Arina master links to, in order (each (n, Qy, Qx))."""
    group = f["entry/data"]
    stacks = []
    for key in sorted(k for k in group.keys() if k.startswith("data_")):
        try:
            ds = group[key]
        except KeyError:
            link = group.get(key, getlink=True)
            target = getattr(link, "filename", "?")
            raise DatasetError(path, f"the Arina data file {target} linked as {key} is missing") from None
        if ds.ndim != 3:
            raise DatasetError(path, f"Arina frame stack {key} has shape {ds.shape}, expected 3-D")
        problem = pattern_dtype_problem(ds.dtype)
        if problem:
            raise DatasetError(path, f"Arina frame stack {key} {problem}")
        stacks.append(ds)
    if not stacks:
        raise DatasetError(path, "the Arina master file links no frame stacks (entry/data is empty)")
    return stacks


def arina_calibration(f: h5py.File) -> dict[str, Any]:
    """Detector pixel size as a scattering angle (mrad) when the camera length is recorded."""
    det = f["entry/instrument/detector"]
    out: dict[str, Any] = {}

    def number(key: str, kind: type) -> Any:
        return kind(np.ravel(_small_value(det[key]))[0])

    try:
        pixel = number("x_pixel_size", float)
        distance = number("detector_distance", float)
        out["bit_depth"] = number("bit_depth_image", int)
    except (KeyError, TypeError, ValueError, IndexError):
        return out
    if "saturation_value" in det:
        try:
            out["saturation_value"] = number("saturation_value", int)
        except (TypeError, ValueError, IndexError):
            pass
    if distance > 0:
        out["detector_step"] = pixel / distance * 1e3
        out["detector_unit"] = "mrad"
    return out


# -- never-written storage -------------------------------------------------------------------

def fill_value(ds: h5py.Dataset) -> Any:
    """The value HDF5 returns where nothing was written (0 unless the file sets one)."""
    try:
        value = ds.fillvalue
        return value.item() if hasattr(value, "item") else value
    except Exception:
        return 0


def chunk_written(ds: h5py.Dataset, coord: tuple[int, ...]) -> bool | None:
    """Whether the storage holding element ``coord`` was ever written; None when unknown.

    Chunked datasets: one lookup in the chunk index (no data is read). Contiguous datasets:
    whether their storage was allocated. Compact datasets are always written; virtual and
    external-storage datasets are unknown.
    """
    try:
        dcpl = ds.id.get_create_plist()
        layout = dcpl.get_layout()
        if layout == h5py.h5d.COMPACT:
            return True
        if layout == h5py.h5d.CONTIGUOUS:
            if dcpl.get_external_count() > 0:
                return None
            return ds.id.get_offset() is not None
        if layout == h5py.h5d.CHUNKED:
            aligned = tuple(int(c) // int(k) * int(k) for c, k in zip(coord, ds.chunks))
            info = ds.id.get_chunk_info_by_coord(aligned)
            return info.byte_offset is not None and info.size > 0
    except Exception:  # an old HDF5 without chunk queries, or an unusual layout
        return None
    return None


def stored_bytes(ds: h5py.Dataset) -> int | None:
    """Bytes of storage the file holds for the dataset (0: nothing was ever written)."""
    try:
        return int(ds.id.get_storage_size())
    except Exception:
        return None

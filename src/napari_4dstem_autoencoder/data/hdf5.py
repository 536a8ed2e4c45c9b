"""HDF5 files read with h5py: generic files, DECTRIS Arina masters, kikuchipy h5ebsd headers.

Compressed chunks (bitshuffle/LZ4 from DECTRIS detectors, Blosc, ...) decode through the filters
that importing ``hdf5plugin`` registers with HDF5.
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
            if np.issubdtype(obj.dtype, np.number) and min(obj.shape[-2:]) >= 2:
                found.append(("/" + name, tuple(obj.shape)))

    f.visititems(visit)
    for ndim in (4, 3, 5):
        same = [c for c in found if len(c[1]) == ndim]
        if same:
            return same
    return []


def recorded_scan_shape(f: h5py.File, dataset_path: str) -> tuple[int, int] | None:
    """A scan shape recorded beside a 3-D pattern stack, or None.

    Looks for a ``scan_shape`` attribute on the dataset, then for an h5ebsd header
    (``<scan>/EBSD/Header/n_rows`` and ``n_columns``, as kikuchipy and EDAX write).
    """
    ds = f[dataset_path]
    if "scan_shape" in ds.attrs:
        shape = tuple(int(v) for v in np.ravel(ds.attrs["scan_shape"]))
        if len(shape) == 2:
            return shape  # type: ignore[return-value]
    group = ds.parent
    for _ in range(3):
        header = group.get("Header")
        if isinstance(header, h5py.Group) and "n_rows" in header and "n_columns" in header:
            rows = int(np.ravel(header["n_rows"][()])[0])
            cols = int(np.ravel(header["n_columns"][()])[0])
            return rows, cols
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
        stacks.append(ds)
    if not stacks:
        raise DatasetError(path, "the Arina master file links no frame stacks (entry/data is empty)")
    return stacks


def arina_calibration(f: h5py.File) -> dict[str, Any]:
    """Detector pixel size as a scattering angle (mrad) when the camera length is recorded."""
    det = f["entry/instrument/detector"]
    out: dict[str, Any] = {}
    try:
        pixel = float(det["x_pixel_size"][()])
        distance = float(det["detector_distance"][()])
        out["bit_depth"] = int(det["bit_depth_image"][()])
    except KeyError:
        return out
    if "saturation_value" in det:
        out["saturation_value"] = int(det["saturation_value"][()])
    if distance > 0:
        out["detector_step"] = pixel / distance * 1e3
        out["detector_unit"] = "mrad"
    return out

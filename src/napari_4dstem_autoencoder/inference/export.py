"""Export analysis results: one self-describing HDF5 file, and TIFF stacks of maps.

HDF5 layout (written atomically and read back before the rename, like checkpoints)::

    /embeddings          (Ry, Rx, latent) float32
    /error/mse, /error/psnr   (Ry, Rx) float32            (when given)
    /extra/<name>        any further arrays (cluster labels, virtual images, ...)
    attrs: model_config, preprocessing, metadata (JSON strings), package version, created,
           and the calibration of the maps' scan grid (below)

Calibration (``calibration=``, a :class:`~..data.dataset.Calibration` or its dict; else
``metadata["calibration"]``): the root and every map carry ``scan_step`` (row, column),
``scan_unit``, ``detector_step``, ``detector_unit`` (the attribute names the HDF5 reader reads,
so a results file reopens calibrated); :func:`read_results` returns it. TIFF maps carry the scan
step as their resolution in ImageJ's form (pixels per unit, with the unit in the ImageJ
description: Fiji shows the scale bar in Å or nm); uncalibrated scans are written in pixels.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tifffile

from .. import __version__
from .._files import atomic_write_bytes

RESULTS_FORMAT = "napari-4dstem-autoencoder/results"

#: how ImageJ/Fiji spell length units (its descriptions are ASCII)
_IMAGEJ_UNITS = {"Å": "angstrom", "A": "angstrom", "angstrom": "angstrom", "pm": "pm",
                 "nm": "nm", "µm": "micron", "um": "micron", "mm": "mm", "m": "m"}


def _calibration_dict(calibration: Any, metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """The calibration to write as a plain dict, or None (nothing known)."""
    if calibration is None and metadata:
        calibration = metadata.get("calibration")
    if calibration is None:
        return None
    if hasattr(calibration, "to_dict"):
        calibration = calibration.to_dict()
    out: dict[str, Any] = {}
    for key in ("scan_step", "detector_step"):
        v = np.ravel(np.asarray(calibration.get(key, (1.0, 1.0)), dtype=float))
        out[key] = (float(v[0]), float(v[-1]))
    for key in ("scan_unit", "detector_unit"):
        out[key] = str(calibration.get(key, "px") or "px")
    return out


def _write_calibration(attrs: Any, calib: dict[str, Any]) -> None:
    attrs["scan_step"] = np.asarray(calib["scan_step"], dtype=np.float64)
    attrs["scan_unit"] = calib["scan_unit"]
    attrs["detector_step"] = np.asarray(calib["detector_step"], dtype=np.float64)
    attrs["detector_unit"] = calib["detector_unit"]


def _check_hdf5(expected: tuple[int, ...]):
    def check(tmp: Path) -> None:
        with h5py.File(tmp, "r") as f:
            if f.attrs.get("format") != RESULTS_FORMAT or f["embeddings"].shape != expected:
                raise OSError(f"{tmp}: the written results file does not read back")
    return check


def _check_tiff(expected: tuple[int, ...]):
    def check(tmp: Path) -> None:
        if tifffile.imread(tmp).shape != expected:
            raise OSError(f"{tmp}: the written TIFF does not read back")
    return check


def export_hdf5(
    path: str | os.PathLike,
    embeddings: np.ndarray,
    error_maps: dict[str, np.ndarray] | None = None,
    model_config: dict[str, Any] | None = None,
    preprocessing: dict[str, Any] | None = None,
    extra: dict[str, np.ndarray] | None = None,
    metadata: dict[str, Any] | None = None,
    calibration: Any = None,
) -> Path:
    """Write embeddings, error maps, configs and extra arrays to one HDF5 file (atomically).

    ``calibration``: the scan grid of the maps (a ``Calibration`` or its dict; default
    ``metadata["calibration"]``), written as attributes of the root and of every map.
    """
    path = Path(path)
    calib = _calibration_dict(calibration, metadata)
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 3:
        raise ValueError(f"embeddings must be (Ry, Rx, latent), got shape {emb.shape}")
    # built in memory and written in one go: HDF5 files are small next to the scan (34 float32
    # maps), and a full disk then fails a plain write instead of inside the HDF5 library
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.attrs["format"] = RESULTS_FORMAT
        f.attrs["napari_4dstem_autoencoder_version"] = __version__
        f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        f.attrs["model_config"] = json.dumps(model_config or {})
        f.attrs["preprocessing"] = json.dumps(preprocessing or {})
        f.attrs["metadata"] = json.dumps(metadata or {}, default=str)
        d = f.create_dataset("embeddings", data=emb, compression="gzip",
                             chunks=(min(emb.shape[0], 64), min(emb.shape[1], 64), emb.shape[2]))
        d.attrs["axes"] = "Ry,Rx,latent"
        maps = [d]
        for name, arr in (error_maps or {}).items():
            arr = np.asarray(arr, dtype=np.float32)
            if arr.shape != emb.shape[:2]:
                raise ValueError(f"error map {name!r} is {arr.shape}, the scan is {emb.shape[:2]}")
            maps.append(f.create_dataset(f"error/{name}", data=arr))
        for name, arr in (extra or {}).items():
            arr = np.asarray(arr)
            e = f.create_dataset(f"extra/{name}", data=arr)
            if arr.shape[:2] == emb.shape[:2]:  # a map on the same scan grid
                maps.append(e)
        if calib is not None:
            for holder in [f, *maps]:
                _write_calibration(holder.attrs, calib)
    # read back before the rename: a short write (full disk, file-size limit) never replaces
    # the target, and the OSError names it
    atomic_write_bytes(path, buffer.getvalue(), verify=_check_hdf5(emb.shape))
    return path


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read back a results file: ``embeddings``, ``error`` (dict), ``extra`` (dict), configs."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        if f.attrs.get("format") != RESULTS_FORMAT or "embeddings" not in f:
            raise ValueError(f"{path}: not a results file written by 'stem-ae embed'")
        return {
            "embeddings": f["embeddings"][()],
            "error": {k: v[()] for k, v in f["error"].items()} if "error" in f else {},
            "extra": {k: v[()] for k, v in f["extra"].items()} if "extra" in f else {},
            "model_config": json.loads(f.attrs.get("model_config", "{}")),
            "preprocessing": json.loads(f.attrs.get("preprocessing", "{}")),
            "metadata": json.loads(f.attrs.get("metadata", "{}")),
            "calibration": _read_calibration(f.attrs),
        }


def _read_calibration(attrs: Any) -> dict[str, Any] | None:
    """The calibration :func:`export_hdf5` wrote (None for files written without one)."""
    if "scan_step" not in attrs:
        return None

    def text(v: Any) -> str:
        return v.decode(errors="replace") if isinstance(v, bytes) else str(v)

    scan = np.ravel(attrs["scan_step"]).astype(float)
    det = np.ravel(attrs.get("detector_step", (1.0, 1.0))).astype(float)
    return {"scan_step": (float(scan[0]), float(scan[-1])),
            "scan_unit": text(attrs.get("scan_unit", "px")),
            "detector_step": (float(det[0]), float(det[-1])),
            "detector_unit": text(attrs.get("detector_unit", "px"))}


def export_tiff(path: str | os.PathLike, map_stack: np.ndarray, channel_axis: int | None = -1,
                calibration: Any = None) -> Path:
    """Write maps as a float32 TIFF stack, one page per channel (``(Y, X)`` gives one page).

    ``channel_axis`` says which axis of a 3-D ``map_stack`` holds channels (default last, as
    in (Ry, Rx, latent) embeddings); pages are written as (C, Y, X). ``calibration`` (a
    ``Calibration`` or its dict): the scan step becomes the TIFF resolution, with its unit in
    the ImageJ description (a scan in pixels, or an unknown unit, gets none).
    """
    calib = _calibration_dict(calibration, None)
    path = Path(path)
    arr = np.asarray(map_stack, dtype=np.float32)
    if arr.ndim == 3:
        arr = np.moveaxis(arr, channel_axis if channel_axis is not None else 0, 0)
        axes = "CYX"
    elif arr.ndim == 2:
        axes = "YX"
    else:
        raise ValueError(f"maps must be (Y, X) or a 3-D stack, got shape {arr.shape}")
    data = np.ascontiguousarray(arr)
    buffer = io.BytesIO()
    meta: dict[str, Any] = {"axes": axes}
    kwargs: dict[str, Any] = {}
    unit = _IMAGEJ_UNITS.get(calib["scan_unit"]) if calib is not None else None
    if unit is not None:
        step_y, step_x = calib["scan_step"]
        kwargs["resolution"] = (1.0 / step_x, 1.0 / step_y)  # pixels per unit, (x, y)
        meta["unit"] = unit
    if axes == "CYX":
        meta["mode"] = "grayscale"  # 32 latent channels: not a colour composite
    tifffile.imwrite(buffer, data, imagej=True, metadata=meta, **kwargs)
    atomic_write_bytes(path, buffer.getvalue(), verify=_check_tiff(data.shape))
    return path


__all__ = ["export_hdf5", "export_tiff", "read_results", "RESULTS_FORMAT"]

"""npe2 reader and sample-data hooks. Imports neither napari nor Qt (they return layer tuples).

Contract with the widgets (metadata keys in :mod:`.keys`): the navigator image layer carries
the lazy dataset in ``layer.metadata[DATASET_KEY]`` (a :class:`Dataset4D`) and the direct-beam
estimate its bright field was summed over in ``metadata[BEAM_KEY]`` (the Data dock starts from
it rather than estimating again); sample data adds the ground truth in
``metadata[LABELS_KEY]``.

Multi-file datasets (Merlin .hdr + .mib, EMPAD .xml + .raw, Arina master + data files): napari
calls the reader once per dropped file, so any file of a set opens the whole dataset (see
``readers.primary_file``), and a dataset opened through one of its files in the last few
seconds is not opened again (the second call returns napari's "nothing to add" sentinel).
Dropping a whole set therefore gives one layer; opening the same file again later works.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data.dataset import Dataset4D
from ..data.readers import SUFFIX_FORMATS
from .keys import BEAM_KEY, DATASET_KEY, LABELS_KEY, NAVIGATOR_STRIDE_KEY

#: above this many bytes the reader computes the navigator on a strided scan grid so dropping
#: a 100 GB file does not block the viewer for minutes (the widgets compute the full one)
NAVIGATOR_FULL_BYTES = 1 * 2**30
_DEDUP_SECONDS = 3.0
_recent: dict[Path, float] = {}

LayerData = list[tuple[Any, ...]]


def _looks_like_hdf5(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def _hdf5_has_patterns(path: Path) -> bool:
    """HDF5 signature, then metadata only: some 3-5-D numeric dataset, an Arina master or EMD."""
    if not _looks_like_hdf5(path):
        return False
    import h5py

    from ..data import hdf5

    try:
        with h5py.File(path, "r") as f:
            return (hdf5.is_arina_master(f) or hdf5.is_emd_file(f) or hdf5.is_velox_emd(f)
                    or bool(hdf5.find_pattern_datasets(f)))
    except Exception:
        return False


def _accepts(path: Path) -> bool:
    """Cheap test on name and magic bytes only; never opens the data."""
    suffix = path.suffix.lower()
    if path.is_dir():
        return suffix == ".zspy"
    if not path.is_file() or suffix not in SUFFIX_FORMATS:
        return False
    if suffix in (".h5", ".hdf5", ".hdf", ".nxs", ".emd", ".hspy"):
        return _hdf5_has_patterns(path)
    if suffix == ".npy":
        try:  # a memory map reads the header only
            return np.load(path, mmap_mode="r", allow_pickle=False).ndim in (3, 4, 5)
        except Exception:
            return False
    if suffix == ".xml":
        try:
            with open(path, "rb") as fh:
                return b"<root" in fh.read(4096) or bool(list(path.parent.glob("*.raw")))
        except OSError:
            return False
    return True


def get_reader(path: str | list[str]) -> Callable[[Any], LayerData] | None:
    """npe2 ``get_reader``: a reader for 4D-STEM files, else None. Never raises."""
    try:
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        if not paths or not all(_accepts(Path(p)) for p in paths):
            return None
    except Exception:
        return None
    return read_4dstem


def read_4dstem(path: str | list[str]) -> LayerData:
    """Open each file (errors name the file) and return one navigator layer per dataset."""
    from ..data.readers import open_dataset, primary_file

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: LayerData = []
    now = time.monotonic()
    for p in paths:
        primary = primary_file(Path(p)).resolve()
        if now - _recent.get(primary, -1e9) < _DEDUP_SECONDS:
            continue
        _recent[primary] = now
        layers.extend(dataset_layers(open_dataset(primary)))
    return layers or [(None,)]


def dataset_layers(dataset: Dataset4D, name: str | None = None) -> LayerData:
    """The navigator image layer tuple for a dataset (virtual bright field)."""
    from ..data.virtual import estimate_beam, virtual_bright_field

    stride = navigator_stride(dataset)
    view = dataset if stride == 1 else dataset.with_data(dataset.data[::stride, ::stride])
    beam = estimate_beam(dataset)
    bf = virtual_bright_field(view, radius=beam.radius, centre=beam.centre).astype(np.float32)
    step = dataset.calibration.scan_step
    kwargs: dict[str, Any] = {
        "name": f"{name or dataset.name} virtual BF",
        "scale": (step[0] * stride, step[1] * stride),
        "metadata": {DATASET_KEY: dataset, BEAM_KEY: beam, NAVIGATOR_STRIDE_KEY: stride},
        "colormap": "gray",
    }
    if stride > 1:  # strided pixels sit at the centre of the block they stand for
        kwargs["translate"] = (step[0] * (stride - 1) / 2, step[1] * (stride - 1) / 2)
    if dataset.calibration.scan_unit not in ("px", ""):
        kwargs["units"] = (dataset.calibration.scan_unit,) * 2
    return [(bf, kwargs, "image")]


def navigator_stride(dataset: Dataset4D, budget: int | None = None) -> int:
    """Scan stride that keeps the navigator's read under ``budget`` bytes (1 = every position)."""
    budget = NAVIGATOR_FULL_BYTES if budget is None else budget
    nbytes = dataset.data.nbytes
    stride = 1
    while nbytes / stride**2 > budget:
        stride += 1
    return stride


def make_sample_data() -> LayerData:
    """npe2 sample-data command: the synthetic sample's navigator plus its ground truth."""
    from ..data.sample import make_sample_dataset

    dataset = make_sample_dataset()
    layers = dataset_layers(dataset, name="4D-STEM sample")
    layers[0][1]["metadata"][LABELS_KEY] = dataset.labels
    labels_kwargs = {
        "name": "4D-STEM sample ground truth",
        "scale": dataset.calibration.scan_step,
        "units": (dataset.calibration.scan_unit,) * 2,
        "metadata": {LABELS_KEY: dataset.labels, "label_names": dataset.metadata["label_names"]},
        "visible": False,
    }
    # labels 0..4 become 1..5 so vacuum is not drawn as napari's transparent background
    layers.append((dataset.labels.astype(np.int32) + 1, labels_kwargs, "labels"))
    return layers

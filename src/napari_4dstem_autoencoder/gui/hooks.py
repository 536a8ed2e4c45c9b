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

Opening never blocks the viewer for long: the navigator is read on a strided scan grid whose
read (counted in the file's storage chunks, which decode whole) stays under
``NAVIGATOR_FULL_BYTES`` and ``NAVIGATOR_MAX_POSITIONS``; data that was never written is not
read at all. The data's warnings (``DataWarning``: all zero, never written, a guessed scan
shape...) and the navigator's stride become napari notifications (napari is imported lazily,
only when a file is read).
"""

from __future__ import annotations

import errno
import math
import os
import stat
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data.chunks import strided_read_bytes
from ..data.dataset import Dataset4D
from ..data.errors import DataWarning
from ..data.readers import SUFFIX_FORMATS
from .keys import BEAM_KEY, DATASET_KEY, LABELS_KEY, NAVIGATOR_STRIDE_KEY

#: above this many bytes decoded the reader computes the navigator on a strided scan grid so
#: dropping a 100 GB file does not block the viewer for minutes (the Data dock computes the
#: full one in a worker)
NAVIGATOR_FULL_BYTES = 1 * 2**30
#: and at most this many positions (256 x 256) are read for it
NAVIGATOR_MAX_POSITIONS = 256 * 256
#: bytes decoded for the direct-beam estimate (up to 256 patterns; fewer when they are large)
BEAM_SAMPLE_BYTES = 256 * 2**20
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


def _broken(path: Path) -> bool:
    """A dangling symbolic link, a link loop, or a pipe/device/socket (reading explains which)."""
    try:
        if os.path.islink(path) and not os.path.exists(path):
            return True
        mode = os.stat(path).st_mode
        return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))
    except OSError as exc:
        return os.path.islink(path) or exc.errno == errno.ELOOP


def _accepts(path: Path) -> bool:
    """Cheap test on name and magic bytes only; never opens the data."""
    suffix = path.suffix.lower()
    if suffix in SUFFIX_FORMATS and _broken(path):
        return True  # ours by name: the reader's error says what is wrong (never a "no reader")
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
        given = Path(p)
        primary = primary_file(given)
        primary = primary.resolve() if not _broken(primary) else primary
        if now - _recent.get(primary, -1e9) < _DEDUP_SECONDS:
            continue
        _recent[primary] = now
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = open_dataset(primary)
            try:
                new = navigator_layers(dataset)
            except BaseException:
                dataset.close()  # a read error in the navigator leaves no file open
                raise
        problems = []
        for w in caught:
            if issubclass(w.category, DataWarning):
                problems.append(str(w.message))
            else:  # not ours to show: back to the normal warning machinery
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        note = navigator_note(dataset, new[0][1]["metadata"][NAVIGATOR_STRIDE_KEY])
        notify(problems, [note] if note else [])
        layers.extend(new)
    return layers or [(None,)]


def notify(problems: list[str], notes: list[str] = ()) -> None:
    """Show the data's warnings (and notes) as napari notifications; warn them without napari."""
    try:
        from napari.utils.notifications import show_info, show_warning
    except ImportError:
        for message in problems:
            warnings.warn(message, DataWarning, stacklevel=2)
        return
    for message in problems:
        show_warning(message)
    for message in notes:
        show_info(message)


def navigator_note(dataset: Dataset4D, stride: int) -> str | None:
    """What a strided (or unread) navigator stands for, for a notification; None when full."""
    if dataset.metadata.get("never_written"):
        return (f"{dataset.name}: the navigator was not read, the file holds no data "
                "(never-written fill values)")
    if stride <= 1:
        return None
    ry, rx = dataset.scan_shape
    size = dataset.data.nbytes / 2**30
    size_text = f"{size / 1024:.1f} TiB" if size >= 1024 else f"{size:.1f} GiB"
    return (f"{dataset.name}: the navigator shows every {_ordinal(stride)} scan position "
            f"({-(-ry // stride)}x{-(-rx // stride)} of {ry}x{rx}) so opening {size_text} stays "
            "quick; the Data dock's 'Compute BF / ADF navigators' computes the full one in the "
            "background")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def navigator_layers(dataset: Dataset4D, name: str | None = None) -> LayerData:
    """The navigator image layer tuple for a dataset (virtual bright field), bounded reads."""
    from ..data.virtual import (disk_mask, estimate_beam, estimate_beam_from_pattern,
                                virtual_bright_field)

    stride = navigator_stride(dataset)
    if dataset.metadata.get("never_written"):  # every value is the fill value: read nothing
        fill = float(dataset.metadata.get("fill_value") or 0)
        beam = estimate_beam_from_pattern(np.full(dataset.detector_shape, fill))
        area = float(disk_mask(dataset.detector_shape, beam.centre, beam.radius).sum())
        grid = (-(-dataset.scan_shape[0] // stride), -(-dataset.scan_shape[1] // stride))
        bf = np.full(grid, fill * area, dtype=np.float32)
    else:
        view = dataset if stride == 1 else dataset.with_data(dataset.data[::stride, ::stride])
        beam = estimate_beam(dataset, n_sample=beam_sample_size(dataset))
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


def _chunk_scan(dataset: Dataset4D) -> tuple[int, int]:
    return tuple(dataset.metadata.get("file_chunk_scan", (1, 1)))  # type: ignore[return-value]


def navigator_stride(dataset: Dataset4D, budget: int | None = None,
                     max_positions: int | None = None) -> int:
    """Scan stride that keeps the navigator's read under ``budget`` bytes (1 = every position).

    Bytes are counted as the file library decodes them: a storage chunk spanning several scan
    positions is decoded whole for each position read in it (``data.chunks.strided_read_bytes``).
    """
    budget = NAVIGATOR_FULL_BYTES if budget is None else budget
    max_positions = NAVIGATOR_MAX_POSITIONS if max_positions is None else max_positions
    ry, rx = dataset.scan_shape
    itemsize = np.dtype(dataset.dtype).itemsize
    chunk = _chunk_scan(dataset)
    stride = 1
    while stride < max(ry, rx) and (
            strided_read_bytes(dataset.shape, itemsize, stride, chunk) > budget
            or -(-ry // stride) * -(-rx // stride) > max_positions):
        stride += 1
    return stride


def beam_sample_size(dataset: Dataset4D, budget: int | None = None) -> int:
    """How many patterns the reader's direct-beam estimate reads (256 unless they are large)."""
    budget = BEAM_SAMPLE_BYTES if budget is None else budget
    cy, cx = _chunk_scan(dataset)
    per_position = math.prod(dataset.detector_shape) * np.dtype(dataset.dtype).itemsize * cy * cx
    return int(max(1, min(256, budget // max(per_position, 1))))


def make_sample_data() -> LayerData:
    """npe2 sample-data command: the synthetic sample's navigator plus its ground truth."""
    from ..data.sample import make_sample_dataset

    dataset = make_sample_dataset()
    layers = navigator_layers(dataset, name="4D-STEM sample")
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

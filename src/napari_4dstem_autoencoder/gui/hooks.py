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

Files holding several arrays that could be the data (a simulation's ``/data`` and
``/data_counts``): the reader asks which one (:func:`choose_dataset`: a list of name, shape and
dtype; cancelling opens nothing) and opens that one; tests and scripts set ``DATASET_CHOOSER``.

Which reader opens ``.h5``: napari's own reader also claims ``*.h5``/``*.hdf5``/``*.hdf`` (it
cannot read HDF5: it fails with "cannot find loader"), so without a preference napari asks
"Choose reader" for every drop. :func:`prefer_this_reader` records this plugin as the reader
for those patterns in napari's settings (the same entry napari's "remember my choice" writes,
shown in Preferences > Plugins), never replacing a preference the user set. It runs when the
reader is first used and when the Data dock opens (so also in ``stem-ae demo``); napari runs no
plugin code before a first drop, so that one drop may still ask. HDF5 files that hold no
4D-STEM data are still declined (``get_reader`` returns None).

Units: every layer of a dataset carries the same units, :func:`scan_units` (the scan's length
unit when the file is calibrated, else napari's ``pixel``), so napari's "Inconsistent units
across layers" only appears when a calibrated and an uncalibrated scan are open together (a
pixel is not a length); the reader (or the sample command) then says so once, naming both.

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
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data.chunks import strided_read_bytes
from ..data.dataset import Dataset4D
from ..data.errors import DataWarning
from ..data.readers import SUFFIX_FORMATS, AmbiguousDatasetError, Candidate
from .keys import BEAM_KEY, DATASET_KEY, LABELS_KEY, NAVIGATOR_STRIDE_KEY, PLUGIN

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

#: ``chooser(path, candidates) -> key | None``: which array to open of a file holding several
#: (``candidates``: ``readers.Candidate``; return its ``key``, or None to open nothing).
#: None: ask with a Qt list dialog (:func:`ask_with_dialog`). Tests set it.
DATASET_CHOOSER: Callable[[Path, list[Candidate]], Any] | None = None

#: file patterns napari's own reader claims too but cannot read (HDF5): this plugin's reader
#: is recorded as the preferred one for them (:func:`prefer_this_reader`)
PREFERRED_PATTERNS = ("*.h5", "*.hdf5", "*.hdf")


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


def prefer_this_reader(settings: Any = None) -> list[str]:
    """Make this plugin napari's preferred reader for :data:`PREFERRED_PATTERNS` (HDF5), so
    dropping a 4D-STEM ``.h5`` opens it without napari's "Choose reader" dialog.

    A pattern the user already associated with a reader is left alone. Returns the patterns
    set now. Never raises (no napari, or settings that cannot be written: nothing happens).
    """
    try:
        if settings is None:
            from napari.settings import get_settings

            settings = get_settings()
        current = dict(settings.plugins.extension2reader)
        new = [p for p in PREFERRED_PATTERNS if p not in current]
        if new:
            current.update({p: PLUGIN for p in new})
            settings.plugins.extension2reader = current
        return new
    except Exception:
        return []


def get_reader(path: str | list[str]) -> Callable[[Any], LayerData] | None:
    """npe2 ``get_reader``: a reader for 4D-STEM files, else None. Never raises."""
    if "napari" in sys.modules:  # inside napari (a script's call imports no GUI)
        prefer_this_reader()
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
        name = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                dataset = open_dataset(primary)
            except AmbiguousDatasetError as exc:
                key = choose_dataset(primary, exc.candidates)
                if key is None:  # the user cancelled: nothing opens (and it may be dropped again)
                    _recent.pop(primary, None)
                    continue
                dataset = open_dataset(primary, dataset=key)
                chosen = next((c for c in exc.candidates if c.key == key), None)
                label = (chosen.title if chosen is not None and chosen.title
                         else str(key).strip("/"))
                name = f"{dataset.name} [{label}]"
            try:
                new = navigator_layers(dataset, name=name)
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
        clash = units_clash_note(dataset)
        notify(problems + ([clash] if clash else []), [note] if note else [])
        layers.extend(new)
    return layers or [(None,)]


def choose_dataset(path: Path, candidates: list[Candidate]) -> Any:
    """Which of ``candidates`` to open (its ``key``), or None: :data:`DATASET_CHOOSER`, else a
    dialog. Without a running Qt application the file's own error is raised (it lists them)."""
    if DATASET_CHOOSER is not None:
        return DATASET_CHOOSER(path, candidates)
    return ask_with_dialog(path, candidates)


def ask_with_dialog(path: Path, candidates: list[Candidate]) -> Any:
    """A list dialog: 'name  shape  dtype' per candidate; OK opens it, Cancel opens nothing."""
    try:
        from qtpy.QtWidgets import QApplication, QDialog, QInputDialog
    except ImportError:
        raise AmbiguousDatasetError(path, candidates) from None
    app = QApplication.instance()
    if app is None:
        raise AmbiguousDatasetError(path, candidates)
    items = [c.describe() for c in candidates]
    dialog = QInputDialog(app.activeWindow())
    dialog.setWindowTitle("Which array is the 4D-STEM data?")
    dialog.setLabelText(f"{path.name} holds several arrays that could be the 4D-STEM data.\n"
                        "Choose one (name, scan × detector shape, type):")
    dialog.setOption(QInputDialog.InputDialogOption.UseListViewForComboBoxItems, True)
    dialog.setComboBoxItems(items)
    dialog.setTextValue(items[0])
    dialog.setOkButtonText("Open")
    try:
        accepted = dialog.exec() == QDialog.DialogCode.Accepted
        choice = dialog.textValue()
    finally:
        dialog.deleteLater()
    if not accepted or choice not in items:
        return None
    return candidates[items.index(choice)].key


def scan_units(calibration: Any) -> tuple[str, str]:
    """The (row, column) units every real-space layer of a dataset carries: the scan's unit
    when it is a length napari knows (Å, nm, µm...), else ``pixel`` (uncalibrated scans)."""
    unit = str(getattr(calibration, "scan_unit", "") or "")
    if unit in ("", "px", "pixel", "pixels"):
        return ("pixel", "pixel")
    try:
        import pint

        if not pint.get_application_registry().Unit(unit).is_compatible_with("meter"):
            return ("pixel", "pixel")
    except Exception:  # an unknown unit: napari could not use it either
        return ("pixel", "pixel")
    return (unit, unit)


def units_clash_note(dataset: Dataset4D, name: str | None = None) -> str | None:
    """One message when ``dataset``'s units cannot share napari's canvas with the layers already
    open (a calibrated and an uncalibrated scan): napari then ignores units while both are open."""
    name = name or dataset.name
    try:
        from napari import current_viewer

        viewer = current_viewer()
    except Exception:
        return None
    if viewer is None:
        return None
    mine_pixel = scan_units(dataset.calibration)[0] == "pixel"
    for layer in viewer.layers:
        try:
            units = [str(u) for u in layer.units[-2:]]
        except Exception:
            continue
        other_pixel = all(u == "pixel" for u in units)
        if other_pixel != mine_pixel:
            other = layer.name.removesuffix(" virtual BF")
            calibrated = other if mine_pixel else name
            plain = name if mine_pixel else other
            return (f"{plain} has no scan calibration (shown in pixels) while {calibrated} is "
                    "in length units: napari cannot put pixels and lengths on one scale, so it "
                    "draws both without units (its 'Inconsistent units' warning) until one of "
                    "them is closed")
    return None


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
    kwargs["units"] = scan_units(dataset.calibration)
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
        "units": scan_units(dataset.calibration),
        "metadata": {LABELS_KEY: dataset.labels, "label_names": dataset.metadata["label_names"]},
        "visible": False,
    }
    # labels 0..4 become 1..5 so vacuum is not drawn as napari's transparent background
    layers.append((dataset.labels.astype(np.int32) + 1, labels_kwargs, "labels"))
    clash = units_clash_note(dataset, "4D-STEM sample")
    if clash:
        notify([clash])
    return layers

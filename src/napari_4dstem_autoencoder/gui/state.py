"""Shared plugin state, one per napari viewer, evented with psygnal so docks update each other.

Every dock asks :func:`get_state` for the state of its viewer. The state holds what the docks
share: the current dataset (found through a layer's ``metadata["stem4d_dataset"]``), the
preprocessing chosen in the Data dock, the loaded model, the embeddings and error maps it
produced, the selected probe position and the projection selection. It also owns the mapping
between world coordinates and the two scan grids (the file's grid, and the model's grid after
scan crop/bin), so every real-space layer lines up.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

if TYPE_CHECKING:  # pragma: no cover
    from ..data.dataset import Dataset4D
    from ..data.preprocess import PreprocessConfig

DATASET_KEY = "stem4d_dataset"
#: layers this plugin creates on the real-space canvas carry this metadata flag
REALSPACE_KEY = "stem4d_realspace"


@dataclass(frozen=True)
class ScanGeometry:
    """How a grid derived by scan crop + bin sits on the file's scan grid.

    ``offset`` is the crop origin (rows, cols) in file pixels, ``factor`` the bin factor,
    ``step`` the file's scan step (world units per file pixel).
    """

    offset: tuple[int, int] = (0, 0)
    factor: int = 1
    step: tuple[float, float] = (1.0, 1.0)
    shape: tuple[int, int] = (1, 1)  # shape of the derived grid

    @classmethod
    def for_preprocess(cls, dataset: "Dataset4D", config: "PreprocessConfig | None") -> "ScanGeometry":
        ry, rx = dataset.scan_shape
        step = tuple(float(s) for s in dataset.calibration.scan_step)
        if config is None:
            return cls((0, 0), 1, step, (ry, rx))
        y0, x0 = 0, 0
        if config.scan_crop is not None:
            y0, y1, x0, x1 = config.scan_crop
            ry, rx = min(y1, ry) - y0, min(x1, rx) - x0
        f = int(config.scan_bin)
        return cls((int(y0), int(x0)), f, step, (max(ry // f, 1), max(rx // f, 1)))

    @property
    def scale(self) -> tuple[float, float]:
        """World size of one derived-grid pixel (napari layer ``scale``)."""
        return self.step[0] * self.factor, self.step[1] * self.factor

    @property
    def translate(self) -> tuple[float, float]:
        """World position of derived pixel (0, 0)'s centre (napari layer ``translate``)."""
        half = (self.factor - 1) / 2
        return (self.offset[0] + half) * self.step[0], (self.offset[1] + half) * self.step[1]

    def to_grid(self, ry: int, rx: int) -> tuple[int, int] | None:
        """File position -> derived-grid index, or None when it lies outside the grid."""
        gy = (int(ry) - self.offset[0]) // self.factor
        gx = (int(rx) - self.offset[1]) // self.factor
        if 0 <= gy < self.shape[0] and 0 <= gx < self.shape[1]:
            return gy, gx
        return None

    def from_grid(self, gy: int, gx: int) -> tuple[int, int]:
        """Derived-grid index -> the file position of its first (top-left) pixel."""
        return self.offset[0] + int(gy) * self.factor, self.offset[1] + int(gx) * self.factor


class StemState:
    """What the docks of one viewer share. Change it through the setters so signals fire."""

    dataset_changed = Signal(object)  # Dataset4D | None
    preprocess_changed = Signal(object)  # PreprocessConfig
    model_changed = Signal(object)  # LoadedModel | None
    embeddings_changed = Signal(object)  # np.ndarray (Ry', Rx', 32) | None
    error_maps_changed = Signal(object)  # dict[str, np.ndarray] | None
    position_changed = Signal(int, int)  # file scan position (ry, rx)
    selection_changed = Signal(object)  # bool mask on the model grid, or None
    busy_changed = Signal(str, bool)  # (task name, busy)

    def __init__(self, viewer: Any) -> None:
        self._viewer_ref = weakref.ref(viewer)
        self.dataset: Dataset4D | None = None
        self.dataset_layer_name: str | None = None
        self.preprocess_config: PreprocessConfig | None = None
        self.model: Any = None  # training.checkpoints.LoadedModel
        self.checkpoint_path: str | None = None
        self.embeddings: np.ndarray | None = None
        self.error_maps: dict[str, np.ndarray] | None = None
        self.embedding_geometry: ScanGeometry | None = None
        self.position: tuple[int, int] | None = None
        self.selection: np.ndarray | None = None
        self.device: str = "cpu"

    @property
    def viewer(self) -> Any:
        return self._viewer_ref()

    # -- setters -------------------------------------------------------------------------
    def set_dataset(self, dataset: "Dataset4D | None", layer_name: str | None = None) -> None:
        if dataset is self.dataset:
            return
        self.dataset = dataset
        self.dataset_layer_name = layer_name
        self.embeddings = None
        self.error_maps = None
        self.selection = None
        self.position = None
        self.dataset_changed.emit(dataset)
        if dataset is not None:
            ry, rx = dataset.scan_shape
            self.set_position(ry // 2, rx // 2)

    def set_preprocess(self, config: "PreprocessConfig") -> None:
        self.preprocess_config = config
        self.preprocess_changed.emit(config)

    def set_model(self, loaded: Any, checkpoint_path: str | None = None) -> None:
        self.model = loaded
        self.checkpoint_path = checkpoint_path
        self.model_changed.emit(loaded)
        if self.position is not None:  # refresh the inspector with the new model
            self.position_changed.emit(*self.position)

    def set_embeddings(self, embeddings: np.ndarray | None,
                       error_maps: dict[str, np.ndarray] | None = None) -> None:
        self.embeddings = None if embeddings is None else np.asarray(embeddings, dtype=np.float32)
        self.embedding_geometry = self.model_geometry() if embeddings is not None else None
        self.error_maps = error_maps
        self.selection = None
        self.embeddings_changed.emit(self.embeddings)
        self.error_maps_changed.emit(error_maps)

    def set_position(self, ry: int, rx: int) -> None:
        """Select a probe position on the file's scan grid (clamped to the grid)."""
        if self.dataset is None:
            return
        ny, nx = self.dataset.scan_shape
        pos = (int(np.clip(ry, 0, ny - 1)), int(np.clip(rx, 0, nx - 1)))
        self.position = pos
        self.position_changed.emit(*pos)

    def move_position(self, dy: int, dx: int) -> None:
        """Step the probe by whole pixels of the model grid (file grid when no model)."""
        if self.position is None:
            return
        f = self.model_geometry().factor if self.dataset is not None else 1
        self.set_position(self.position[0] + dy * f, self.position[1] + dx * f)

    def set_selection(self, mask: np.ndarray | None) -> None:
        self.selection = mask
        self.selection_changed.emit(mask)

    # -- geometry ------------------------------------------------------------------------
    def active_preprocess_config(self) -> "PreprocessConfig | None":
        """The model's preprocessing when a model is loaded, else the Data dock's choice."""
        if self.model is not None:
            return self.model.preprocessor.config
        return self.preprocess_config

    def model_geometry(self) -> ScanGeometry:
        if self.dataset is None:
            raise RuntimeError("no dataset selected")
        return ScanGeometry.for_preprocess(self.dataset, self.active_preprocess_config())

    def file_geometry(self) -> ScanGeometry:
        if self.dataset is None:
            raise RuntimeError("no dataset selected")
        return ScanGeometry.for_preprocess(self.dataset, None)

    def world_to_position(self, world: tuple[float, ...]) -> tuple[int, int] | None:
        """World (…, y, x) -> file scan position, or None outside the scan."""
        if self.dataset is None:
            return None
        y, x = float(world[-2]), float(world[-1])
        step = self.file_geometry().step
        ry, rx = int(np.floor(y / step[0] + 0.5)), int(np.floor(x / step[1] + 0.5))
        ny, nx = self.dataset.scan_shape
        if 0 <= ry < ny and 0 <= rx < nx:
            return ry, rx
        return None

    def grid_position(self) -> tuple[int, int] | None:
        """The selected position on the model grid (None when outside it or nothing selected)."""
        if self.position is None or self.dataset is None:
            return None
        return self.model_geometry().to_grid(*self.position)


_STATES: dict[int, tuple[weakref.ref, StemState]] = {}


def unwrap_viewer(viewer: Any) -> Any:
    """The real napari Viewer behind napari's PublicOnlyProxy (docks receive a proxy)."""
    return getattr(viewer, "__wrapped__", viewer)


def get_state(viewer: Any) -> StemState:
    """The one :class:`StemState` of ``viewer`` (created on first use, dropped with the viewer).

    Docks connect bound methods (held weakly by psygnal), so the state never keeps a dock,
    or its viewer, alive.
    """
    real = unwrap_viewer(viewer)
    key = id(real)
    entry = _STATES.get(key)
    if entry is not None and entry[0]() is real:
        return entry[1]
    state = StemState(real)
    _STATES[key] = (weakref.ref(real), state)
    weakref.finalize(real, _forget, key, state)
    return state


def _forget(key: int, state: StemState) -> None:
    entry = _STATES.get(key)
    if entry is not None and entry[1] is state:
        del _STATES[key]


def dataset_layers(viewer: Any) -> list[Any]:
    """Layers that carry a 4D-STEM dataset (the reader's and sample's navigator images)."""
    return [layer for layer in unwrap_viewer(viewer).layers
            if layer.metadata.get(DATASET_KEY) is not None]

"""Shared plugin state, one per napari viewer, evented with psygnal so docks update each other.

Every dock asks :func:`get_state` for the state of its viewer. The state holds what the docks
share: the current dataset (found through a layer's ``metadata[DATASET_KEY]``, see
:func:`dataset_layers`), the preprocessing chosen in the Data dock, the loaded model, the
embeddings and error maps it produced, the selected probe position and the projection
selection. It also owns the mapping between world coordinates and the two scan grids (the
file's grid, and the model's grid after scan crop/bin), so every real-space layer lines up.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from .keys import BEAM_KEY, DATASET_KEY

if TYPE_CHECKING:  # pragma: no cover (annotations only: never imported at run time)
    from ..data.dataset import Dataset4D
    from ..data.preprocess import PreprocessConfig


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
        """The grid ``config``'s scan view of ``dataset`` has (the file's grid for ``None``),
        by the preprocessing's own rule (``PreprocessConfig.scan_grid``): a crop that does
        not fit the scan raises ValueError, as the scan view does."""
        step = tuple(float(s) for s in dataset.calibration.scan_step)
        if config is None:
            return cls((0, 0), 1, step, tuple(int(n) for n in dataset.scan_shape))
        offset, factor, shape = config.scan_grid(dataset.scan_shape)
        return cls(offset, factor, step, shape)

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


class StemState:
    """What the docks of one viewer share. Change it through the setters so signals fire."""

    dataset_changed = Signal(object)  # Dataset4D | None
    preprocess_changed = Signal(object)  # PreprocessConfig
    model_changed = Signal(object)  # LoadedModel | None
    embeddings_changed = Signal(object)  # np.ndarray (Ry', Rx', 32) | None
    #: a training run's live embeddings (Ry'', Rx'', 32), every ``positions_step``-th position
    #: of its grid (ScanGeometry); shown like embeddings, but not kept as the state's embeddings
    preview_changed = Signal(object, int, object)
    error_maps_changed = Signal(object)  # dict[str, np.ndarray] | None
    #: the embedding pass's kept reconstructions (inference.reconstructions.ReconstructionStore)
    reconstructions_changed = Signal(object)
    position_changed = Signal(int, int)  # file scan position (ry, rx)
    selection_changed = Signal(object)  # bool mask on the model grid, or None
    busy_changed = Signal(str, bool)  # (task name, busy)

    def __init__(self, viewer: Any) -> None:
        self._viewer_ref = weakref.ref(viewer)
        self.dataset: Dataset4D | None = None
        self.dataset_layer_name: str | None = None
        self.preprocess_config: PreprocessConfig | None = None
        self.model: Any = None  # training.checkpoints.LoadedModel (its file: .path)
        self.embeddings: np.ndarray | None = None
        self.error_maps: dict[str, np.ndarray] | None = None
        #: reconstructions kept by the last embedding pass; its ``source`` is the
        #: (model, dataset) pair they belong to. Dropped (and its files removed) when the
        #: model or the dataset changes.
        self.reconstructions: Any = None
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
        self.set_reconstructions(None)
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

    def set_model(self, loaded: Any) -> None:
        if loaded is not self.model:
            self.set_reconstructions(None)
        self.model = loaded
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

    def set_reconstructions(self, store: Any) -> None:
        """Keep an embedding pass's reconstructions (None: drop them); the store replaced is
        closed, which removes its on-disk files."""
        old, self.reconstructions = self.reconstructions, store
        if old is store:
            return
        if old is not None:
            old.close()
        self.reconstructions_changed.emit(store)

    def stored_reconstruction(self, gy: int, gx: int) -> np.ndarray | None:
        """The kept reconstruction at model-grid position (gy, gx), float32 (H, W), when the
        state holds one made by the current model from the current dataset; else None."""
        store = self.reconstructions
        if store is None or self.model is None or store.source is None:
            return None
        loaded, dataset = store.source
        if loaded is not self.model or dataset is not self.dataset or not store.has(gy, gx):
            return None
        return store.get(gy, gx)

    def set_preview(self, embeddings: np.ndarray, positions_step: int,
                    geometry: ScanGeometry) -> None:
        """Show a training run's live embeddings (``geometry``: the run's scan grid)."""
        self.preview_changed.emit(np.asarray(embeddings, dtype=np.float32), int(positions_step),
                                  geometry)

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
        config = self.active_preprocess_config() if self.dataset is not None else None
        f = int(config.scan_bin) if config is not None else 1
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
        """The selected position on the model grid (None when outside it, when the active
        preprocessing does not fit the dataset, or when nothing is selected)."""
        if self.position is None or self.dataset is None:
            return None
        try:
            geometry = self.model_geometry()
        except ValueError:  # e.g. a scan crop chosen for a larger dataset
            return None
        return geometry.to_grid(*self.position)


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


def layer_dataset(layer: Any) -> "Dataset4D | None":
    """The 4D-STEM dataset ``layer`` stands for (the reader's, the sample's or the Data dock's
    bright-field navigator), or None."""
    return layer.metadata.get(DATASET_KEY)


def dataset_layers(viewer: Any) -> list[Any]:
    """The layers of ``viewer`` that carry a dataset, in layer order (the one filter)."""
    return [layer for layer in unwrap_viewer(viewer).layers if layer_dataset(layer) is not None]


def dataset_beam(viewer: Any, dataset: "Dataset4D") -> Any:
    """The reader's direct-beam estimate of ``dataset`` (a ``BeamEstimate``) from a layer that
    carries it, or None (e.g. a layer made by a script)."""
    for layer in dataset_layers(viewer):
        if layer_dataset(layer) is dataset and layer.metadata.get(BEAM_KEY) is not None:
            return layer.metadata[BEAM_KEY]
    return None

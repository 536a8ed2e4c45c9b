"""Projection dock: a 2-D scatter of the embeddings, linked both ways to real space.

Drawing a lasso around points highlights their positions on the canvas (a Labels layer) and
shows their mean pattern; selecting a probe position highlights its point in the scatter.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pyqtgraph as pg
from matplotlib.path import Path as PolyPath
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from . import backend
from .canvas import adopt_first_dataset, install, upsert_labels
from .state import unwrap_viewer
from .views import PatternPanels, log_display
from .workers import LatestOnly, start_function

SELECTION_LAYER = "AE projection selection"
MEAN_MAX_PATTERNS = 4096  # the selection mean reads at most this many patterns (evenly spaced)


class LassoViewBox(pg.ViewBox):
    """A ViewBox where a left-drag draws a lasso (when ``lasso`` is on) instead of panning."""

    def __init__(self, on_lasso: Callable[[np.ndarray], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lasso = True
        self._on_lasso = on_lasso
        self._path: list[tuple[float, float]] = []
        self._curve = pg.PlotCurveItem(pen=pg.mkPen("#ffeb3b", width=1.5))
        self.addItem(self._curve, ignoreBounds=True)

    def mouseDragEvent(self, ev: Any, axis: Any = None) -> None:  # noqa: N802 (Qt API)
        if not self.lasso or ev.button() != Qt.MouseButton.LeftButton:
            super().mouseDragEvent(ev, axis)
            return
        ev.accept()
        p = self.mapSceneToView(ev.scenePos())
        if ev.isStart():
            self._path = []
        self._path.append((p.x(), p.y()))
        xy = np.asarray(self._path + self._path[:1])
        self._curve.setData(xy[:, 0], xy[:, 1])
        if ev.isFinish():
            vertices = np.asarray(self._path)
            self._path = []
            if len(vertices) >= 3:
                self._on_lasso(vertices)


class ProjectionWidget(QWidget):
    """2-D projection (PCA or UMAP) of the embeddings, with lasso selection."""

    projected = Signal()
    selection_shown = Signal()

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = unwrap_viewer(napari_viewer)
        self.state = install(napari_viewer)
        self.points: np.ndarray | None = None  # (N, 2) on the model grid, row-major
        self.selected: np.ndarray | None = None  # flat indices
        self.mean_pattern: np.ndarray | None = None
        self._worker: Any = None

        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.method = QComboBox()
        self.method.addItems(["pca", "umap"])
        self.project_button = QPushButton("Project")
        self.clear_button = QPushButton("Clear selection")
        row.addWidget(QLabel("method"))
        row.addWidget(self.method)
        row.addWidget(self.project_button)
        row.addWidget(self.clear_button)
        layout.addLayout(row)

        self.box = LassoViewBox(self._on_lasso, enableMenu=False)
        self.plot = pg.PlotWidget(viewBox=self.box, background="#262930")
        self.plot.setMinimumHeight(220)
        self.plot.hideAxis("left")
        self.plot.hideAxis("bottom")
        self.scatter = pg.ScatterPlotItem(size=3, pen=None, brush=pg.mkBrush(79, 195, 247, 90))
        self.chosen = pg.ScatterPlotItem(size=4, pen=None, brush=pg.mkBrush(255, 235, 59, 200))
        self.marker = pg.ScatterPlotItem(size=14, symbol="+", pen=pg.mkPen("#00e5ff", width=2),
                                         brush=None)
        for item in (self.scatter, self.chosen, self.marker):
            self.box.addItem(item)
        layout.addWidget(self.plot, 1)
        hint = QLabel("Drag to draw a lasso around points; right-drag zooms.")
        hint.setStyleSheet("color: gray")
        layout.addWidget(hint)
        self.mean_panel = PatternPanels(["mean pattern of the selection"], height=150)
        layout.addWidget(self.mean_panel)
        self.info_label = QLabel("")
        layout.addWidget(self.info_label)

        self._mean = LatestOnly(self._mean_of, self._show_mean, what="Selection mean pattern",
                                 owner=self)
        self.project_button.clicked.connect(self.project)
        self.clear_button.clicked.connect(lambda: self.select_indices(np.empty(0, dtype=np.int64)))
        self.state.embeddings_changed.connect(self._on_embeddings)
        self.state.position_changed.connect(self._show_marker)
        adopt_first_dataset(napari_viewer, self.state)
        self._on_embeddings(self.state.embeddings)

    # -- projection --------------------------------------------------------------------------
    def _on_embeddings(self, embeddings: np.ndarray | None) -> None:
        self.project_button.setEnabled(embeddings is not None)
        self.points = None
        self.scatter.clear()
        self.chosen.clear()
        self.marker.clear()
        if embeddings is not None and self.isVisible():
            self.project()

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        super().showEvent(event)
        if self.points is None and self.state.embeddings is not None and self._worker is None:
            self.project()

    def project(self) -> Any:
        emb = self.state.embeddings
        if emb is None or self._worker is not None:
            return None
        self.project_button.setEnabled(False)

        def done() -> None:
            if self._worker is worker:
                self._worker = None
            self.project_button.setEnabled(
                self._worker is None and self.state.embeddings is not None)

        def result(points: np.ndarray, emb: np.ndarray = emb) -> None:
            done()  # free the dock before `projected` is emitted: a listener may project again
            if emb is self.state.embeddings:
                self._show_points(points)

        worker = start_function(backend.project, emb, self.method.currentText(),
                                what="Projection", on_result=result, on_finished=done, owner=self)
        self._worker = worker
        return worker

    def _show_points(self, points: np.ndarray) -> None:
        self.points = np.asarray(points, dtype=np.float32)
        self.scatter.setData(self.points[:, 0], self.points[:, 1])
        self.box.autoRange()
        self._show_marker()
        self.projected.emit()

    def _show_marker(self) -> None:
        grid = self.state.grid_position()
        if self.points is None or grid is None or self.state.embeddings is None:
            self.marker.clear()
            return
        nx = self.state.embeddings.shape[1]
        p = self.points[grid[0] * nx + grid[1]]
        self.marker.setData([float(p[0])], [float(p[1])])

    @property
    def marker_position(self) -> tuple[float, float] | None:
        """Scatter coordinates of the highlighted point (the selected probe position)."""
        x, y = self.marker.getData()
        return (float(x[0]), float(y[0])) if len(x) else None

    # -- selection ---------------------------------------------------------------------------
    def _on_lasso(self, vertices: np.ndarray) -> None:
        self.select_polygon(vertices)

    def select_polygon(self, vertices: np.ndarray) -> np.ndarray:
        """Select the points inside the polygon ``vertices`` (K, 2) in scatter coordinates."""
        if self.points is None:
            return np.empty(0, dtype=np.int64)
        inside = PolyPath(np.asarray(vertices, dtype=float)).contains_points(self.points)
        idx = np.flatnonzero(inside)
        self.select_indices(idx)
        return idx

    def select_indices(self, flat_indices: np.ndarray) -> None:
        """Highlight these positions (flat, model grid) on the canvas and show their mean."""
        emb = self.state.embeddings
        if emb is None:
            return
        idx = np.asarray(flat_indices, dtype=np.int64)
        self.selected = idx
        ry, rx = emb.shape[:2]
        mask = np.zeros(ry * rx, dtype=bool)
        mask[idx] = True
        mask = mask.reshape(ry, rx)
        geo = self.state.embedding_geometry
        if self.points is not None:
            self.chosen.setData(self.points[idx, 0], self.points[idx, 1])
        upsert_labels(self.viewer, SELECTION_LAYER, mask.astype(np.uint8), scale=geo.scale,
                      translate=geo.translate, opacity=0.5)
        self.state.set_selection(mask)
        self.info_label.setText(f"{idx.size} positions selected")
        if idx.size:
            self._mean.submit(idx.size, idx)
        else:
            self.mean_pattern = None
            self.mean_panel.set_image(0, None)
            self.selection_shown.emit()

    def _mean_of(self, idx: np.ndarray) -> np.ndarray:
        state = self.state
        loaded, dataset = state.model, state.dataset
        view = loaded.preprocessor.scan_view(dataset) if loaded is not None else dataset
        if idx.size > MEAN_MAX_PATTERNS:  # evenly spaced subset: bounded time and memory
            idx = idx[np.linspace(0, idx.size - 1, MEAN_MAX_PATTERNS).astype(np.int64)]
        raw = view.patterns(idx).astype(np.float32)
        if loaded is not None:
            return loaded.preprocessor.transform_patterns(raw).mean(axis=0)
        return log_display(raw.mean(axis=0))

    def _show_mean(self, _key: Any, mean: np.ndarray) -> None:
        self.mean_pattern = mean
        self.mean_panel.set_image(0, mean, (0.0, max(float(mean.max()), 1e-6)))
        self.selection_shown.emit()

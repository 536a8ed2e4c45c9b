"""Traversal dock: sliders over latent dimensions that decode a pattern live.

The start point is the embedding of the selected probe position; the sliders cover the most
variable dimensions over the scan's range of each. Decoding runs in a worker that drops stale
requests, so dragging a slider never queues work.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import backend
from .canvas import adopt_first_dataset, install
from .latent_widget import channels_by_variance
from .views import DIFF_CMAP, PATTERN_CMAP, PatternPanels
from .workers import LatestOnly

STEPS = 200


class TraversalWidget(QWidget):
    """Decode a latent vector edited with sliders, starting from the selected position."""

    decoded = Signal()

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = install(napari_viewer)
        self.z: np.ndarray | None = None
        self.z_start: np.ndarray | None = None
        self.dims: list[int] = []
        self.decoded_image: np.ndarray | None = None
        self.start_image: np.ndarray | None = None
        self._ranges: dict[int, tuple[float, float]] = {}
        self._sliders: list[QSlider] = []
        self._value_labels: list[QLabel] = []

        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.n_dims = QSpinBox(minimum=1, maximum=32, value=6)
        self.reset_button = QPushButton("Reset to probe position")
        row.addWidget(QLabel("sliders"))
        row.addWidget(self.n_dims)
        row.addWidget(self.reset_button)
        layout.addLayout(row)
        self.form = QFormLayout()
        layout.addLayout(self.form)
        self.panels = PatternPanels(["decoded", "change from start"], [PATTERN_CMAP, DIFF_CMAP],
                                    height=170)
        layout.addWidget(self.panels, 1)
        self.info_label = QLabel("Needs a model and embeddings.")
        self.info_label.setWordWrap(True)
        layout.addWidget(self.info_label)

        self._decoder = LatestOnly(self._decode, self._show_decoded, what="Decoding", owner=self)
        self.n_dims.valueChanged.connect(lambda *_: self._build_sliders())
        self.reset_button.clicked.connect(self.reset)
        self.state.embeddings_changed.connect(self._build_sliders)
        self.state.position_changed.connect(self.reset)
        adopt_first_dataset(napari_viewer, self.state)
        self._build_sliders()

    def _build_sliders(self) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        self._sliders, self._value_labels = [], []
        emb = self.state.embeddings
        if emb is None or self.state.model is None:
            self.dims = []
            return
        flat = emb.reshape(-1, emb.shape[-1])
        self.dims = channels_by_variance(emb)[: self.n_dims.value()]
        for d in self.dims:
            lo, hi = float(flat[:, d].min()), float(flat[:, d].max())
            pad = 0.25 * (hi - lo) if hi > lo else 1.0
            self._ranges[d] = (max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad)
            slider = QSlider(Qt.Orientation.Horizontal, minimum=0, maximum=STEPS)
            label = QLabel("")
            label.setMinimumWidth(50)
            row = QHBoxLayout()
            row.addWidget(slider, 1)
            row.addWidget(label)
            self.form.addRow(f"latent {d}", row)
            slider.valueChanged.connect(lambda v, d=d, label=label: self._on_slider(d, v, label))
            self._sliders.append(slider)
            self._value_labels.append(label)
        self.reset()

    def reset(self) -> None:
        """Start again from the embedding of the selected probe position."""
        emb, grid = self.state.embeddings, self.state.grid_position()
        if emb is None or grid is None or self.state.model is None or not self.dims:
            return
        if grid[0] >= emb.shape[0] or grid[1] >= emb.shape[1]:
            return
        self.z_start = emb[grid].astype(np.float32).copy()
        self.z = self.z_start.copy()
        self.start_image = None
        for slider, label, d in zip(self._sliders, self._value_labels, self.dims):
            slider.blockSignals(True)
            slider.setValue(self._to_steps(d, float(self.z[d])))
            slider.blockSignals(False)
            label.setText(f"{self.z[d]:.3g}")
        self.info_label.setText(f"start: position {self.state.position}")
        self._request()

    def _to_steps(self, d: int, value: float) -> int:
        lo, hi = self._ranges[d]
        return int(round((value - lo) / (hi - lo) * STEPS))

    def _on_slider(self, d: int, steps: int, label: QLabel) -> None:
        if self.z is None:
            return
        lo, hi = self._ranges[d]
        self.z[d] = lo + (hi - lo) * steps / STEPS
        label.setText(f"{self.z[d]:.3g}")
        self._request()

    def set_dimension(self, d: int, value: float) -> None:
        """Set latent dimension ``d`` to ``value`` and decode (scripting and tests)."""
        if self.z is None:
            raise RuntimeError("no start point: load a model, embed and select a position")
        self.z[d] = float(value)
        if d in self.dims:
            i = self.dims.index(d)
            self._sliders[i].blockSignals(True)
            self._sliders[i].setValue(self._to_steps(d, float(value)))
            self._sliders[i].blockSignals(False)
            self._value_labels[i].setText(f"{value:.3g}")
        self._request()

    def _request(self) -> None:
        loaded = self.state.model
        if loaded is None or self.z is None:
            return
        self._decoder.submit(None, loaded, self.z.copy(), tuple(loaded.input_shape))

    def _decode(self, loaded: Any, z: np.ndarray, shape: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
        return z, backend.decode_latent(loaded, z, shape)

    def _show_decoded(self, _key: Any, result: tuple[np.ndarray, np.ndarray]) -> None:
        z, image = result
        self.decoded_image = image
        if self.start_image is None and self.z_start is not None and np.array_equal(z, self.z_start):
            self.start_image = image
        self.panels.set_image(0, image, (0.0, 1.0))
        if self.start_image is not None:
            diff = image - self.start_image
            lim = max(float(np.abs(diff).max()), 1e-6)
            self.panels.set_image(1, diff, (-lim, lim))
        self.decoded.emit()

"""Inspector dock: raw | reconstruction | difference at the selected probe position.

Reading one pattern and preprocessing it (what the first panel shows) are done at once on the
GUI thread. After an embedding pass the reconstruction is the one the pass kept (the state's
``reconstructions``, made by the same model object from the same dataset): it is drawn at once,
with nothing decoded. Otherwise the pattern is encoded and decoded in a worker that drops stale
requests (:class:`.workers.LatestOnly`), so clicking or holding an arrow key never queues up
decodes and never blocks the GUI thread, even while training.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from . import backend
from .canvas import adopt_first_dataset, install
from .views import DIFF_CMAP, PATTERN_CMAP, PatternPanels, log_display
from .workers import LatestOnly


def _read_pattern(view: Any, ry: int, rx: int) -> np.ndarray:
    """``view.pattern(ry, rx)`` with dask's synchronous scheduler: one small chunk, read on the
    calling thread, never waits for a pool thread to be scheduled (which, on a busy machine,
    took longer than the read)."""
    return np.asarray(view.data[int(ry), int(rx)].compute(scheduler="synchronous"))


class InspectorWidget(QWidget):
    """Shows the pattern at the probe position next to the model's reconstruction.

    The displayed arrays are public for scripts and tests: ``raw_pattern`` (the pattern as
    read, in the file's dtype, on the model's scan grid), ``input_image`` (what the network
    sees, or log display without a model), ``recon_image``, ``diff_image`` (recon − input),
    ``psnr`` and ``ssim``. ``updated`` fires each time the display is complete.
    ``recon_source`` says where the reconstruction came from: ``"stored"`` (kept by the
    embedding pass) or ``"decoded"``; ``last_decode_s`` is the last decode's time.
    """

    updated = Signal()

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = install(napari_viewer)
        self.raw_pattern: np.ndarray | None = None
        self.input_image: np.ndarray | None = None
        self.recon_image: np.ndarray | None = None
        self.diff_image: np.ndarray | None = None
        self.psnr: float | None = None
        self.ssim: float | None = None
        self.position: tuple[int, int] | None = None
        self.last_decode_s: float | None = None
        self.recon_source: str | None = None
        self._view_cache: tuple[Any, Any, Any] | None = None

        layout = QVBoxLayout(self)
        self.position_label = QLabel("no dataset: open a file or the sample")
        self.metrics_label = QLabel("")
        self.panels = PatternPanels(["raw (log)", "reconstruction", "difference"],
                                    [PATTERN_CMAP, PATTERN_CMAP, DIFF_CMAP])
        layout.addWidget(self.position_label)
        layout.addWidget(self.panels, 1)
        layout.addWidget(self.metrics_label)
        hint = QLabel("Click a real-space layer, or use the arrow keys on a 2-D map, to move "
                      "the probe.")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: gray")
        layout.addWidget(hint)

        self._decoder = LatestOnly(self._reconstruct, self._show_reconstruction,
                                   what="Reconstructing the pattern", owner=self)
        self.state.position_changed.connect(self._on_position)
        self.state.model_changed.connect(self._refresh)
        self.state.dataset_changed.connect(self._refresh)
        adopt_first_dataset(napari_viewer, self.state)
        self._refresh()

    # -- reading -------------------------------------------------------------------------
    def _scan_view(self) -> Any:
        """The dataset on the grid :meth:`StemState.grid_position` indexes (scan crop/bin of
        the model, else of the Data dock, applied lazily); cached."""
        state = self.state
        if state.model is not None:
            prep = state.model.preprocessor
        else:
            config = state.active_preprocess_config()
            prep = backend.preprocessor(config) if config is not None else None
        config = prep.config if prep is not None else None
        key = (id(state.dataset), id(state.model), config)
        if self._view_cache is None or self._view_cache[0] != key:
            view = prep.scan_view(state.dataset) if prep is not None else state.dataset
            self._view_cache = (key, view, prep)
        return self._view_cache[1]

    def _refresh(self) -> None:
        if self.state.position is not None:
            self._on_position(*self.state.position)

    def _on_position(self, ry: int, rx: int) -> None:
        state = self.state
        if state.dataset is None:
            return
        grid = state.grid_position()
        if grid is None:
            self.position_label.setText(f"position ({ry}, {rx}) lies outside the model's scan crop")
            return
        self.position = grid
        raw = _read_pattern(self._scan_view(), *grid)
        self.raw_pattern = raw
        text = f"position (row {ry}, col {rx})"
        if grid != (ry, rx):
            text += f" — model grid ({grid[0]}, {grid[1]})"
        self.position_label.setText(f"{state.dataset.name}: {text}")
        loaded = state.model
        if loaded is None:
            self.input_image = log_display(raw)
            self.recon_image = self.diff_image = self.recon_source = None
            self.psnr = self.ssim = None
            self.panels.set_image(0, self.input_image, (0.0, 1.0))
            self.panels.set_image(1, None)
            self.panels.set_image(2, None)
            self.metrics_label.setText("load or train a model to see its reconstruction")
            self.updated.emit()
            return
        inputs = backend.preprocess_one(loaded, raw)  # the one preprocessing pass
        stored = state.stored_reconstruction(*grid)
        if stored is not None:
            self._decoder.quit()  # a decode still queued is stale now
            self._show(loaded, inputs, stored, "stored")
            return
        self.input_image = inputs
        self.panels.set_image(0, inputs, (0.0, 1.0))
        self.metrics_label.setText("reconstructing…")
        self._decoder.submit(grid, loaded, raw, inputs)

    def _reconstruct(self, loaded: Any, raw: np.ndarray, inputs: np.ndarray
                     ) -> tuple[Any, np.ndarray, np.ndarray, float]:
        """Worker thread: encode + decode one (already preprocessed) pattern."""
        t0 = time.perf_counter()
        inputs, recon = backend.reconstruct_one(loaded, raw, self.state.device, inputs=inputs)
        return loaded, inputs, recon, time.perf_counter() - t0

    def _show_reconstruction(self, grid: tuple[int, int], result: tuple) -> None:
        loaded, inputs, recon, seconds = result
        self.last_decode_s = seconds
        if loaded is not self.state.model or grid != self.position:
            return  # the model or the position changed meanwhile
        self._show(loaded, inputs, recon, "decoded")

    def _show(self, loaded: Any, inputs: np.ndarray, recon: np.ndarray, source: str) -> None:
        self.input_image = inputs
        self.recon_image = recon
        self.recon_source = source
        self.diff_image = recon - inputs
        self.psnr, self.ssim = backend.pattern_quality(inputs, recon)
        lim = max(float(np.abs(self.diff_image).max()), 1e-6)
        self.panels.set_image(0, inputs, (0.0, 1.0))
        self.panels.set_image(1, recon, (0.0, 1.0))
        self.panels.set_image(2, self.diff_image, (-lim, lim))
        how = ("stored by the embedding pass" if source == "stored"
               else f"decode {self.last_decode_s * 1e3:.0f} ms")
        self.metrics_label.setText(
            f"PSNR {self.psnr:.2f} dB   SSIM {self.ssim:.3f}   "
            f"(log-scaled, normalised input; {how})")
        self.updated.emit()

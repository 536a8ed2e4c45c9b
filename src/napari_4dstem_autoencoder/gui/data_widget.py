"""Data dock: pick the dataset, choose preprocessing with a live before/after preview, and
compute virtual bright-field / annular dark-field navigators with adjustable radii."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pyqtgraph import mkPen
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGraphicsEllipseItem,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import backend
from .canvas import install, upsert_image
from .keys import BEAM_KEY, DATASET_KEY, PLUGIN
from .state import ScanGeometry, dataset_beam, dataset_layers, layer_dataset, unwrap_viewer
from .views import PatternPanels, log_display
from .workers import LatestOnly, ProgressRelay, start_function

PREVIEW_FIT_PATTERNS = 64

#: the default ADF inner radius, as a multiple of the measured bright-field (direct-beam) radius
ADF_INNER_FACTOR = 1.2


def default_detector_radii(centre: tuple[float, float], bf_radius: float,
                           detector_shape: tuple[int, int]) -> tuple[float, float, float]:
    """(BF radius, ADF inner, ADF outer) in detector pixels from the measured direct beam.

    The ADF ring always lies outside the bright-field disc: inner = 1.2 x the BF radius (at
    least one pixel beyond it). Its outer radius reaches the nearest detector edge when a
    ring of at least a quarter of the BF radius (2 px) fits there; when the beam sits close
    to an edge (a Merlin pattern whose disc is cut by the detector's side) it reaches the
    farthest edge instead, so the ring, cut by the detector, still collects the scattering
    outside the disc. Never thinner than 1 px.
    """
    cy, cx = centre
    h, w = detector_shape
    distances = (cy + 0.5, cx + 0.5, h - 0.5 - cy, w - 0.5 - cx)  # to the outer pixel edges
    near, far = max(min(distances), 0.0), max(max(distances), 0.0)
    inner = max(ADF_INNER_FACTOR * bf_radius, bf_radius + 1.0)
    outer = near if near >= inner + max(2.0, 0.25 * bf_radius) else far
    return float(bf_radius), float(inner), float(max(outer, inner + 1.0))


def calibration_text(dataset: Any) -> str:
    """'scan 32×32 positions, step 2 Å; detector 64×64 pixels, 1.28 mrad per pixel; float32'
    (uncalibrated axes say so instead of '1 px/px')."""
    c = dataset.calibration
    ry, rx = dataset.scan_shape
    qy, qx = dataset.detector_shape

    def step(values: tuple[float, float], unit: str) -> str:
        a, b = (float(v) for v in values)
        return f"{a:.4g} {unit}" if np.isclose(a, b) else f"{a:.4g} × {b:.4g} {unit}"

    scan = (f"step {step(c.scan_step, c.scan_unit)}" if c.scan_unit not in ("", "px", "pixel")
            else "scan step not calibrated (shown in pixels)")
    det = (f", {step(c.detector_step, c.detector_unit)} per pixel"
           if c.detector_unit not in ("", "px", "pixel") else "")
    return (f"scan {ry}×{rx} positions, {scan}; detector {qy}×{qx} pixels{det}; "
            f"{dataset.dtype}")


def parse_box(text: str, what: str) -> tuple[int, int, int, int] | None:
    """'y0, y1, x0, x1' -> a crop box; empty -> None."""
    text = text.strip()
    if not text:
        return None
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
        raise ValueError(f"{what} crop must be four integers 'y0, y1, x0, x1', got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def sample_key() -> str | None:
    """The id of this plugin's first sample (from the manifest, so it never drifts)."""
    try:
        import npe2

        manifest = npe2.PluginManager.instance().get_manifest(PLUGIN)
        samples = manifest.contributions.sample_data or []
        return samples[0].key if samples else None
    except Exception:  # no manifest registered (e.g. running from a source tree)
        return None


class DataWidget(QWidget):
    """Chooses the dataset and preprocessing every other dock uses."""

    preview_updated = Signal()
    beam_estimated = Signal()

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = unwrap_viewer(napari_viewer)
        self.state = install(napari_viewer)
        self.preview_raw: np.ndarray | None = None
        self.preview_processed: np.ndarray | None = None
        self._fit_cache: dict[Any, Any] = {}
        self._vworker: Any = None
        self._dataset_shown: Any = None

        layout = QVBoxLayout(self)
        # -- dataset ----------------------------------------------------------------
        box = QGroupBox("Dataset")
        form = QVBoxLayout(box)
        self.dataset_combo = QComboBox()
        self.dataset_combo.setToolTip("Layers that carry a 4D-STEM dataset (opened files, the sample)")
        row = QHBoxLayout()
        self.open_button = QPushButton("Open file…")
        self.sample_button = QPushButton("Open sample")
        row.addWidget(self.open_button)
        row.addWidget(self.sample_button)
        self.info_label = QLabel("")
        self.info_label.setWordWrap(True)
        form.addWidget(self.dataset_combo)
        form.addLayout(row)
        form.addWidget(self.info_label)
        layout.addWidget(box)

        # -- preprocessing ----------------------------------------------------------
        box = QGroupBox("Preprocessing")
        pform = QFormLayout(box)
        self.scan_bin = QSpinBox(minimum=1, maximum=16, value=1)
        self.detector_bin = QSpinBox(minimum=1, maximum=16, value=1)
        self.scan_crop = QLineEdit(placeholderText="y0, y1, x0, x1 (empty: whole scan)")
        self.detector_crop = QLineEdit(placeholderText="y0, y1, x0, x1 (empty: whole detector)")
        self.scaling = QComboBox()
        self.scaling.addItems(["log", "sqrt", "none"])
        self.normalise = QCheckBox("normalise to [0, 1]")
        self.normalise.setChecked(True)
        self.mask_bad = QCheckBox("mask hot/dead pixels")
        self.centre_beam = QCheckBox("centre the direct beam")
        self.upper_percentile = QDoubleSpinBox(minimum=50.0, maximum=100.0, decimals=3,
                                               value=99.99, singleStep=0.01)
        pform.addRow("scan bin", self.scan_bin)
        pform.addRow("detector bin", self.detector_bin)
        pform.addRow("scan crop", self.scan_crop)
        pform.addRow("detector crop", self.detector_crop)
        pform.addRow("scaling", self.scaling)
        pform.addRow("upper percentile", self.upper_percentile)
        pform.addRow(self.normalise)
        pform.addRow(self.mask_bad)
        pform.addRow(self.centre_beam)
        self.output_label = QLabel("")
        pform.addRow(self.output_label)
        layout.addWidget(box)

        self.preview = PatternPanels(["raw (log display)", "network input"], height=170,
                                     link=False)  # the two differ in size when binning
        layout.addWidget(self.preview)

        # -- virtual detectors --------------------------------------------------------
        box = QGroupBox("Virtual detectors (detector pixels)")
        vform = QFormLayout(box)
        self.bf_radius = QDoubleSpinBox(minimum=0.5, maximum=4096, value=8, decimals=1)
        self.adf_inner = QDoubleSpinBox(minimum=0.0, maximum=4096, value=12, decimals=1)
        self.adf_outer = QDoubleSpinBox(minimum=0.5, maximum=4096, value=30, decimals=1)
        for spin in (self.bf_radius, self.adf_inner, self.adf_outer):
            spin.setSuffix(" px")
        self.bf_radius.setToolTip("radius of the bright-field disc (default: the measured "
                                  "direct beam)")
        self.adf_inner.setToolTip("inner radius of the annular dark-field ring (default: "
                                  f"{ADF_INNER_FACTOR:g} × the bright-field radius, outside "
                                  "the direct beam)")
        self.adf_outer.setToolTip("outer radius of the annular dark-field ring (default: "
                                  "towards the detector edge)")
        self.radii_label = QLabel("")
        self.radii_label.setWordWrap(True)
        self.virtual_button = QPushButton("Compute BF / ADF navigators")
        self.virtual_progress = QProgressBar(format="%v of %m patterns read")
        self.virtual_progress.setVisible(False)
        vform.addRow("BF radius", self.bf_radius)
        vform.addRow("ADF inner", self.adf_inner)
        vform.addRow("ADF outer", self.adf_outer)
        vform.addRow(self.radii_label)
        vform.addRow(self.virtual_button)
        vform.addRow(self.virtual_progress)
        layout.addWidget(box)
        layout.addStretch(1)

        # detector outlines on the raw preview
        self._circles = [QGraphicsEllipseItem() for _ in range(3)]
        for circle, colour in zip(self._circles, ("#00e5ff", "#ffeb3b", "#ffeb3b")):
            circle.setPen(mkPen(colour, width=1, style=Qt.PenStyle.DashLine))
            self.preview.boxes[0].addItem(circle)

        self._relay = ProgressRelay()
        self._relay.progressed.connect(self._virtual_progress)
        self._previewer = LatestOnly(self._fit_and_transform, self._show_preview,
                                     what="Preprocessing preview", owner=self)

        self.dataset_combo.currentIndexChanged.connect(self._on_combo)
        self.open_button.clicked.connect(self._open_file)
        self.sample_button.clicked.connect(self.open_sample)
        self.virtual_button.clicked.connect(self.compute_virtual_images)
        for w in (self.scan_bin, self.detector_bin, self.upper_percentile):
            w.valueChanged.connect(self._on_config)
        for w in (self.scan_crop, self.detector_crop):
            w.editingFinished.connect(self._on_config)
        self.scaling.currentIndexChanged.connect(self._on_config)
        for w in (self.normalise, self.mask_bad, self.centre_beam):
            w.toggled.connect(self._on_config)
        for w in (self.bf_radius, self.adf_inner, self.adf_outer):
            w.valueChanged.connect(self._draw_circles)
            w.valueChanged.connect(self._describe_radii)
        from .hooks import prefer_this_reader

        prefer_this_reader()  # dropped .h5 files open with this plugin, without napari's dialog

        self.viewer.layers.events.inserted.connect(self._refresh_datasets)
        self.viewer.layers.events.removed.connect(self._refresh_datasets)
        self.state.dataset_changed.connect(self._on_dataset)
        self.state.preprocess_changed.connect(self._follow_preprocess)
        self.state.position_changed.connect(self._request_preview)
        self._refresh_datasets()
        if self.state.dataset is not self._dataset_shown:  # chosen before this dock opened
            self._on_dataset(self.state.dataset)
        self._on_config()

    # -- dataset --------------------------------------------------------------------------
    def _refresh_datasets(self, *_: Any) -> None:
        names = [layer.name for layer in dataset_layers(self.viewer)]
        self.dataset_combo.blockSignals(True)
        self.dataset_combo.clear()
        self.dataset_combo.addItems(names)
        if self.state.dataset_layer_name in names:
            self.dataset_combo.setCurrentText(self.state.dataset_layer_name)
        self.dataset_combo.blockSignals(False)
        if names and (self.state.dataset is None or self.state.dataset_layer_name not in names):
            self._on_combo()
        elif not names and self.state.dataset is not None:
            self.state.set_dataset(None)

    def _on_combo(self, *_: Any) -> None:
        name = self.dataset_combo.currentText()
        if name and name in self.viewer.layers:
            ds = layer_dataset(self.viewer.layers[name])
            if ds is not None:
                self.state.set_dataset(ds, name)

    def _on_dataset(self, dataset: Any) -> None:
        self._dataset_shown = dataset
        if dataset is None:
            self.info_label.setText("no dataset: open a file or the sample")
            return
        self.info_label.setText(f"{dataset.name}: {calibration_text(dataset)}")
        if self.state.dataset_layer_name and self.dataset_combo.currentText() != self.state.dataset_layer_name:
            self.dataset_combo.setCurrentText(self.state.dataset_layer_name)
        beam = dataset_beam(self.viewer, dataset)
        if beam is not None:  # the reader's estimate: one estimate per dataset
            self._apply_beam(dataset, backend.beam_estimate(dataset, beam))
        else:  # estimating reads a few hundred patterns: keep it off the GUI thread
            start_function(backend.beam_estimate, dataset,
                           what=f"Direct-beam estimate of {dataset.name}",
                           on_result=lambda est, ds=dataset: self._apply_beam(ds, est), owner=self)
        self._on_config()

    def _apply_beam(self, dataset: Any, estimate: tuple) -> None:
        if dataset is not self.state.dataset:
            return
        centre, radius, _ = estimate  # the ADF ring is chosen here, outside the BF disc
        self._beam_centre = centre
        radius, inner, outer = default_detector_radii(centre, radius,
                                                      tuple(dataset.detector_shape))
        # rounding to the spin boxes' 0.1 px must not put the ring back inside the disc
        values = (round(radius, 1), np.ceil(inner * 10) / 10, np.ceil(outer * 10) / 10)
        for spin, value in zip((self.bf_radius, self.adf_inner, self.adf_outer), values):
            spin.blockSignals(True)
            spin.setValue(float(value))
            spin.blockSignals(False)
        self._draw_circles()
        self._describe_radii()
        self.beam_estimated.emit()

    def _describe_radii(self, *_: Any) -> None:
        """The radii in the detector's calibrated unit (e.g. mrad), and a warning when the ADF
        ring overlaps the bright-field disc."""
        ds = self.state.dataset
        bf, inner, outer = self.bf_radius.value(), self.adf_inner.value(), self.adf_outer.value()
        parts = []
        if ds is not None and ds.calibration.detector_unit not in ("", "px", "pixel"):
            step, unit = float(ds.calibration.detector_step[0]), ds.calibration.detector_unit
            parts.append(f"BF disc {bf * step:.3g} {unit}, ADF ring {inner * step:.3g}–"
                         f"{outer * step:.3g} {unit}")
        warn = inner < bf
        if warn:
            parts.append("⚠ the ADF ring starts inside the bright-field disc")
        elif outer <= inner:
            warn = True
            parts.append("⚠ the ADF ring is empty (outer ≤ inner)")
        self.radii_label.setText("; ".join(parts))
        self.radii_label.setStyleSheet("color: orange" if warn else "")

    def _open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a 4D-STEM file")
        if path:
            self.open_path(path)

    def open_path(self, path: str) -> None:
        from napari.utils.notifications import show_error

        try:
            self.viewer.open(path, plugin=PLUGIN)
        except Exception as exc:
            show_error(f"Could not open {Path(path).name}: {exc}")

    def open_sample(self) -> None:
        from napari.utils.notifications import show_error

        key = sample_key()
        if key is None:
            show_error("this installation provides no sample dataset")
            return
        self.viewer.open_sample(PLUGIN, key)

    # -- preprocessing ------------------------------------------------------------------
    def preprocess_config(self) -> Any:
        """The PreprocessConfig the form describes (raises ValueError on a bad entry)."""
        return backend.preprocess_config(
            scan_bin=self.scan_bin.value(), detector_bin=self.detector_bin.value(),
            scan_crop=parse_box(self.scan_crop.text(), "scan"),
            detector_crop=parse_box(self.detector_crop.text(), "detector"),
            scaling=self.scaling.currentText(), normalise=self.normalise.isChecked(),
            mask_bad_pixels=self.mask_bad.isChecked(), centre_beam=self.centre_beam.isChecked(),
            upper_percentile=self.upper_percentile.value())

    def _follow_preprocess(self, config: Any) -> None:
        """Show a detector binning another dock chose (the Train dock's fit to the machine)."""
        if config is None or config.detector_bin == self.detector_bin.value():
            return
        self.detector_bin.setValue(int(config.detector_bin))  # refreshes label and preview

    def _on_config(self, *_: Any) -> None:
        try:
            config = self.preprocess_config()
            ds = self.state.dataset
            if ds is not None:
                prep = backend.preprocessor(config)
                out = prep.output_shape(ds.detector_shape)
                view = prep.scan_view(ds)
                warn = "  ⚠ below the 32-pixel minimum" if min(out) < 32 else ""
                self.output_label.setText(
                    f"network input {out[0]}×{out[1]} at {view.scan_shape[0]}×{view.scan_shape[1]}"
                    f" positions{warn}")
                self.output_label.setStyleSheet("color: orange" if warn else "")
        except ValueError as exc:
            self.output_label.setText(str(exc))
            self.output_label.setStyleSheet("color: orange")
            return
        self.state.set_preprocess(config)
        self._request_preview()

    def _request_preview(self) -> None:
        ds, pos = self.state.dataset, self.state.position
        config = self.state.preprocess_config
        if ds is None or pos is None or config is None:
            return
        self._draw_circles()
        self._previewer.submit(pos, ds, config, pos)

    def _fit_and_transform(self, dataset: Any, config: Any, pos: tuple[int, int]) -> Any:
        key = (id(dataset), config)
        prep = self._fit_cache.get(key)
        if prep is None:
            prep = backend.fit_preprocessor(dataset, config, PREVIEW_FIT_PATTERNS)
            self._fit_cache = {key: prep}  # one entry: previews follow the form
        raw = dataset.pattern(*pos)
        grid = ScanGeometry.for_preprocess(dataset, config).to_grid(*pos)
        processed = (prep.transform_patterns(prep.scan_view(dataset).pattern(*grid))
                     if grid is not None else None)
        return raw, processed

    def _show_preview(self, _key: Any, result: Any) -> None:
        raw, processed = result
        self.preview_raw, self.preview_processed = raw, processed
        self.preview.set_image(0, log_display(raw), (0.0, 1.0))
        self.preview.set_image(1, processed, (0.0, 1.0))
        self._draw_circles()
        self.preview_updated.emit()

    def _draw_circles(self, *_: Any) -> None:
        centre = getattr(self, "_beam_centre", None)
        if centre is None:
            return
        cy, cx = centre
        for circle, r in zip(self._circles, (self.bf_radius.value(), self.adf_inner.value(),
                                             self.adf_outer.value())):
            # pixel centres sit at +0.5 in the image item's coordinates
            circle.setRect(cx + 0.5 - r, cy + 0.5 - r, 2 * r, 2 * r)

    # -- virtual images -------------------------------------------------------------------
    def compute_virtual_images(self) -> Any:
        ds = self.state.dataset
        if ds is None or self._vworker is not None:
            return None
        self.virtual_button.setEnabled(False)
        self.virtual_progress.setVisible(True)
        self.virtual_progress.setValue(0)
        centre = getattr(self, "_beam_centre", None)

        def done() -> None:
            self._vworker = None
            self.virtual_button.setEnabled(True)
            self.virtual_progress.setVisible(False)

        self._vworker = start_function(
            backend.virtual_images, ds, self.bf_radius.value(), self.adf_inner.value(),
            self.adf_outer.value(), centre, self._relay, what="Virtual detector images",
            on_result=lambda images: self._show_virtual(ds, images), on_finished=done, owner=self)
        return self._vworker

    def _virtual_progress(self, done: int, total: int) -> None:
        self.virtual_progress.setMaximum(max(total, 1))
        self.virtual_progress.setValue(done)

    def _show_virtual(self, dataset: Any, images: tuple[np.ndarray, np.ndarray]) -> None:
        bf, adf = images
        step = tuple(dataset.calibration.scan_step)
        base = (self.state.dataset_layer_name or dataset.name).removesuffix(" virtual BF")
        # the BF layer carries the dataset and its beam (it is the reader's navigator, and
        # replaces it when that was strided); ADF only shows it
        metadata = {DATASET_KEY: dataset}
        beam = dataset_beam(self.viewer, dataset)
        if beam is not None:
            metadata[BEAM_KEY] = beam
        upsert_image(self.viewer, f"{base} virtual BF", bf, scale=step, metadata=metadata,
                     colormap="gray")
        upsert_image(self.viewer, f"{base} virtual ADF", adf, scale=step, colormap="gray")

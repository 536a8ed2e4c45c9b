"""Model dock: load a checkpoint (in a worker), show what it is and the preprocessing it
expects, and embed the current dataset with progress."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from ..data.preprocess import Preprocessor
from .canvas import adopt_first_dataset, install
from .jobs import embedding_job, load_model
from .workers import Failure, start_function


#: the scan's intensity (after the model's scaling) may differ from the model's training range
#: by this factor either way before the dock calls them incompatible
INTENSITY_TOLERANCE = 3.0
#: patterns read (evenly over the scan) to measure the scan's intensity
INTENSITY_SAMPLE = 16

_POOLING = {"quarter": "the encoder shrinks each pattern 4× per block",
            "to4": "the encoder shrinks each pattern step by step to 4×4"}
_CANVAS = {"fixed256": "the decoder draws at 256×256 pixels, then resizes to the pattern size",
           "target": "the decoder draws at the pattern's own size",
           "half_target": "the decoder draws at half the pattern size, then enlarges it"}
_SCALING = {"log": "logarithmic (log 1+x)", "sqrt": "square root", "none": "linear (none)"}


@dataclass(frozen=True)
class IntensityCheck:
    """How a scan's intensity compares with what a model was trained on.

    ``ratio``: the scan's bright level (the model's upper percentile, after the model's scaling,
    above the model's floor) over the model's range; 1 is a perfect match.
    """

    ratio: float
    scan_level: float
    model_low: float
    model_high: float
    patterns: int

    @property
    def compatible(self) -> bool:
        return 1 / INTENSITY_TOLERANCE <= self.ratio <= INTENSITY_TOLERANCE

    def describe(self, scaling: str) -> str:
        pct = f"{100 * self.ratio:.3g} %"
        if self.compatible:
            return (f"intensity: matches (the scan's bright pixels reach {pct} of the model's "
                    f"range, {_SCALING.get(scaling, scaling)} scaling)")
        if self.ratio < 1:
            return (f"intensity does not fit: the scan's bright pixels reach only {pct} of "
                    "the range the model was trained on, so its patterns reach the network "
                    "nearly black (the model was trained on brighter data: counts rather "
                    "than fractions of the beam, or a higher dose)")
        return (f"intensity does not fit: the scan's bright pixels reach {pct} of the range "
                "the model was trained on, so its patterns saturate at white (the model was "
                "trained on fainter data: fractions of the beam rather than counts, or a "
                "lower dose)")


def check_intensity(loaded: Any, dataset: Any, n_patterns: int = INTENSITY_SAMPLE
                    ) -> IntensityCheck | None:
    """Read ``n_patterns`` patterns spread over the scan, scale them as the model's
    preprocessing does (no normalisation) and compare their bright level with the model's
    normalisation range. None when the model has no fitted statistics or the detector differs."""
    prep = loaded.preprocessor
    stats = prep.stats
    if stats is None or tuple(stats.input_detector_shape) != tuple(dataset.detector_shape):
        return None
    view = prep.scan_view(dataset)
    n = max(1, min(n_patterns, view.n_patterns))
    idx = np.unique(np.linspace(0, view.n_patterns - 1, n).round().astype(np.int64))
    raw = view.patterns(idx).astype(np.float32)
    scaled = Preprocessor(dataclasses.replace(prep.config, normalise=False),
                          stats).transform_patterns(raw)
    level = float(np.percentile(scaled, prep.config.upper_percentile))
    span = float(stats.hi - stats.lo)
    ratio = (level - float(stats.lo)) / span if span > 0 else 1.0
    return IntensityCheck(ratio=float(max(ratio, 0.0)), scan_level=level,
                          model_low=float(stats.lo), model_high=float(stats.hi),
                          patterns=len(idx))


def describe_network(cfg: Any) -> str:
    """The architecture in words (not the config's internal names)."""
    parts = [_POOLING.get(cfg.pool_schedule, f"encoder pooling {cfg.pool_schedule}"),
             _CANVAS.get(cfg.decoder_canvas, f"decoder canvas {cfg.decoder_canvas}")]
    if getattr(cfg, "output_prior", "none") == "mean_pattern":
        parts.append("the decoder starts from the training data's mean pattern")
    if getattr(cfg, "encoder_stem", "full") == "pool2":
        parts.append("its first layers work at half resolution")
    return "; ".join(parts)


def describe_model(loaded: Any, dataset: Any = None, intensity: Any = "unchecked") -> str:
    """A short plain-text summary of a loaded checkpoint, and whether it fits ``dataset``.

    ``intensity``: an :class:`IntensityCheck` of ``dataset`` (or None when it cannot be made);
    ``"unchecked"`` while it is being measured.
    """
    cfg = loaded.model.config
    n_params = sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    prep = loaded.preprocessor
    pc = prep.config
    epochs = loaded.epoch
    lines = [
        f"checkpoint: {loaded.path.name if loaded.path else 'not saved'} "
        f"(preset {loaded.preset or 'not recorded'}, {n_params:,} trainable weights)",
        f"network: {cfg.latent_dim} latent values per probe position; {describe_network(cfg)}",
        f"patterns in: {loaded.input_shape[0]}×{loaded.input_shape[1]} pixels; trained for "
        f"{epochs} full epoch{'s' if epochs != 1 else ''} "
        f"({loaded.global_step:,} optimiser step{'s' if loaded.global_step != 1 else ''})",
    ]
    if loaded.history:
        last = loaded.history[-1]
        val = last.get("val") or last.get("train") or {}
        if "mse" in val:
            which = "validation" if last.get("val") else "training"
            lines.append(f"last {which} reconstruction error (mean squared): {val['mse']:.4g}")
    lines.append("")
    lines.append("preprocessing it expects:")
    lines.append(f"  intensity scaling: {_SCALING.get(pc.scaling, pc.scaling)}"
                 + (", then normalised to 0–1" if pc.normalise else ", not normalised"))
    crop = ("detector cropped to rows {0}–{1}, columns {2}–{3}".format(*pc.detector_crop)
            if pc.detector_crop else "whole detector")
    lines.append(f"  {crop}; detector binned {pc.detector_bin}×{pc.detector_bin}"
                 if pc.detector_bin > 1 else f"  {crop}; detector not binned")
    lines.append(f"  scan binned {pc.scan_bin}×{pc.scan_bin}" if pc.scan_bin > 1
                 else "  scan not binned" + (", cropped" if pc.scan_crop else ""))
    if prep.stats is not None:
        shape = prep.stats.input_detector_shape
        n_bad = len(prep.stats.bad_pixels)
        lines.append(f"  raw detector {shape[0]}×{shape[1]} pixels; trained intensity range "
                     f"{prep.stats.lo:.3g}–{prep.stats.hi:.3g} after scaling; "
                     f"{n_bad} hot/dead pixel{'s' if n_bad != 1 else ''} replaced")
        if dataset is not None:
            size_ok = tuple(shape) == tuple(dataset.detector_shape)
            lines.append("")
            head = (f"current dataset {dataset.name}: detector {dataset.detector_shape[0]}×"
                    f"{dataset.detector_shape[1]}")
            if not size_ok:
                lines.append(f"{head} — NOT compatible (the model was trained on a "
                             f"{shape[0]}×{shape[1]} detector)")
            elif isinstance(intensity, IntensityCheck) and not intensity.compatible:
                lines.append(f"{head} — NOT compatible: the detector size fits, the intensity "
                             "does not")
                lines.append(intensity.describe(pc.scaling))
            elif isinstance(intensity, IntensityCheck):
                lines.append(f"{head} — compatible (detector size and intensity)")
                lines.append(intensity.describe(pc.scaling))
            elif intensity == "unchecked":
                lines.append(f"{head} — compatible detector size; checking the intensity…")
            else:
                lines.append(f"{head} — compatible detector size (intensity not checked)")
    return "\n".join(lines)


class ModelWidget(QWidget):
    """Loads checkpoints and embeds the current dataset."""

    #: emitted with the LoadedModel, or a Failure, when a load ends
    load_finished = Signal(object)
    embed_finished = Signal()
    #: emitted with the IntensityCheck (or None) of the current model and dataset
    intensity_checked = Signal(object)

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = install(napari_viewer)
        self.job = embedding_job(self.state)

        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.load_button = QPushButton("Load checkpoint…")
        self.embed_button = QPushButton("Embed dataset")
        self.stop_button = QPushButton("Stop")
        self.embed_button.setEnabled(False)
        self.stop_button.setEnabled(False)
        row.addWidget(self.load_button)
        row.addWidget(self.embed_button)
        row.addWidget(self.stop_button)
        layout.addLayout(row)
        self.intensity: Any = None
        self._checked: tuple[int, int] | None = None
        self.progress = QProgressBar(format="%v of %m probe positions embedded")
        self.progress.setVisible(False)
        layout.addWidget(self.progress)
        self.summary = QTextEdit(readOnly=True)
        self.summary.setPlaceholderText("No model: load a checkpoint or train one.")
        layout.addWidget(self.summary, 1)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)

        self.load_button.clicked.connect(self._load_dialog)
        self.embed_button.clicked.connect(self.embed)
        self.stop_button.clicked.connect(self.job.stop)
        self.job.relay.progressed.connect(self._on_progress)
        self.state.model_changed.connect(self._show_model)
        self.state.dataset_changed.connect(self._on_dataset)
        self.state.busy_changed.connect(self._on_busy)
        adopt_first_dataset(napari_viewer, self.state)
        self._show_model(self.state.model)

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a checkpoint", "",
                                              "Checkpoints (*.safetensors);;All files (*)")
        if path:
            self.load_checkpoint(path)

    def load_checkpoint(self, path: str | Path) -> Any:
        """Load ``path`` in a worker; the model becomes the viewer's current model."""
        self.load_button.setEnabled(False)
        self.status_label.setText(f"loading {Path(path).name}…")

        def failed(failure: Failure) -> None:
            self.status_label.setText(failure.message)
            self.load_finished.emit(failure)

        def loaded(model: Any) -> None:
            self.status_label.setText(f"loaded {Path(path).name}")
            self.load_finished.emit(model)

        return load_model(self.state, str(path), on_loaded=loaded, on_failure=failed,
                          on_finished=lambda: self.load_button.setEnabled(True))

    def embed(self) -> Any:
        """Embed the current dataset with the current model (worker, with progress)."""
        if self.state.model is None or self.state.dataset is None:
            self.status_label.setText("embedding needs a dataset and a model")
            return None
        return self.job.start(on_finished=self.embed_finished.emit)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)

    def _on_busy(self, task: str, busy: bool) -> None:
        if task != "embed":
            return
        self.progress.setVisible(busy)
        self.progress.setValue(0)
        self.stop_button.setEnabled(busy)
        self.embed_button.setEnabled(not busy and self.state.model is not None)
        self.status_label.setText("embedding the scan…" if busy else
                                  ("scan embedded" if self.state.embeddings is not None else ""))

    def _on_dataset(self) -> None:
        self._show_model(self.state.model)

    def _show_model(self, loaded: Any) -> None:
        if loaded is None:
            self.summary.clear()
            self.embed_button.setEnabled(False)
            return
        dataset = self.state.dataset
        key = (id(loaded), id(dataset))
        if dataset is not None and key != self._checked:
            self._checked, self.intensity = key, "unchecked"
            start_function(check_intensity, loaded, dataset,
                           what=f"Intensity check of {dataset.name}",
                           on_result=lambda result, k=key: self._intensity_done(k, result),
                           on_failure=lambda _f, k=key: self._intensity_done(k, None),
                           owner=self)
        self.summary.setPlainText(describe_model(loaded, dataset, self.intensity))
        self.embed_button.setEnabled(dataset is not None and not self.job.running)

    def _intensity_done(self, key: tuple[int, int], result: Any) -> None:
        if key != self._checked or self.state.model is None:
            return  # another model or dataset since
        self.intensity = result
        self.summary.setPlainText(describe_model(self.state.model, self.state.dataset, result))
        if isinstance(result, IntensityCheck) and not result.compatible:
            from napari.utils.notifications import show_warning

            show_warning(f"{self.state.dataset.name} is NOT compatible with the loaded model: "
                         + result.describe(self.state.model.preprocessor.config.scaling))
        self.intensity_checked.emit(result)

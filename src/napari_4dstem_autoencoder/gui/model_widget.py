"""Model dock: load a checkpoint (in a worker), show what it is and the preprocessing it
expects, and embed the current dataset with progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

from .canvas import adopt_first_dataset, install
from .jobs import embedding_job, load_model
from .workers import Failure


def describe_model(loaded: Any, dataset: Any = None) -> str:
    """A short plain-text summary of a loaded checkpoint, and whether it fits ``dataset``."""
    cfg = loaded.model.config
    n_params = sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    prep = loaded.preprocessor
    pc = prep.config
    lines = [
        f"file: {loaded.path.name if loaded.path else 'not saved'}",
        f"preset: {loaded.preset or 'not recorded'}   parameters: {n_params:,}",
        f"pooling: {cfg.pool_schedule}   decoder canvas: {cfg.decoder_canvas}",
        f"input: {loaded.input_shape[0]}×{loaded.input_shape[1]}   epochs trained: {loaded.epoch}",
    ]
    if loaded.history:
        last = loaded.history[-1]
        val = last.get("val") or last.get("train") or {}
        if "mse" in val:
            lines.append(f"last {'validation' if last.get('val') else 'training'} MSE: {val['mse']:.4g}")
    lines.append("")
    lines.append("expects preprocessing:")
    crop = f"{pc.detector_crop}" if pc.detector_crop else "none"
    lines.append(f"  scaling {pc.scaling}, normalise {pc.normalise}, detector bin {pc.detector_bin}, "
                 f"detector crop {crop}, scan bin {pc.scan_bin}")
    if prep.stats is not None:
        shape = prep.stats.input_detector_shape
        lines.append(f"  raw detector {shape[0]}×{shape[1]}, intensity range "
                     f"[{prep.stats.lo:.3g}, {prep.stats.hi:.3g}] after scaling, "
                     f"{len(prep.stats.bad_pixels)} masked pixels")
        if dataset is not None:
            ok = tuple(shape) == tuple(dataset.detector_shape)
            lines.append("")
            lines.append(f"current dataset {dataset.name}: detector {dataset.detector_shape[0]}×"
                         f"{dataset.detector_shape[1]} — "
                         + ("compatible" if ok else "NOT compatible (different detector size)"))
    return "\n".join(lines)


class ModelWidget(QWidget):
    """Loads checkpoints and embeds the current dataset."""

    #: emitted with the LoadedModel, or a Failure, when a load ends
    load_finished = Signal(object)
    embed_finished = Signal()

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
        self.progress = QProgressBar(format="embedding %p%")
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
        self.summary.setPlainText(describe_model(loaded, self.state.dataset))
        self.embed_button.setEnabled(self.state.dataset is not None and not self.job.running)

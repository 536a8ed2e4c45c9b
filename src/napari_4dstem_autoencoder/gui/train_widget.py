"""Train dock: hyperparameters, device, Start/Stop, progress with ETA, live losses and maps.

Widget values and the current dataset are read into a frozen ``TrainConfig`` on the GUI
thread before the worker starts; the worker only iterates the engine's generator. Each
event is handled here, on the GUI thread: progress bars, the append-only loss plot, and
``Preview`` events handed to the state, whose canvas writer shows them live in the embeddings
layer. ``Finished`` makes the trained model in memory the state's model (its checkpoint stays
on disk for Save). Stop sets the engine's stop event, so training ends between batches and
writes a loadable checkpoint. Closing the viewer does the same and waits for the worker to end.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QObject, Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
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
from .canvas import adopt_first_dataset, install
from .jobs import embedding_job
from .state import ScanGeometry
from .views import LossPlot
from .workers import Failure, start_generator

PREVIEW_SECONDS = 5.0
#: live maps use at most this many positions (the engine embeds them between batches)
PREVIEW_MAX_POSITIONS = 1024
CLOSE_WAIT_S = 60.0


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "–"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _optional_float(text: str, what: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number (or empty for the preset's value), got {text!r}") from None


class TrainWidget(QWidget):
    """Trains the autoencoder on the current dataset in a background worker."""

    #: emitted with the Finished/Failed event (or a Failure) when a run ends
    run_finished = Signal(object)
    #: emitted after each handled engine event
    event_handled = Signal(object)

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = install(napari_viewer)
        self.worker: Any = None
        self.stop_event: threading.Event | None = None
        self.checkpoint_path: str | None = None
        self.last_event: Any = None
        self.events_seen: list[str] = []
        self._worker_done = threading.Event()
        self._worker_done.set()
        self._run_dir = Path(tempfile.mkdtemp(prefix="stem4d-train-"))
        self._t0 = 0.0
        self._total_steps = 0
        self._budget_s: float | None = None
        self._steps_done = 0
        self._run_dataset: Any = None
        self._run_geometry: ScanGeometry | None = None
        self._filter_target: weakref.ref | None = None
        self._stop_holder: dict[str, threading.Event | None] = {"stop": None}

        layout = QVBoxLayout(self)
        box = QGroupBox("Model and optimisation")
        form = QFormLayout(box)
        self._presets, default = backend.presets()
        self.preset = QComboBox()
        for i, (name, preset) in enumerate(self._presets.items()):
            self.preset.addItem(name)
            self.preset.setItemData(i, preset.summary, Qt.ItemDataRole.ToolTipRole)
        self.preset.setCurrentText(default)
        self.epochs = QSpinBox(minimum=1, maximum=100000, value=10)
        self.batch_size = QSpinBox(minimum=2, maximum=4096, value=32)
        self.lr = QDoubleSpinBox(minimum=1e-7, maximum=1.0, decimals=6,
                                 value=backend.default_learning_rate(), singleStep=1e-5)
        self.lambda_act = QLineEdit()
        self.lambda_sim = QLineEdit()
        self.lambda_div = QLineEdit()
        self.subset = QSpinBox(minimum=0, maximum=10**9, value=0, specialValueText="all positions")
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        self.max_minutes = QDoubleSpinBox(minimum=0, maximum=10**6, decimals=1, value=0,
                                          specialValueText="no limit")
        self.device = QComboBox()
        self.device.addItems(backend.available_devices())
        self.embed_after = QCheckBox("embed the whole scan when training ends")
        self.embed_after.setChecked(True)
        #: seconds between live embedding-map previews while training
        self.preview_seconds = PREVIEW_SECONDS
        form.addRow("preset", self.preset)
        form.addRow("epochs", self.epochs)
        form.addRow("batch size", self.batch_size)
        form.addRow("learning rate", self.lr)
        form.addRow("λ activity (L1)", self.lambda_act)
        form.addRow("λ similarity", self.lambda_sim)
        form.addRow("λ divergence", self.lambda_div)
        form.addRow("training subset", self.subset)
        form.addRow("seed", self.seed)
        form.addRow("time budget (min)", self.max_minutes)
        form.addRow("device", self.device)
        form.addRow(self.embed_after)
        layout.addWidget(box)

        row = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.save_button = QPushButton("Save checkpoint…")
        self.stop_button.setEnabled(False)
        self.save_button.setEnabled(False)
        for b in (self.start_button, self.stop_button, self.save_button):
            row.addWidget(b)
        layout.addLayout(row)

        self.epoch_bar = QProgressBar(format="epoch %v / %m")
        self.batch_bar = QProgressBar(format="batch %v / %m")
        self.status_label = QLabel("idle")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.epoch_bar)
        layout.addWidget(self.batch_bar)
        layout.addWidget(self.status_label)
        self.loss_plot = LossPlot()
        layout.addWidget(self.loss_plot, 1)

        self.preset.currentTextChanged.connect(self._show_preset_lambdas)
        self.device.currentTextChanged.connect(self._on_device)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.save_button.clicked.connect(self._save_dialog)
        self.destroyed.connect(_shutdown_on_destroy(self))
        self._show_preset_lambdas(self.preset.currentText())
        adopt_first_dataset(napari_viewer, self.state)

    # -- form -----------------------------------------------------------------------------
    def _show_preset_lambdas(self, name: str) -> None:
        self.preset.setToolTip(self._presets[name].summary)
        cfg = self._presets[name].objective
        self.lambda_act.setPlaceholderText(f"preset: {cfg.lambda_act:g}")
        self.lambda_sim.setPlaceholderText(f"preset: {cfg.lambda_sim:g}")
        self.lambda_div.setPlaceholderText(f"preset: {cfg.lambda_div:g}")

    def _on_device(self, name: str) -> None:
        # embedding and the inspector follow the training device choice
        self.state.device = backend.resolve_device(name)

    def train_config(self) -> Any:
        """The frozen TrainConfig the form describes (raises ValueError on a bad entry)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = self.state.dataset.name if self.state.dataset is not None else "model"
        self.checkpoint_path = str(self._run_dir / f"{Path(name).stem}-{stamp}.safetensors")
        return backend.make_train_config(
            preset=self.preset.currentText(),
            loss_weights={
                "lambda_act": _optional_float(self.lambda_act.text(), "λ activity"),
                "lambda_sim": _optional_float(self.lambda_sim.text(), "λ similarity"),
                "lambda_div": _optional_float(self.lambda_div.text(), "λ divergence")},
            preprocess=self.state.preprocess_config or backend.preprocess_config(),
            epochs=self.epochs.value(), batch_size=self.batch_size.value(), lr=self.lr.value(),
            train_subset=self.subset.value() or None, seed=self.seed.value(),
            device=self.device.currentText(), max_minutes=self.max_minutes.value() or None,
            preview_every_seconds=self.preview_seconds,
            preview_max_positions=PREVIEW_MAX_POSITIONS, checkpoint_path=self.checkpoint_path)

    # -- run control -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self) -> Any:
        """Start training on the current dataset; returns the worker (None if not started)."""
        if self.worker is not None:
            return self.worker
        dataset = self.state.dataset
        if dataset is None:
            show_error("Training needs a dataset: open a file or the sample first")
            return None
        try:
            config = self.train_config()
        except ValueError as exc:
            show_error(f"Cannot start training: {exc}")
            return None
        self._install_close_filter()
        self.stop_event = threading.Event()
        self._stop_holder["stop"] = self.stop_event
        self._worker_done.clear()
        self.loss_plot.clear_losses()
        self.events_seen = []
        self.last_event = None
        self._run_dataset, self._run_geometry = dataset, None
        self._set_running(True)
        self.status_label.setText("preparing the data…")
        self._t0 = time.monotonic()
        done = self._worker_done

        def events(ds: Any, cfg: Any, stop: threading.Event):
            try:
                yield from backend.train(ds, cfg, stop)
            finally:
                done.set()

        self.worker = start_generator(events, dataset, config, self.stop_event,
                                      what="Training", on_yield=self._on_event,
                                      on_finished=self._on_worker_finished, owner=self)
        return self.worker

    def stop(self) -> None:
        """Ask the engine to stop between batches (it then writes a checkpoint)."""
        if self.stop_event is not None:
            self.stop_event.set()
            self.status_label.setText("stopping after this batch…")
            self.stop_button.setEnabled(False)

    def shutdown(self, timeout_s: float = CLOSE_WAIT_S) -> bool:
        """Stop training and wait for the worker thread to end (viewer closing)."""
        if self.stop_event is not None:
            self.stop_event.set()
        ended = self._worker_done.wait(timeout_s)
        if not ended and self.worker is not None:
            self.worker.quit()
        embedding_job(self.state).stop()
        return ended

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.preset.setEnabled(not running)

    def _on_worker_finished(self) -> None:
        self.worker = None
        self._set_running(False)
        self.save_button.setEnabled(bool(self.checkpoint_path) and Path(self.checkpoint_path).exists())

    # -- events (GUI thread) --------------------------------------------------------------
    def _on_event(self, event: Any) -> None:
        # the engine's event types are the protocol of backend.train's generator (backend doc)
        from ..training import events as ev

        self.last_event = event
        self.events_seen.append(type(event).__name__)
        if isinstance(event, Failure):
            self.status_label.setText(event.message)
            self.run_finished.emit(event)
        elif isinstance(event, ev.Started):
            self._total_steps = (event.epochs - event.start_epoch) * event.steps_per_epoch
            self._budget_s = (event.config.max_minutes * 60 if event.config.max_minutes
                              else None)
            self._steps_done = 0
            self._t0 = time.monotonic()
            self._run_geometry = ScanGeometry.for_preprocess(self._run_dataset,
                                                             event.config.preprocess)
            self.loss_plot.set_terms(event.loss_names)
            self.epoch_bar.setMaximum(event.epochs)
            self.epoch_bar.setValue(event.start_epoch)
            self.batch_bar.setMaximum(event.steps_per_epoch)
            self.batch_bar.setValue(0)
            self.status_label.setText(
                f"training on {event.device}: {event.n_train} patterns "
                f"({event.n_val} held out), input {event.input_shape[0]}×{event.input_shape[1]}")
        elif isinstance(event, ev.BatchEnd):
            self._steps_done += 1
            self.batch_bar.setValue(event.step + 1)
            self.epoch_bar.setValue(event.epoch)
            self.loss_plot.append(event.global_step, event.losses)
            elapsed = time.monotonic() - self._t0
            remaining = self._total_steps - self._steps_done
            eta = elapsed / self._steps_done * remaining if self._steps_done else None
            if self._budget_s is not None:  # a time budget ends the run first
                eta = min(eta if eta is not None else float("inf"), self._budget_s - elapsed)
            self.status_label.setText(
                f"epoch {event.epoch + 1}, batch {event.step + 1}/{event.steps_per_epoch} — "
                f"loss {event.losses.get('total', float('nan')):.4g} — "
                f"{event.patterns_per_second:.1f} patterns/s — ETA {format_eta(eta)}")
        elif isinstance(event, ev.EpochEnd):
            self.epoch_bar.setValue(event.epoch + 1)
        elif isinstance(event, ev.Preview):
            if self.state.dataset is self._run_dataset and self._run_geometry is not None:
                self.state.set_preview(event.embeddings, event.positions_step,
                                       self._run_geometry)
        elif isinstance(event, ev.CheckpointSaved):
            self.save_button.setEnabled(True)
        elif isinstance(event, ev.Finished):
            self.status_label.setText(
                f"finished ({event.reason}) after {format_eta(time.monotonic() - self._t0)}"
                + ("; embedding the whole scan…" if event.checkpoint else ""))
            if event.checkpoint:
                self.checkpoint_path = event.checkpoint
                self.save_button.setEnabled(True)
                # the trained model as it is in memory: the checkpoint is not read back
                self.state.set_model(event.trained)
                self._embed_after_training(event.trained)
            else:
                self.status_label.setText(self.status_label.text() + " (no checkpoint written)")
            self.run_finished.emit(event)
        elif isinstance(event, ev.Failed):
            message = f"Training failed: {event.reason}"
            show_error(message)
            self.status_label.setText(message)
            self.run_finished.emit(event)
        self.event_handled.emit(event)

    def _embed_after_training(self, _loaded: Any) -> None:
        if not self.embed_after.isChecked():
            self.status_label.setText(self.status_label.text().replace(
                "; embedding the whole scan…", "; model loaded (embed it from the Model dock)"))
            return
        if self.state.dataset is not None:
            embedding_job(self.state).start(on_finished=self._embedded)

    def _embedded(self) -> None:
        self.status_label.setText(
            self.status_label.text().replace("; embedding the whole scan…", "; scan embedded"))

    # -- saving ----------------------------------------------------------------------------
    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save checkpoint", "model.safetensors",
                                              "Checkpoints (*.safetensors)")
        if path:
            self.save_checkpoint(path)

    def save_checkpoint(self, path: str | os.PathLike) -> Path | None:
        """Copy the run's latest checkpoint to ``path`` (atomically; resumable as written)."""
        src = self.checkpoint_path
        if not src or not Path(src).exists():
            show_error("No checkpoint to save yet: train (or stop a run) first")
            return None
        dest = Path(path)
        try:
            backend.save_checkpoint_copy(src, str(dest), self.state)
        except (OSError, ValueError) as exc:  # the messages name the file and the cause
            show_error(f"Could not save the checkpoint: {exc}")
            return None
        show_info(f"Checkpoint saved to {dest}")
        return dest

    # -- viewer closing ---------------------------------------------------------------------
    def _install_close_filter(self) -> None:
        window = self.window()
        current = self._filter_target() if self._filter_target is not None else None
        if window is not None and window is not self and window is not current:
            window.installEventFilter(self)
            self._filter_target = weakref.ref(window)  # weak: never keep the window alive

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API)
        target = self._filter_target() if self._filter_target is not None else None
        if obj is target and event.type() == QEvent.Type.Close and self.running:
            self.shutdown()
        return False


def _shutdown_on_destroy(widget: TrainWidget):
    """A slot that does not keep ``widget`` alive: stops the run if the dock is destroyed."""
    done, holder = widget._worker_done, widget._stop_holder

    def on_destroyed(*_: Any) -> None:
        stop = holder.get("stop")
        if stop is not None:
            stop.set()
        done.wait(CLOSE_WAIT_S)

    return on_destroyed

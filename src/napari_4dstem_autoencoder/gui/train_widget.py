"""Train dock: hyperparameters, device, Start/Stop, progress with ETA, live losses and maps.

Before Start the dock fits the run to the machine (``training.plan``): a few optimiser steps
are timed on the dataset's own patterns in a worker, and the detector binning (written to the
shared preprocessing, so the Data dock shows it), the training subset, the epochs and the time
budget are set from them, with the estimate shown. Fields the user edits are kept and the plan
fits the others around them; "Fit to this machine" forgets the edits and fits them all again.
Start pressed while the first plan is still being timed, with no field edited, waits for that
plan (a few seconds) instead of starting an unfitted run (full detector, all positions).

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
from .workers import Failure, LatestOnly, start_generator

PREVIEW_SECONDS = 5.0
#: live maps use at most this many positions (the engine embeds them between batches)...
PREVIEW_MAX_POSITIONS = 1024
#: ...and, on a slow device, as many as the encoder embeds in about this many seconds
#: (estimated from the plan's timed training steps), but at least PREVIEW_MIN_POSITIONS
PREVIEW_TARGET_S = 2.0
PREVIEW_MIN_POSITIONS = 256
#: an encoder pass costs about a sixth of a training step (forward + backward, both halves)
ENCODER_SPEEDUP = 6.0
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
    #: emitted with the RunPlan once a fitted plan is in the form (or None when it failed)
    plan_ready = Signal(object)

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
        self._steps_per_epoch = 1
        self._epochs = 1
        self._budget_s: float | None = None
        self._steps_done = 0
        self._run_dataset: Any = None
        self._run_geometry: ScanGeometry | None = None
        self._filter_target: weakref.ref | None = None
        self._stop_holder: dict[str, threading.Event | None] = {"stop": None}
        self.plan: Any = None  # the RunPlan the estimate describes
        self._pinned: set[str] = set()  # fields the user set: the plan keeps them
        self._applying = False
        #: Start was pressed while the first plan was timed: start once it is in the form
        self.start_pending = False
        self._own_preprocess: Any = None  # the preprocessing this dock last wrote
        self._timings: dict[Any, tuple[float, float]] = {}

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
        self.max_minutes.setValue(backend.default_budget_minutes(self.device.currentText()) or 0)
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
        form.addRow("training positions", self.subset)
        form.addRow("seed", self.seed)
        form.addRow("time budget (min)", self.max_minutes)
        form.addRow("device", self.device)
        form.addRow(self.embed_after)
        layout.addWidget(box)

        fit_row = QHBoxLayout()
        self.fit_button = QPushButton("Fit to this machine")
        self.fit_button.setToolTip(
            "Time a few training steps on this scan and choose the detector binning, the "
            "training positions and the epochs so the time budget covers several epochs")
        self.estimate_label = QLabel("estimate: open a dataset")
        self.estimate_label.setWordWrap(True)
        fit_row.addWidget(self.fit_button)
        fit_row.addWidget(self.estimate_label, 1)
        layout.addLayout(fit_row)

        row = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.save_button = QPushButton("Save checkpoint…")
        self.stop_button.setEnabled(False)
        self.save_button.setEnabled(False)
        for b in (self.start_button, self.stop_button, self.save_button):
            row.addWidget(b)
        layout.addLayout(row)

        self.epoch_bar = QProgressBar(format="epoch %v of %m")
        self.batch_bar = QProgressBar(format="batch %v of %m")
        self.status_label = QLabel("idle")
        self.status_label.setWordWrap(True)
        self.memory_label = QLabel("")
        self.memory_label.setVisible(False)
        layout.addWidget(self.epoch_bar)
        layout.addWidget(self.batch_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.memory_label)
        self.loss_plot = LossPlot()
        layout.addWidget(self.loss_plot, 1)

        self.preset.currentTextChanged.connect(self._show_preset_lambdas)
        self.device.currentTextChanged.connect(self._on_device)
        self._planner = LatestOnly(self._make_plan, self._apply_plan,
                                   what="Timing training steps", owner=self)
        self.epochs.valueChanged.connect(self._epochs_edited)
        self.subset.valueChanged.connect(self._subset_edited)
        self.max_minutes.valueChanged.connect(self._budget_edited)
        self.preset.currentTextChanged.connect(self._replan)
        self.batch_size.valueChanged.connect(self._replan)
        self.fit_button.clicked.connect(self._fit_all)
        self.state.dataset_changed.connect(self._on_dataset)
        self.state.preprocess_changed.connect(self._on_preprocess)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.save_button.clicked.connect(self._save_dialog)
        self.destroyed.connect(_shutdown_on_destroy(self))
        self._show_preset_lambdas(self.preset.currentText())
        adopt_first_dataset(napari_viewer, self.state)
        if self.state.dataset is not None and self.plan is None:
            self.request_plan()

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
        self.request_plan()

    # -- fitting the run to the machine -----------------------------------------------------
    # bound methods, not lambdas: Qt drops their connections when the dock is destroyed
    def _replan(self, *_: Any) -> None:
        self.request_plan()

    def _on_dataset(self, *_: Any) -> None:
        if self.start_pending:  # Start was pressed for the dataset that has gone
            self.stop()
        self.request_plan()

    def _fit_all(self, *_: Any) -> None:
        self.request_plan(forget_edits=True)

    def _epochs_edited(self, *_: Any) -> None:
        self._on_user_edit("epochs")

    def _subset_edited(self, *_: Any) -> None:
        self._on_user_edit("train_subset")

    def _budget_edited(self, *_: Any) -> None:
        self._on_user_edit("max_minutes")

    def _on_user_edit(self, name: str) -> None:
        if self._applying:
            return
        self._pinned.add(name)
        self._show_estimate()

    def _on_preprocess(self, config: Any) -> None:
        if self._applying or config == self._own_preprocess:
            return
        # the user changed the preprocessing (Data dock): its binning is theirs now
        self._pinned.add("detector_bin")
        self.request_plan()

    def request_plan(self, forget_edits: bool = False) -> None:
        """Fit binning, subset, epochs and budget to the device in a worker (the fields the
        user set are kept unless ``forget_edits``); ``plan_ready`` fires when it is shown."""
        if forget_edits:
            self._pinned.clear()
        if self.running or self.state.dataset is None:
            return
        try:
            config = self._form_config()
        except ValueError as exc:
            self.estimate_label.setText(f"estimate: {exc}")
            return
        pins = {name: self._pinned_value(name, config) for name in self._pinned}
        self.estimate_label.setText("estimate: timing a few training steps…")
        self._planner.submit(None, self.state.dataset, config, pins)

    def _pinned_value(self, name: str, config: Any) -> Any:
        return {"epochs": config.epochs, "train_subset": config.train_subset,
                "max_minutes": config.max_minutes,
                "detector_bin": config.preprocess.detector_bin}[name]

    def _make_plan(self, dataset: Any, config: Any, pins: dict[str, Any]) -> Any:
        """Worker thread: the plan (timings cached per dataset, preset, device and binning)."""
        def timer(view: Any, trial: Any) -> tuple[float, float]:
            key = (id(dataset), trial.preset, trial.objective, trial.device,
                   trial.batch_size, trial.preprocess)
            if key not in self._timings:
                self._timings[key] = backend.time_training_steps(view, trial)
            return self._timings[key]

        options: dict[str, Any] = {"timer": timer}
        if "max_minutes" in pins:
            if pins["max_minutes"] is None:
                options["no_budget"] = True
            else:
                options["max_minutes"] = pins["max_minutes"]
        for name in ("detector_bin", "train_subset", "epochs"):
            if name in pins and pins[name] is not None:
                options[name] = pins[name]
        try:
            return dataset, backend.plan_run(dataset, config.replace(max_minutes=None), **options)
        except (ValueError, RuntimeError) as exc:  # too small to train, out of memory, …
            return dataset, exc

    def _apply_plan(self, _key: Any, result: Any) -> None:
        dataset, plan = result
        if dataset is not self.state.dataset or self.running:
            return  # a newer dataset, or a run started meanwhile
        self._put_plan(plan)
        if self.start_pending:  # Start waited for this plan (or its failure)
            self._end_pending()
            self._start(wait_for_plan=False)  # with the plan, or the form if it failed

    def _put_plan(self, plan: Any) -> None:
        if isinstance(plan, BaseException):
            self.plan = None
            self.estimate_label.setText(f"estimate: cannot time training here: {plan}")
            self.plan_ready.emit(None)
            return
        self._applying = True
        try:
            if "epochs" not in self._pinned:
                self.epochs.setValue(plan.epochs)
            if "train_subset" not in self._pinned:
                self.subset.setValue(plan.train_subset or 0)
            if "max_minutes" not in self._pinned:
                self.max_minutes.setValue(plan.max_minutes or 0)
            current = self.state.preprocess_config or backend.preprocess_config()
            if "detector_bin" not in self._pinned and current.detector_bin != plan.detector_bin:
                self._own_preprocess = current.replace(detector_bin=plan.detector_bin)
                self.state.set_preprocess(self._own_preprocess)
        finally:
            self._applying = False
        self.plan = plan
        self._show_estimate()
        self.plan_ready.emit(plan)

    def _show_estimate(self) -> None:
        """The estimate for the form as it is now (the plan's timing, the user's numbers)."""
        if self.plan is None:
            return
        subset = self.subset.value() or None
        minutes = self.max_minutes.value() or None
        self.plan = self.plan.replace(epochs=self.epochs.value(), train_subset=subset,
                                      max_minutes=minutes)
        text = f"estimate: {self.plan.describe()}"
        if self.plan.cut_by_budget:
            text += " — the time budget ends the run before the last epoch"
        self.estimate_label.setText(text)

    def train_config(self) -> Any:
        """The frozen TrainConfig the form describes (raises ValueError on a bad entry)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = self.state.dataset.name if self.state.dataset is not None else "model"
        self.checkpoint_path = str(self._run_dir / f"{Path(name).stem}-{stamp}.safetensors")
        return self._form_config().replace(checkpoint_path=self.checkpoint_path)

    def _form_config(self) -> Any:
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
            # epochs the plan chose follow the run's measured speed; typed ones are kept
            fit_epochs_to_budget=self.plan is not None and "epochs" not in self._pinned,
            preview_every_seconds=self.preview_seconds,
            preview_max_positions=self.preview_positions())

    def preview_positions(self) -> int:
        """Positions of the live map: PREVIEW_MAX_POSITIONS, fewer where the plan's timing
        says embedding them would keep the first map waiting."""
        if self.plan is None:
            return PREVIEW_MAX_POSITIONS
        affordable = int(self.plan.patterns_per_second * ENCODER_SPEEDUP * PREVIEW_TARGET_S)
        return max(PREVIEW_MIN_POSITIONS, min(PREVIEW_MAX_POSITIONS, affordable))

    # -- run control -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self) -> Any:
        """Start training on the current dataset; returns the worker (None if not started, or
        while the start waits for the first plan: ``start_pending``)."""
        return self._start(wait_for_plan=True)

    def _start(self, wait_for_plan: bool) -> Any:
        if self.worker is not None:
            return self.worker
        if self.start_pending:
            return None
        dataset = self.state.dataset
        if dataset is None:
            show_error("Training needs a dataset: open a file or the sample first")
            return None
        try:
            config = self.train_config()
        except ValueError as exc:
            show_error(f"Cannot start training: {exc}")
            return None
        if wait_for_plan and self.plan is None and self._planner.busy and not self._pinned:
            # the defaults are the plan's: an unfitted run would train the full detector on
            # every position, many times slower (the first live map alone would wait)
            self.start_pending = True
            self._set_running(True)
            self.status_label.setText("fitting the run to this machine; training starts when "
                                      "the estimate is ready…")
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
        """Ask the engine to stop between batches (it then writes a checkpoint); a Start
        still waiting for its plan is called off."""
        if self.start_pending:
            self._end_pending()
            self.status_label.setText("idle")
            return
        if self.stop_event is not None:
            self.stop_event.set()
            self.status_label.setText("stopping after this batch…")
            self.stop_button.setEnabled(False)

    def _end_pending(self) -> None:
        self.start_pending = False
        self._set_running(False)

    def shutdown(self, timeout_s: float = CLOSE_WAIT_S) -> bool:
        """Stop training and wait for the worker thread to end (viewer closing)."""
        self.start_pending = False
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
            # the epoch bar fills batch by batch, so a long epoch shows progress too
            self._steps_per_epoch = max(1, event.steps_per_epoch)
            self._epochs = event.epochs
            self.epoch_bar.setMaximum(event.epochs * self._steps_per_epoch)
            self.epoch_bar.setValue(event.start_epoch * self._steps_per_epoch)
            self.epoch_bar.setFormat(f"epoch {event.start_epoch + 1} of {event.epochs}")
            self.batch_bar.setMaximum(event.steps_per_epoch)
            self.batch_bar.setValue(0)
            self._show_memory(event.device)
            self.status_label.setText(
                f"training on {event.device}: {event.n_train} patterns "
                f"({event.n_val} held out), input {event.input_shape[0]}×{event.input_shape[1]}")
        elif isinstance(event, ev.BatchEnd):
            self._steps_done += 1
            self.batch_bar.setValue(event.step + 1)
            self.epoch_bar.setValue(event.epoch * self._steps_per_epoch + event.step + 1)
            self.epoch_bar.setFormat(f"epoch {event.epoch + 1} of {self._epochs}")
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
            if event.epochs != self._epochs:  # re-fitted to the time budget
                self._total_steps += (event.epochs - self._epochs) * self._steps_per_epoch
                self._epochs = event.epochs
                self.epoch_bar.setMaximum(event.epochs * self._steps_per_epoch)
                self.epoch_bar.setFormat(f"epoch {event.epoch + 1} of {event.epochs}")
            self.epoch_bar.setValue((event.epoch + 1) * self._steps_per_epoch)
        elif isinstance(event, ev.Preview):
            if self.state.dataset is self._run_dataset and self._run_geometry is not None:
                self.state.set_preview(event.embeddings, event.positions_step,
                                       self._run_geometry)
        elif isinstance(event, ev.CheckpointSaved):
            self.save_button.setEnabled(True)
        elif isinstance(event, ev.Finished):
            self._show_memory(self.state.device)
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

    def _show_memory(self, device: str) -> None:
        text = backend.device_memory_text(device)
        self.memory_label.setText(text)
        self.memory_label.setVisible(bool(text))

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
        self._show_memory(self.state.device)

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

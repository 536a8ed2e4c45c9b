"""The one-entry workflow dock, the run plan shown before Start, and the self-running demo,
driven through the manifest under Xvfb."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_4dstem_autoencoder.gui import backend
from napari_4dstem_autoencoder.gui.keys import PLUGIN
from napari_4dstem_autoencoder.gui.state import get_state
from napari_4dstem_autoencoder.gui.workflow_widget import WorkflowWidget
from napari_4dstem_autoencoder.training import events as ev
from napari_4dstem_autoencoder.training.plan import DEFAULT_CPU_MINUTES, MAX_EPOCHS

PLAN_TIMEOUT_MS = 180_000


def _small_scan(tmp_path, scan=(8, 8), detector=(64, 64)) -> str:
    """Two kinds of disc pattern as a 4-D .npy (the reader opens it as a 4D-STEM scan)."""
    rng = np.random.default_rng(0)
    qy, qx = np.mgrid[0:detector[0], 0:detector[1]]
    r2 = (qy - detector[0] / 2) ** 2 + (qx - detector[1] / 2) ** 2
    data = np.empty((*scan, *detector), dtype=np.uint16)
    for ry in range(scan[0]):
        for rx in range(scan[1]):
            radius = 6 if rx < scan[1] // 2 else 12
            data[ry, rx] = rng.poisson((r2 < radius**2) * 300.0 + 3.0)
    path = tmp_path / "scan.npy"
    np.save(path, data)
    return str(path)


def test_one_entry_opens_the_steps_as_tabs_that_fit_a_laptop_screen(
        make_napari_viewer, qtbot, open_dock):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "stem4d_sample")
    workflow = open_dock(viewer, "4D-STEM Autoencoder")
    assert isinstance(workflow, WorkflowWidget)
    tabs = workflow.tabs
    assert [tabs.tabText(i) for i in range(tabs.count())] == ["Data", "Train", "Model", "Explore"]
    explore = workflow.explore
    assert [explore.tabText(i) for i in range(explore.count())] == ["Maps", "Projection",
                                                                     "Traversal"]
    qtbot.waitUntil(lambda: workflow.inspector_dock is not None, timeout=5_000)
    from qtpy.QtCore import Qt

    main = viewer.window._qt_window
    assert main.dockWidgetArea(workflow.inspector_dock) == Qt.DockWidgetArea.BottomDockWidgetArea
    main.resize(1366, 768)
    qtbot.wait(200)
    hint = main.minimumSizeHint()
    assert hint.width() <= 1366 and hint.height() <= 768
    assert main.width() <= 1366 and main.height() <= 768
    bar = tabs.tabBar()  # every title shown whole
    for i in range(tabs.count()):
        assert bar.tabRect(i).width() >= bar.fontMetrics().horizontalAdvance(tabs.tabText(i))
    # the steps share the viewer's one state with the single docks, which stay available
    state = get_state(viewer)
    assert workflow.train.state is state and workflow.inspector.state is state
    single = open_dock(viewer, "Inspector")
    assert single.state is state
    workflow.show_step("Projection")
    assert tabs.currentIndex() == 3 and explore.currentIndex() == 1
    with pytest.raises(ValueError, match="no step"):
        workflow.show_step("Nowhere")


def test_the_train_dock_shows_a_timed_estimate_before_start(make_napari_viewer, qtbot, open_dock,
                                                             tmp_path):
    viewer = make_napari_viewer()
    viewer.open(_small_scan(tmp_path), plugin=PLUGIN)
    data = open_dock(viewer, "Data")
    train = open_dock(viewer, "Train")
    train.device.setCurrentText("cpu")
    with qtbot.waitSignal(train.plan_ready, timeout=PLAN_TIMEOUT_MS) as got:
        train.request_plan()
    plan = got.args[0]
    assert plan is not None and plan.device == "cpu" and plan.patterns_per_second > 0
    text = train.estimate_label.text()
    assert text.startswith("estimate: about ") and "patterns/s timed on cpu" in text
    # 64 positions of 64x64 patterns: any CPU covers several epochs of them at full size
    assert plan.detector_bin == 1 and plan.input_shape == (64, 64)
    assert train.epochs.value() == plan.epochs and plan.epochs > 1
    assert train.max_minutes.value() == DEFAULT_CPU_MINUTES
    assert train.subset.value() == 0  # every position
    assert get_state(viewer).preprocess_config.detector_bin == 1
    assert plan.estimate_s <= DEFAULT_CPU_MINUTES * 60
    # what Start trains is what the estimate describes
    config = train.train_config()
    assert config.epochs == plan.epochs and config.max_minutes == DEFAULT_CPU_MINUTES
    assert config.fit_epochs_to_budget  # the plan's epochs follow the run's measured speed
    assert data.detector_bin.value() == config.preprocess.detector_bin


def _held_timing(monkeypatch, fails: bool = False) -> threading.Event:
    """The plan's step timing waits for the returned event (then reports a fast machine, or
    fails), so a test can press Start while the first plan is still being timed."""
    release = threading.Event()

    def held(view, config):
        assert release.wait(60)
        if fails:
            raise RuntimeError("out of memory while timing")
        shape = view.detector_shape
        return 1e6 / (shape[0] * shape[1] / config.preprocess.detector_bin ** 2), 0.1

    monkeypatch.setattr(backend, "time_training_steps", held)
    return release


def test_start_before_the_first_estimate_waits_for_it_and_trains_the_plan(
        make_napari_viewer, qtbot, open_dock, tmp_path, monkeypatch):
    release = _held_timing(monkeypatch)
    viewer = make_napari_viewer()
    viewer.open(_small_scan(tmp_path), plugin=PLUGIN)
    train = open_dock(viewer, "Train")  # asks for a plan at once (the dataset is open)
    train.device.setCurrentText("cpu")
    train.embed_after.setChecked(False)
    assert train.plan is None and train._planner.busy
    assert train.start() is None  # not an unfitted run: it waits for the plan
    assert train.start_pending and not train.running
    assert not train.start_button.isEnabled() and train.stop_button.isEnabled()
    assert "fitting the run to this machine" in train.status_label.text()
    with qtbot.waitSignal(train.event_handled, timeout=PLAN_TIMEOUT_MS,
                          check_params_cb=lambda e: isinstance(e, ev.Started)) as started:
        release.set()
    config = started.args[0].config
    plan = train.plan
    assert plan is not None and not train.start_pending and train.running
    assert config.epochs == plan.epochs == MAX_EPOCHS  # the fast machine's plan, not the form's
    assert config.max_minutes == DEFAULT_CPU_MINUTES and config.fit_epochs_to_budget
    with qtbot.waitSignal(train.run_finished, timeout=PLAN_TIMEOUT_MS) as finished:
        train.stop()
    assert isinstance(finished.args[0], ev.Finished) and finished.args[0].reason == "stopped"


def test_stop_calls_off_a_start_that_waits_for_its_plan(make_napari_viewer, qtbot, open_dock,
                                                         tmp_path, monkeypatch):
    release = _held_timing(monkeypatch)
    viewer = make_napari_viewer()
    viewer.open(_small_scan(tmp_path), plugin=PLUGIN)
    train = open_dock(viewer, "Train")
    train.device.setCurrentText("cpu")
    assert train.start() is None and train.start_pending
    train.stop()
    assert not train.start_pending and train.start_button.isEnabled()
    with qtbot.waitSignal(train.plan_ready, timeout=30_000) as got:
        release.set()
    assert got.args[0] is not None  # the estimate is shown, and nothing was started
    qtbot.wait(200)
    assert not train.running and train.worker is None


def test_a_start_that_waited_for_a_failed_plan_trains_the_form(make_napari_viewer, qtbot,
                                                                open_dock, tmp_path,
                                                                monkeypatch):
    release = _held_timing(monkeypatch, fails=True)
    viewer = make_napari_viewer()
    viewer.open(_small_scan(tmp_path), plugin=PLUGIN)
    train = open_dock(viewer, "Train")
    train.device.setCurrentText("cpu")
    train.embed_after.setChecked(False)
    form_epochs = train.epochs.value()
    assert train.start() is None and train.start_pending
    with qtbot.waitSignal(train.event_handled, timeout=PLAN_TIMEOUT_MS,
                          check_params_cb=lambda e: isinstance(e, ev.Started)) as started:
        release.set()
    assert "cannot time training here: out of memory" in train.estimate_label.text()
    assert train.plan is None and not train.start_pending  # not waiting again
    assert started.args[0].config.epochs == form_epochs
    with qtbot.waitSignal(train.run_finished, timeout=PLAN_TIMEOUT_MS):
        train.stop()


def test_start_does_not_wait_for_a_plan_when_the_user_set_the_run(
        make_napari_viewer, qtbot, open_dock, tmp_path, monkeypatch):
    release = _held_timing(monkeypatch)
    viewer = make_napari_viewer()
    viewer.open(_small_scan(tmp_path), plugin=PLUGIN)
    train = open_dock(viewer, "Train")
    train.device.setCurrentText("cpu")
    train.embed_after.setChecked(False)
    train.epochs.setValue(1)  # the user's run, not the plan's
    assert train.plan is None and train._planner.busy
    started = []
    train.event_handled.connect(lambda e: isinstance(e, ev.Started) and started.append(e))
    try:
        with qtbot.waitSignal(train.run_finished, timeout=PLAN_TIMEOUT_MS) as finished:
            assert train.start() is not None and not train.start_pending
        assert isinstance(finished.args[0], ev.Finished)
        assert [e.epochs for e in started] == [1] and train.plan is None  # unplanned
    finally:
        release.set()


def test_the_plan_keeps_what_the_user_set_until_fit_is_pressed(make_napari_viewer, qtbot,
                                                                open_dock, tmp_path,
                                                                monkeypatch):
    timed = []

    def fake(view, config):  # a fast machine: 10^6 pixels of patterns per second
        shape = view.detector_shape
        timed.append(config.preprocess.detector_bin)
        return 1e6 / (shape[0] * shape[1] / config.preprocess.detector_bin ** 2), 0.1

    monkeypatch.setattr(backend, "time_training_steps", fake)
    viewer = make_napari_viewer()
    viewer.open(_small_scan(tmp_path), plugin=PLUGIN)
    data = open_dock(viewer, "Data")
    train = open_dock(viewer, "Train")
    with qtbot.waitSignal(train.plan_ready, timeout=30_000):
        train.request_plan()
    assert train.epochs.value() == MAX_EPOCHS and train.train_config().fit_epochs_to_budget
    train.epochs.setValue(3)  # the user's: kept by later plans, and by the running engine
    assert "3 epochs" in train.estimate_label.text()  # the estimate follows the edit at once
    assert not train.train_config().fit_epochs_to_budget
    with qtbot.waitSignal(train.plan_ready, timeout=30_000):
        train.batch_size.setValue(8)  # a change that re-plans
    assert train.epochs.value() == 3
    data.detector_bin.setValue(2)  # the Data dock's binning is the user's too
    qtbot.wait(100)
    with qtbot.waitSignal(train.plan_ready, timeout=30_000):
        train.request_plan()
    assert train.plan.detector_bin == 2 and train.plan.input_shape == (32, 32)
    with qtbot.waitSignal(train.plan_ready, timeout=30_000):
        train.fit_button.click()  # forget the edits: everything fitted again
    assert train.epochs.value() == MAX_EPOCHS and train.plan.detector_bin == 1
    assert train.train_config().fit_epochs_to_budget
    assert data.detector_bin.value() == 1  # written back to the shared preprocessing


def test_the_demo_runs_the_workflow_by_itself(make_napari_viewer, qtbot, open_dock, tmp_path):
    """Plan, short training with live maps, embedding, clusters, probe — on a small scan, the
    steps chained by the demo's DemoRun exactly as `stem-ae demo` chains them."""
    from napari_4dstem_autoencoder.gui.demo import DemoRun, parse_args

    args = parse_args(["--file", "x.npy", "--minutes", "0.1", "--clusters", "2"])
    viewer = make_napari_viewer()
    viewer.open(_small_scan(tmp_path, detector=(32, 32)), plugin=PLUGIN)
    workflow = open_dock(viewer, "4D-STEM Autoencoder")
    previews = []
    state = get_state(viewer)
    state.preview_changed.connect(lambda *a: previews.append(a))
    ended = []
    run = DemoRun(viewer, workflow, args.minutes, args.clusters, on_done=lambda: ended.append(1))
    qtbot.waitUntil(lambda: bool(ended), timeout=600_000)
    assert run.stage == "done"
    assert workflow.train.plan is not None and workflow.train.plan.max_minutes == 0.1
    assert previews  # live maps while it trained
    assert state.embeddings.shape == (8, 8, 32)
    labels = workflow.latent.labels
    assert labels.shape == (8, 8) and len(np.unique(labels)) == 2
    assert workflow.tabs.currentIndex() == 3  # Explore is in front
    ry, rx = state.position
    assert labels[ry, rx] == np.bincount(labels.ravel()).argmax()  # in the largest region
    qtbot.waitUntil(lambda: workflow.inspector.recon_image is not None, timeout=60_000)


def test_embedding_gives_the_device_memory_back_however_it_ends(tiny_checkpoint_model,
                                                               monkeypatch):
    """The release path on CPU: backend.embed_and_score hands the model to
    release_device_memory after a finished and after a stopped pass."""
    import threading

    from napari_4dstem_autoencoder.training import device as device_mod

    released = []
    monkeypatch.setattr(device_mod, "release_device_memory",
                        lambda model, device, keep_on_device=False: released.append(
                            (model, str(device))))
    loaded, dataset = tiny_checkpoint_model
    out = backend.embed_and_score(loaded, dataset, "cpu")
    assert out is not None and released == [(loaded.model, "cpu")]
    stop = threading.Event()
    stop.set()
    assert backend.embed_and_score(loaded, dataset, "cpu", stop=stop) is None
    assert released[-1] == (loaded.model, "cpu") and len(released) == 2


@pytest.fixture
def tiny_checkpoint_model(checkpoint):
    from napari_4dstem_autoencoder.data.sample import make_sample_dataset
    from napari_4dstem_autoencoder.training.checkpoints import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    return loaded, make_sample_dataset(scan_shape=(8, 8))


def test_the_epoch_bar_follows_epochs_refitted_to_the_budget(make_napari_viewer, qtbot,
                                                              open_dock, tmp_path, monkeypatch):
    from napari_4dstem_autoencoder.training import engine
    from napari_4dstem_autoencoder.training import events as ev

    monkeypatch.setattr(backend, "time_training_steps",
                        lambda view, config: (1e4, 0.1))  # a fast machine: the plan's 50 epochs
    # the run turns out slower than timed: after its first epoch one more fits
    monkeypatch.setattr(engine, "refit_epochs", lambda done, total, epoch_s, left_s: 2)
    viewer = make_napari_viewer()
    viewer.open(_small_scan(tmp_path), plugin=PLUGIN)
    train = open_dock(viewer, "Train")
    train.device.setCurrentText("cpu")
    train.embed_after.setChecked(False)
    with qtbot.waitSignal(train.plan_ready, timeout=30_000):
        train.request_plan()
    assert train.epochs.value() == MAX_EPOCHS
    with qtbot.waitSignal(train.run_finished, timeout=PLAN_TIMEOUT_MS) as finished:
        train.start()
    event = finished.args[0]
    assert isinstance(event, ev.Finished) and event.reason == "time_budget"
    assert len(event.history) == 2
    steps = train.events_seen.count("BatchEnd") // 2
    assert train.epoch_bar.format() == "epoch 2 of 2"
    assert train.epoch_bar.maximum() == train.epoch_bar.value() == 2 * steps

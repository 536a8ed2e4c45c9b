"""The reader inside napari: it wins for 4D-STEM .h5 files without napari's "Choose reader"
dialog, declines other HDF5, asks which array to open when a file holds several, and gives
every layer the same units (no "Inconsistent units" warnings when files open)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from napari_4dstem_autoencoder.gui import hooks
from napari_4dstem_autoencoder.gui.keys import DATASET_KEY, PLUGIN

UNIT_WARNING = "Inconsistent units across layers"


@pytest.fixture
def reader_settings(make_napari_viewer, monkeypatch):
    """napari's settings with no reader preference (restored afterwards, never saved)."""
    from napari.settings import get_settings

    settings = get_settings()
    before = dict(settings.plugins.extension2reader)
    saving = settings._save_on_change
    settings._save_on_change = False
    settings.plugins.extension2reader = {}
    monkeypatch.setattr(hooks, "_recent", {})
    try:
        yield settings
    finally:
        settings.plugins.extension2reader = before
        settings._save_on_change = saving


@pytest.fixture
def dialogs(monkeypatch):
    """Paths napari's own reader dialog was asked about (the dialog itself never opens)."""
    import napari._qt.qt_viewer as qt_viewer

    asked: list[list[str]] = []
    monkeypatch.setattr(qt_viewer, "handle_gui_reading",
                        lambda paths, *a, **k: asked.append(list(paths)))
    return asked


def _pick(key, seen=None):
    def chooser(path, candidates):
        if seen is not None:
            seen.append((path, list(candidates)))
        return key
    return chooser


def test_napari_asks_which_reader_until_the_plugin_is_preferred_then_opens_h5_directly(
        make_napari_viewer, reader_settings, dialogs, sim_three_region_path, monkeypatch):
    from napari.errors import MultipleReaderError

    monkeypatch.setattr(hooks, "DATASET_CHOOSER", _pick("/data_counts"))
    viewer = make_napari_viewer()
    path = str(sim_three_region_path)
    # the cause: napari's own reader claims *.h5 too, so with no preference napari asks
    with pytest.raises(MultipleReaderError):
        viewer.open(path, plugin=None)  # plugin=None: napari's own choice, as on a drop
    assert hooks.prefer_this_reader() == ["*.h5", "*.hdf5", "*.hdf"]
    assert reader_settings.plugins.extension2reader["*.h5"] == PLUGIN
    viewer.window._qt_viewer._qt_open([path], stack=False)  # what a drop does
    assert dialogs == []
    names = [layer.name for layer in viewer.layers]
    assert names == ["abtem_three_region.h5 [data_counts] virtual BF"]


def test_the_data_dock_and_the_reader_record_the_preference(
        make_napari_viewer, reader_settings, open_dock):
    viewer = make_napari_viewer()
    open_dock(viewer, "Data")
    assert reader_settings.plugins.extension2reader.get("*.h5") == PLUGIN
    reader_settings.plugins.extension2reader = {}
    hooks.get_reader("anything.h5")  # the reader's first use records it too
    assert reader_settings.plugins.extension2reader.get("*.hdf5") == PLUGIN


def test_a_users_own_reader_choice_is_kept(reader_settings):
    reader_settings.plugins.extension2reader = {"*.h5": "some-other-plugin"}
    assert hooks.prefer_this_reader() == ["*.hdf5", "*.hdf"]
    assert reader_settings.plugins.extension2reader["*.h5"] == "some-other-plugin"


def test_hdf5_without_4dstem_data_is_declined(make_napari_viewer, reader_settings, tmp_path):
    from napari.errors import ReaderPluginError

    table = tmp_path / "table.h5"
    with h5py.File(table, "w") as f:
        f["x"] = np.arange(10)
    viewer = make_napari_viewer()
    hooks.prefer_this_reader()
    assert hooks.get_reader(str(table)) is None
    # napari then says this plugin refused the file (its dialog offers the other readers)
    with pytest.raises(ReaderPluginError, match="refused"):
        viewer.open(str(table), plugin=None)
    assert len(viewer.layers) == 0


def test_choosing_data_counts_opens_that_array(make_napari_viewer, reader_settings,
                                               sim_three_region_path, monkeypatch):
    seen: list = []
    monkeypatch.setattr(hooks, "DATASET_CHOOSER", _pick("/data_counts", seen))
    viewer = make_napari_viewer()
    viewer.open(str(sim_three_region_path), plugin=PLUGIN)
    (path, candidates), = seen
    assert path.name == "abtem_three_region.h5"
    assert [c.describe() for c in candidates] == ["/data  32×32×64×64  float32",
                                                  "/data_counts  32×32×64×64  float32"]
    layer, = viewer.layers
    ds = layer.metadata[DATASET_KEY]
    assert ds.metadata["hdf5_path"] == "/data_counts"
    assert float(ds.pattern(0, 0).max()) > 100  # counts, not fractions of the beam
    np.testing.assert_allclose(layer.scale, (2.0, 2.0))
    assert [str(u) for u in layer.units] == ["angstrom", "angstrom"]


def test_cancelling_the_choice_opens_nothing(make_napari_viewer, reader_settings,
                                            sim_three_region_path, monkeypatch):
    monkeypatch.setattr(hooks, "DATASET_CHOOSER", _pick(None))
    viewer = make_napari_viewer()
    viewer.open(str(sim_three_region_path), plugin=PLUGIN)
    assert len(viewer.layers) == 0
    monkeypatch.setattr(hooks, "DATASET_CHOOSER", _pick("/data"))  # and it can be opened again
    viewer.open(str(sim_three_region_path), plugin=PLUGIN)
    assert viewer.layers[0].metadata[DATASET_KEY].metadata["hdf5_path"] == "/data"


def test_the_dialog_lists_name_shape_and_dtype(make_napari_viewer, qtbot, reader_settings,
                                              sim_three_region_path, tmp_path):
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QInputDialog

    viewer = make_napari_viewer(show=True)
    listed: list[list[str]] = []

    def answer() -> None:
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, QInputDialog):
            QTimer.singleShot(50, answer)  # not shown yet
            return
        listed.append(list(dialog.comboBoxItems()))
        dialog.grab().save(str(tmp_path / "chooser.png"))
        dialog.setTextValue(listed[0][1])
        dialog.accept()

    QTimer.singleShot(50, answer)
    viewer.open(str(sim_three_region_path), plugin=PLUGIN)
    assert listed == [["/data  32×32×64×64  float32", "/data_counts  32×32×64×64  float32"]]
    assert viewer.layers[0].metadata[DATASET_KEY].metadata["hdf5_path"] == "/data_counts"
    assert (tmp_path / "chooser.png").stat().st_size > 0


def test_without_a_gui_the_error_lists_the_candidates(sim_three_region_path, monkeypatch):
    from qtpy.QtWidgets import QApplication

    from napari_4dstem_autoencoder.data.readers import AmbiguousDatasetError

    monkeypatch.setattr(hooks, "_recent", {})
    monkeypatch.setattr(QApplication, "instance", staticmethod(lambda: None))
    with pytest.raises(AmbiguousDatasetError, match="/data_counts 32x32x64x64 float32"):
        hooks.read_4dstem(str(sim_three_region_path))


def _unit_warnings(notifications) -> list[str]:
    return [m for m in notifications.messages if m.startswith(UNIT_WARNING)]


def test_a_second_calibrated_file_opens_without_unit_warnings(
        make_napari_viewer, qtbot, reader_settings, notifications, open_dock,
        sim_three_region_path, monkeypatch):
    from napari_4dstem_autoencoder.gui.state import get_state

    monkeypatch.setattr(hooks, "DATASET_CHOOSER", _pick("/data_counts"))
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "stem4d_sample")  # nm
    data = open_dock(viewer, "Data")
    state = get_state(viewer)
    state.set_position(3, 4)  # the probe marker appears, in the sample's units
    qtbot.wait(100)
    viewer.open(str(sim_three_region_path), plugin=None)  # Å: another length, one scale
    qtbot.wait(100)
    data.dataset_combo.setCurrentText("abtem_three_region.h5 [data_counts] virtual BF")
    state.set_position(5, 6)
    data.compute_virtual_images()
    qtbot.waitUntil(lambda: data._vworker is None, timeout=30_000)
    qtbot.wait(200)
    assert _unit_warnings(notifications) == []
    units = {layer.name: tuple(str(u) for u in layer.units) for layer in viewer.layers}
    assert units["abtem_three_region.h5 [data_counts] virtual ADF"] == ("angstrom", "angstrom")
    assert units["probe position"] == ("angstrom", "angstrom")  # follows the dataset shown
    assert units["4D-STEM sample virtual BF"] == ("nanometer", "nanometer")


def test_an_uncalibrated_scan_beside_a_calibrated_one_is_explained_once(
        make_napari_viewer, qtbot, reader_settings, notifications, real_data_dir):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "stem4d_sample")
    qtbot.wait(100)
    viewer.open(str(real_data_dir / "quantumdetector/001_4x2_6bit.mib"), plugin=PLUGIN)
    qtbot.wait(100)
    assert [tuple(map(str, layer.units)) for layer in viewer.layers][-1] == ("pixel", "pixel")
    ours = [m for m in notifications.messages if "has no scan calibration" in m]
    assert len(ours) == 1 and "001_4x2_6bit.mib" in ours[0] and "4D-STEM sample" in ours[0]


def test_scan_units_are_lengths_or_pixels():
    from napari_4dstem_autoencoder.data.dataset import Calibration

    assert hooks.scan_units(Calibration((2.0, 2.0), "Å")) == ("Å", "Å")
    assert hooks.scan_units(Calibration((0.5, 0.5), "nm")) == ("nm", "nm")
    assert hooks.scan_units(Calibration()) == ("pixel", "pixel")
    assert hooks.scan_units(Calibration((1.0, 1.0), "mrad")) == ("pixel", "pixel")
    assert hooks.scan_units(Calibration((1.0, 1.0), "not a unit")) == ("pixel", "pixel")

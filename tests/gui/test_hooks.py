"""napari hooks without a viewer: get_reader's cheap decisions, layer tuples, de-duplication."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np

from napari_4dstem_autoencoder.gui import hooks


def test_get_reader_declines_non_4dstem_files_without_raising(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    np.save(tmp_path / "image.npy", np.zeros((8, 8)))
    with h5py.File(tmp_path / "table.h5", "w") as f:
        f["x"] = np.arange(10)
    (tmp_path / "fake.h5").write_bytes(b"not hdf5 at all")
    (tmp_path / "plain_folder").mkdir()
    for name in ("notes.txt", "image.npy", "table.h5", "fake.h5", "plain_folder", "missing.mib"):
        assert hooks.get_reader(str(tmp_path / name)) is None, name
    assert hooks.get_reader(12345) is None  # nonsense input: None, not an exception


def test_get_reader_accepts_the_real_formats(real_data_dir):
    for name in ("quantumdetector/001_4x2_6bit.mib", "quantumdetector/001_4x2_6bit.hdr",
                 "blockfile/test1.blo", "emd/Si100_4D.emd", "arina/test_00_master.h5",
                 "empad/map4x4.xml", "derived/merlin_001_4x2.zspy", "derived/merlin_001_4x2_plain.h5"):
        assert hooks.get_reader(str(real_data_dir / name)) is hooks.read_4dstem, name


def test_reader_layer_tuple_and_pair_deduplication(real_data_dir, monkeypatch):
    monkeypatch.setattr(hooks, "_recent", {})
    layers = hooks.read_4dstem(str(real_data_dir / "blockfile/test1.blo"))
    assert len(layers) == 1
    data, kwargs, kind = layers[0]
    assert kind == "image" and data.shape == (3, 2)
    assert kwargs["name"] == "test1.blo virtual BF"
    assert kwargs["scale"] == (12.8, 12.8) and kwargs["units"] == ("nm", "nm")
    ds = kwargs["metadata"][hooks.DATASET_KEY]
    assert ds.shape == (3, 2, 144, 144)
    # dropping .mib and .hdr together (napari calls once per file) opens the dataset once
    first = hooks.read_4dstem(str(real_data_dir / "quantumdetector/001_4x2_6bit.mib"))
    second = hooks.read_4dstem(str(real_data_dir / "quantumdetector/001_4x2_6bit.hdr"))
    assert first[0][2] == "image" and second == [(None,)]


def test_the_navigator_carries_the_beam_its_bright_field_was_summed_over(real_data_dir):
    from napari_4dstem_autoencoder.data import open_dataset
    from napari_4dstem_autoencoder.data.virtual import estimate_beam, virtual_bright_field

    with open_dataset(real_data_dir / "quantumdetector/001_4x2_6bit.mib") as ds:
        data, kwargs, _ = hooks.navigator_layers(ds)[0]
        beam = kwargs["metadata"][hooks.BEAM_KEY]
        assert beam == estimate_beam(ds)
        np.testing.assert_allclose(data, virtual_bright_field(ds, beam.radius, beam.centre))
    # nothing else rides along unread
    assert set(kwargs["metadata"]) == {hooks.DATASET_KEY, hooks.BEAM_KEY,
                                       hooks.NAVIGATOR_STRIDE_KEY}


def test_the_plugin_name_is_the_manifests():
    from pathlib import Path

    import yaml

    from napari_4dstem_autoencoder.gui.keys import PLUGIN

    manifest = Path(hooks.__file__).parents[1] / "napari.yaml"
    assert yaml.safe_load(manifest.read_text())["name"] == PLUGIN


def test_large_files_get_a_strided_navigator(real_data_dir, monkeypatch):
    monkeypatch.setattr(hooks, "_recent", {})
    monkeypatch.setattr(hooks, "NAVIGATOR_FULL_BYTES", 2**20)
    from napari_4dstem_autoencoder.data import open_dataset

    with open_dataset(real_data_dir / "quantumdetector/001_4x2_6bit.mib") as ds:  # 0.5 MiB, 2x4
        assert hooks.navigator_stride(ds, budget=2**17) == 2
        data, kwargs, _ = hooks.navigator_layers(ds)[0]
        assert data.shape == (2, 4) and kwargs["metadata"]["stem4d_navigator_stride"] == 1
        monkeypatch.setattr(hooks, "NAVIGATOR_FULL_BYTES", 2**17)
        data, kwargs, _ = hooks.navigator_layers(ds)[0]
        assert data.shape == (1, 2) and kwargs["scale"] == (2.0, 2.0)
        assert kwargs["translate"] == (0.5, 0.5)


def test_sample_hook_and_no_gui_imports():
    layers = hooks.make_sample_data()
    (nav, nav_kw, nav_kind), (labels, lab_kw, lab_kind) = layers
    assert nav_kind == "image" and nav.shape == (64, 64) and nav_kw["scale"] == (0.5, 0.5)
    truth = nav_kw["metadata"][hooks.LABELS_KEY]
    assert truth.shape == (64, 64) and set(np.unique(truth)) == {0, 1, 2, 3, 4}
    assert lab_kind == "labels" and np.array_equal(labels, truth + 1)


def test_hooks_import_no_gui_and_no_torch():
    """napari imports the hooks at start-up: they must pull in neither Qt/napari nor torch."""
    code = ("import sys, napari_4dstem_autoencoder.gui.hooks as h; h.get_reader('x.mib'); "
            "bad = [m for m in ('napari', 'qtpy', 'PyQt6', 'magicgui', 'torch') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _notifications_since(start: int) -> list[tuple[str, str]]:
    from napari.utils.notifications import notification_manager

    return [(str(n.severity), str(n.message)) for n in notification_manager.records[start:]]


def _record_count() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


def test_a_sparse_2_tib_hdf5_opens_without_reading_its_fill_values(tmp_path, monkeypatch,
                                                                   count_h5_reads):
    path = tmp_path / "allocated_never_written.h5"
    with h5py.File(path, "w") as f:  # 2 TiB on paper, nothing on disk
        f.create_dataset("data", shape=(1024, 1024, 1024, 1024), dtype=np.uint16, chunks=True)
    assert path.stat().st_size < 1e5
    monkeypatch.setattr(hooks, "_recent", {})
    reads = count_h5_reads
    start = _record_count()
    reader = hooks.get_reader(str(path))
    assert reader is hooks.read_4dstem
    (data, kwargs, kind), = reader(str(path))
    assert sum(reads) == 0  # not one pattern of fill values was read
    assert kind == "image" and np.all(data == 0)
    ds = kwargs["metadata"][hooks.DATASET_KEY]
    assert ds.shape == (1024, 1024, 1024, 1024) and ds.metadata["never_written"]
    messages = _notifications_since(start)
    assert any(sev == "warning" and str(path) in msg and "holds no data" in msg
               and "fill value 0" in msg for sev, msg in messages), messages
    assert any("the navigator was not read" in msg for _, msg in messages), messages
    ds.close()


def test_a_large_file_gets_a_bounded_strided_navigator_and_says_so(tmp_path, monkeypatch,
                                                                  count_h5_reads):
    path = tmp_path / "large.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=rng.poisson(3, (64, 64, 16, 16)).astype(np.uint16),
                         chunks=(1, 1, 16, 16))
    pattern = 16 * 16 * 2
    monkeypatch.setattr(hooks, "_recent", {})
    monkeypatch.setattr(hooks, "NAVIGATOR_FULL_BYTES", 64 * pattern)  # pretend 2 MiB is huge
    monkeypatch.setattr(hooks, "BEAM_SAMPLE_BYTES", 16 * pattern)
    from napari_4dstem_autoencoder.data import quality

    monkeypatch.setattr(quality, "FINITE_CHECK_BYTES", 2**16)
    reads = count_h5_reads
    start = _record_count()
    (data, kwargs, _), = hooks.get_reader(str(path))(str(path))
    stride = kwargs["metadata"][hooks.NAVIGATOR_STRIDE_KEY]
    assert stride == 8 and data.shape == (8, 8)
    # patterns read: the navigator's 64, the beam's 16, the quality sample's 64, nothing more
    assert sum(reads) <= (64 + 16 + quality.QUALITY_SAMPLE_PATTERNS) * 16 * 16
    messages = _notifications_since(start)
    assert any(sev == "info" and "the navigator shows every 8th scan position (8x8 of 64x64)" in msg
               and "Compute BF / ADF navigators" in msg for sev, msg in messages), messages
    kwargs["metadata"][hooks.DATASET_KEY].close()


def test_storage_chunks_count_in_the_navigator_budget(tmp_path):
    from napari_4dstem_autoencoder.data import open_dataset

    path = tmp_path / "blocky.h5"
    with h5py.File(path, "w") as f:  # every storage chunk spans 8 x 8 positions
        f.create_dataset("data", data=np.ones((64, 64, 16, 16), np.uint16), chunks=(8, 8, 16, 16))
    with open_dataset(path, check_quality=False) as ds:
        pattern = 16 * 16 * 2
        # 16 reads of 64 positions each decode 16 chunks = 1024 patterns, not 16
        assert hooks.navigator_stride(ds, budget=1024 * pattern) == 16
        assert hooks.navigator_stride(ds, budget=64 * 64 * pattern) == 1
        assert hooks.navigator_stride(ds, budget=10**12, max_positions=256) == 4


def test_data_warnings_become_notifications(tmp_path, monkeypatch):
    path = tmp_path / "dark.npy"
    np.save(path, np.zeros((4, 4, 8, 8), np.uint16))
    monkeypatch.setattr(hooks, "_recent", {})
    start = _record_count()
    layers = hooks.read_4dstem(str(path))
    assert layers[0][2] == "image"
    messages = _notifications_since(start)
    assert ("warning", f"{path}: every value is 0: the data is all zero (an empty acquisition, "
                       "a closed shutter, or a file that was never written)") in messages


def test_broken_links_are_claimed_so_the_error_says_what_is_wrong(tmp_path, monkeypatch):
    import pytest

    from napari_4dstem_autoencoder.data import DatasetError

    dangling = tmp_path / "scan.mib"
    dangling.symlink_to(tmp_path / "elsewhere.mib")
    loop = tmp_path / "loop.h5"
    loop.symlink_to(loop)
    monkeypatch.setattr(hooks, "_recent", {})
    for path, problem in ((dangling, "dangling symbolic link"), (loop, "symbolic link loop")):
        assert hooks.get_reader(str(path)) is hooks.read_4dstem
        with pytest.raises(DatasetError, match=problem):
            hooks.read_4dstem(str(path))
    assert hooks.get_reader(str(tmp_path / "link_to_notes.txt")) is None

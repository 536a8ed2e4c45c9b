"""Data dock: virtual-detector radii default from the measured beam (the ADF ring outside the
bright-field disc, also when the disc touches the detector's edge), and the calibration in
words (no '1 px/px')."""

from __future__ import annotations

import numpy as np
import pytest

from napari_4dstem_autoencoder.data.dataset import Calibration, Dataset4D
from napari_4dstem_autoencoder.data.virtual import estimate_beam
from napari_4dstem_autoencoder.gui import hooks
from napari_4dstem_autoencoder.gui.data_widget import (
    ADF_INNER_FACTOR,
    calibration_text,
    default_detector_radii,
)
from napari_4dstem_autoencoder.gui.keys import PLUGIN


def _beam_scan(centre, radius, detector=(64, 64), scan=(4, 4)) -> Dataset4D:
    qy, qx = np.mgrid[0:detector[0], 0:detector[1]]
    disc = ((qy - centre[0]) ** 2 + (qx - centre[1]) ** 2 <= radius ** 2) * 1000.0 + 1.0
    return Dataset4D(np.broadcast_to(disc, (*scan, *detector)).astype(np.float32).copy())


@pytest.mark.parametrize("centre, radius", [((32, 32), 6), ((20, 40), 4), ((31.5, 31.5), 12)])
def test_the_adf_ring_lies_outside_the_measured_bright_field_disc(centre, radius):
    ds = _beam_scan(centre, radius)
    beam = estimate_beam(ds)
    assert beam.radius == pytest.approx(radius, abs=1.0)
    bf, inner, outer = default_detector_radii(beam.centre, beam.radius, ds.detector_shape)
    assert bf == beam.radius
    assert inner >= ADF_INNER_FACTOR * bf and inner >= bf + 1
    nearest = min(beam.centre[0] + 0.5, beam.centre[1] + 0.5,
                  63.5 - beam.centre[0], 63.5 - beam.centre[1])
    assert inner < outer == pytest.approx(nearest)  # a whole ring up to the nearest edge


def test_a_beam_cut_by_the_detector_edge_gets_a_ring_towards_the_far_edge():
    # the disc's centre is nearer the left edge than its own radius (as on the Merlin file)
    ds = _beam_scan((60, 10), 20, detector=(128, 128))
    beam = estimate_beam(ds)
    bf, inner, outer = default_detector_radii(beam.centre, beam.radius, ds.detector_shape)
    assert inner > bf + 1
    assert outer == pytest.approx(127.5 - beam.centre[1])  # the far (right) edge
    # the ring collects pixels, all of them outside the disc
    qy, qx = np.mgrid[0:128, 0:128]
    r = np.hypot(qy - beam.centre[0], qx - beam.centre[1])
    ring = (r >= inner) & (r < outer)
    assert ring.sum() > 1000 and not (ring & (r <= bf)).any()


def test_the_merlin_files_default_ring_is_outside_its_bright_field_disc(
        make_napari_viewer, qtbot, open_dock, real_data_dir, monkeypatch):
    monkeypatch.setattr(hooks, "_recent", {})
    viewer = make_napari_viewer()
    viewer.open(str(real_data_dir / "quantumdetector/001_4x2_6bit.mib"), plugin=PLUGIN)
    data = open_dock(viewer, "Data")
    qtbot.waitUntil(lambda: getattr(data, "_beam_centre", None) is not None, timeout=30_000)
    bf, inner, outer = data.bf_radius.value(), data.adf_inner.value(), data.adf_outer.value()
    assert bf == pytest.approx(33.9, abs=0.2)  # the measured direct beam
    assert inner >= ADF_INNER_FACTOR * bf - 0.05 and outer > inner + 100
    assert "⚠" not in data.radii_label.text()
    data.adf_inner.setValue(bf - 5)  # a ring the user moves into the disc is pointed out
    assert "inside the bright-field disc" in data.radii_label.text()


def test_the_dataset_line_speaks_in_calibrated_units(make_napari_viewer, open_dock,
                                                     sim_three_region_path, monkeypatch):
    monkeypatch.setattr(hooks, "_recent", {})
    monkeypatch.setattr(hooks, "DATASET_CHOOSER", lambda path, candidates: "/data_counts")
    viewer = make_napari_viewer()
    viewer.open(str(sim_three_region_path), plugin=PLUGIN)
    data = open_dock(viewer, "Data")
    text = data.info_label.text()
    assert "scan 32×32 positions, step 2 Å" in text
    assert "detector 64×64 pixels, 1.284 mrad per pixel" in text
    assert "px/px" not in text
    assert "mrad" in data.radii_label.text()  # the radii in the detector's unit too


def test_an_uncalibrated_scan_says_so():
    ds = Dataset4D(np.zeros((2, 3, 8, 8), np.uint8), Calibration())
    assert calibration_text(ds) == ("scan 2×3 positions, scan step not calibrated (shown in "
                                    "pixels); detector 8×8 pixels; uint8")

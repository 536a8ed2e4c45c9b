"""The quality benchmark's labelled scans (benchmarks/quality/scans.py): shapes, counts at the
nominal dose, seeded draws, the precipitate's rarity, the rotation set's intensity-blind
classes and the core masks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "quality"))
import scans  # noqa: E402

SHAPES = {
    **{n: ((32, 32), (64, 64)) for n in scans.FAMILY if not n.endswith("-wide")},
    "rotation-2e3-wide": (scans.WIDE_SCAN, scans.WIDE_DETECTOR),
}
_built: dict[tuple[str, int], scans.Scan] = {}
#: the sets this interpreter can build (the pyxem set needs pyxem; its gate is tested below)
BUILDABLE = [n for n in scans.FAMILY if scans.unavailable(n) is None]


def build(name: str, seed: int = 0) -> scans.Scan:
    if (name, seed) not in _built:
        _built[(name, seed)] = scans.SETS[name](seed)
    return _built[(name, seed)]


def counts_of(scan: scans.Scan) -> np.ndarray:
    return np.asarray(scan.dataset.data)


def test_an_optional_set_is_built_only_where_its_package_imports(monkeypatch):
    assert "pyxem-si-grains-100" in scans.FAMILY
    monkeypatch.setattr(scans.importlib.util, "find_spec", lambda name: None)
    assert "pyxem is not installed" in scans.unavailable("pyxem-si-grains-100")
    assert scans.unavailable("sample-300") is None
    monkeypatch.setattr(scans.importlib.util, "find_spec", lambda name: object())
    assert scans.unavailable("pyxem-si-grains-100") is None
    assert "unknown set" in scans.unavailable("graphene-5")


@pytest.mark.parametrize("name", BUILDABLE)
def test_every_set_builds_at_its_shape_with_counts_at_the_dose(name):
    scan = build(name)
    (ry, rx), (qy, qx) = SHAPES[name]
    c = counts_of(scan)
    assert c.shape == (ry, rx, qy, qx) and scan.dataset.shape == c.shape
    assert np.issubdtype(c.dtype, np.integer) and c.min() >= 0
    assert scan.labels.shape == scan.core.shape == (ry, rx) and scan.core.dtype == bool
    assert set(np.unique(scan.labels)) == set(range(scan.n_classes))
    assert scan.name == name and scan.dataset.name == name
    per_pattern = c.reshape(ry * rx, -1).sum(axis=1)
    # within 10 % of dose x beam fraction on the detector, and (generated sets) of the dose
    assert abs(per_pattern.mean() / scan.expected_total.mean() - 1) < 0.10
    assert scan.expected_total.max() <= scan.dose * 1.001
    if not name.startswith("sim-"):
        assert abs(per_pattern.mean() / scan.dose - 1) < 0.10


@pytest.mark.parametrize("name", ["sim-300", "sample-300", "rotation-200", "precipitate-200"])
def test_seeds_draw_different_scans_and_a_seed_repeats(name):
    a, b = build(name, 0), build(name, 1)
    again = scans.SETS[name](0)  # built afresh
    assert not np.array_equal(counts_of(a), counts_of(b))
    np.testing.assert_array_equal(counts_of(a), counts_of(again))
    np.testing.assert_array_equal(a.labels, again.labels)
    if not name.startswith("sim-"):  # generated: the layout moves with the seed too
        assert not np.array_equal(a.labels, b.labels)


def test_doses_of_one_structure_share_the_layout_but_not_the_draw():
    hi, lo = build("rotation-2e3"), build("rotation-200")
    np.testing.assert_array_equal(hi.labels, lo.labels)
    assert 8 < counts_of(hi).sum() / counts_of(lo).sum() < 12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_precipitate_is_rare_but_present(seed):
    scan = build("precipitate-200", seed)
    share = np.mean(scan.labels == 2)
    assert 0 < share < 0.02
    assert scan.rarest == 2
    # the strained region is a real region, not a sliver
    assert 0.1 < np.mean(scan.labels == 1) < 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rotation_classes_are_not_separated_by_intensity_but_by_their_patterns(seed):
    scan = build("rotation-2e3", seed)
    c = counts_of(scan).reshape(scan.labels.size, -1).astype(np.float64)
    lab = scan.labels.ravel()
    total = c.sum(axis=1)
    means = np.array([total[lab == k].mean() for k in range(3)])
    assert means.max() / means.min() - 1 < 0.05
    # virtual BF (the direct-beam disc): class means closer than half a within-class spread
    qy, qx = scan.dataset.detector_shape
    yy, xx = np.mgrid[0:qy, 0:qx]
    disc = (np.hypot(yy - (qy - 1) / 2, xx - (qx - 1) / 2) <= 4).ravel()
    bf = c[:, disc].sum(axis=1)
    bf_means = np.array([bf[lab == k].mean() for k in range(3)])
    spread = min(bf[lab == k].std() for k in range(3))
    assert np.ptp(bf_means) < 0.5 * spread
    # ... while the mean patterns differ beyond what separates two halves of one class
    rng = np.random.default_rng(0)
    members = [np.flatnonzero(lab == k) for k in range(3)]
    halves = rng.permutation(members[0])
    h = len(halves) // 2
    noise = np.linalg.norm(c[halves[:h]].mean(0) - c[halves[h:2 * h]].mean(0))
    for a in range(3):
        for b in range(a + 1, 3):
            gap = np.linalg.norm(c[members[a]].mean(0) - c[members[b]].mean(0))
            assert gap > 2 * noise


@pytest.mark.parametrize("name", ["sample-300", "rotation-2e3", "rotation-2e3-wide",
                                  "precipitate-2e3"])
def test_core_excludes_every_position_near_another_class(name):
    scan = build(name)
    lab = scan.labels
    near_other = np.zeros(lab.shape, bool)
    for c in range(scan.n_classes):
        near_c = ndimage.binary_dilation(lab == c, structure=np.ones((5, 5), bool))
        near_other |= near_c & (lab != c)
    assert not np.any(scan.core & near_other)
    assert np.all(scan.core | near_other)  # and keeps every other position
    assert scan.core.sum() > lab.size // 3


def test_sim_core_is_the_boundary_distance_rule():
    scan = build("sim-1e3")
    import h5py

    with h5py.File(scans.SIM_PATH, "r") as f:
        np.testing.assert_array_equal(scan.core, f["boundary_distance"][()] >= 4.0)
        np.testing.assert_array_equal(scan.labels, f["labels"][()])


def test_chessboard_core_on_a_known_map():
    lab = np.zeros((9, 9), np.int64)
    lab[:, 5:] = 1
    core = scans.chessboard_core(lab)
    assert core[:, :3].all() and not core[:, 3:7].any() and core[:, 7:].all()

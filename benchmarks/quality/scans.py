"""The labelled scans the quality benchmark scores on: ``SETS[name](seed) -> Scan``.

A set is named ``<structure>-<dose>[-<variant>]``. The benchmark seed picks the scan: a new
Poisson draw and, for the generated structures, a new layout (where the grains, the strained
region and the precipitate lie, the crystal's orientation, the thickness and bending fields),
so seeds 0, 1, 2 are three different scans of the same kind.

- ``sim-*``: the shared abTEM simulation (``abtem_three_region.h5``: vacuum, a SrTiO3 [001]
  wedge and a [110] grain; 3 classes), its noise-free ``data`` resampled at the dose;
  core = ``boundary_distance >= 4`` Å.
- ``sample-*``: the package's own generator (``data.sample.make_sample_arrays``: vacuum, two
  grains 25° apart, a strain gradient, amorphous; 5 classes), layout seed = benchmark seed.
- ``rotation-*``: three grains of one hexagonal zone axis turned 0°, 2.5° and 5° in plane,
  wavy boundaries, thickness and bending varying smoothly across the scan independently of the
  grains: intensity and virtual BF do not separate the classes, only the spots' positions do.
- ``precipitate-*``: a square-lattice matrix, a region under a uniform 2.5 % lattice expansion
  (spots 2.4 % closer to the beam) and three small precipitates (< 2 % of the positions) that
  add weak half-order superlattice spots; 3 classes.

Core mask of the generated sets: positions with no other class within 2 positions
(chessboard distance). It drops nearly every precipitate position (they are 5-position blobs),
so the all-positions ARI and ``rare_recall`` are what see the precipitate.

Every generated pattern is a sum of a soft direct-beam disc, Gaussian spots and a diffuse
background (partly off the detector, more where the specimen is thicker), as fractions of the
beam, times the dose, Poisson-drawn: all positions at once, spots as one batched product of
separable profiles (as ``data.sample`` does).
"""

from __future__ import annotations

import functools
import importlib.util
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_4dstem_autoencoder.data.dataset import Dataset4D

#: the shared simulation; ``run.py --sim-path`` replaces it (in every worker process)
SIM_PATH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sim" / \
    "abtem_three_region.h5"
#: scan and detector of the generated sets (the ``-wide`` variant: 24 x 48 and 96 x 96)
SCAN, DETECTOR = (32, 32), (64, 64)
WIDE_SCAN, WIDE_DETECTOR = (24, 48), (96, 96)
#: in-plane rotations of the three grains of ``rotation`` (degrees)
ROTATIONS = (0.0, 2.5, 5.0)
#: real-space lattice expansion of the strained region of ``precipitate``
STRAIN = 0.025
#: share of the precipitate's spot intensity in its half-order superlattice spots
SUPERLATTICE = 0.25


@dataclass
class Scan:
    """A labelled scan: counts, ground truth and what to score it on."""

    name: str
    dataset: Dataset4D  # (Ry, Rx, Qy, Qx) counts, dask-backed
    labels: np.ndarray  # (Ry, Rx) int64, 0 .. n_classes - 1
    core: np.ndarray  # (Ry, Rx) bool: positions away from class boundaries
    n_classes: int
    dose: float  # electrons per pattern
    #: noise-free electrons per pattern on the detector (Ry, Rx): dose x beam fraction
    expected_total: np.ndarray
    class_names: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def rarest(self) -> int:
        """The class with the fewest positions."""
        return int(np.argmin(np.bincount(self.labels.ravel(), minlength=self.n_classes)))


def chessboard_core(labels: np.ndarray, reach: int = 2) -> np.ndarray:
    """Positions with no other class within ``reach`` positions (chessboard distance)."""
    core = np.ones(labels.shape, dtype=bool)
    box = np.ones((2 * reach + 1, 2 * reach + 1), bool)
    for c in np.unique(labels):
        near_c = ndimage.binary_dilation(labels == c, structure=box)
        core &= ~(near_c & (labels != c))
    return core


def _rng(seed: int, *parts: str) -> np.random.Generator:
    """A generator for (seed, what): independent streams, stable across Python runs."""
    return np.random.default_rng([int(seed), *(zlib.crc32(p.encode()) for p in parts)])


def _poisson(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    counts = rng.poisson(expected)
    if counts.max() > np.iinfo(np.uint16).max:
        raise ValueError("the dose saturates 16-bit counts")
    return counts.astype(np.uint16)


def _dataset(name: str, counts: np.ndarray, labels: np.ndarray, **meta: Any) -> Dataset4D:
    import dask.array as da

    return Dataset4D(da.from_array(counts, chunks=(8, -1, -1, -1)), labels=labels,
                     metadata={"name": name, **meta})


# -- the shared abTEM simulation -------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _sim_arrays(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        return (f["data"][()].astype(np.float32), f["labels"][()].astype(np.int64),
                f["boundary_distance"][()] >= 4.0)


def sim_scan(dose: float, seed: int, name: str) -> Scan:
    """The abTEM simulation's noise-free ``data`` (beam fraction per pixel) x ``dose``,
    Poisson-drawn with the seed's generator."""
    path = Path(SIM_PATH)
    if not path.is_file():
        raise FileNotFoundError(f"simulated data not found: {path} (pass --sim-path)")
    data, labels, core = _sim_arrays(str(path))
    expected = data * np.float32(dose)
    counts = _poisson(expected, _rng(seed, name))
    ds = _dataset(name, counts, labels, dose=dose, seed=seed, source=path.name)
    return Scan(name, ds, labels, core, 3, dose, expected.sum(axis=(2, 3)),
                ("vacuum", "SrTiO3 [001] wedge", "SrTiO3 [110]"), {"source": str(path)})


# -- the package's sample generator ----------------------------------------------------------

def sample_scan(dose: float, seed: int, name: str) -> Scan:
    from napari_4dstem_autoencoder.data.sample import LABEL_NAMES, make_sample_arrays

    arr = make_sample_arrays(scan_shape=SCAN, detector_shape=DETECTOR, dose=dose, seed=seed)
    labels = arr["labels"].astype(np.int64)
    ds = _dataset(name, arr["counts"], labels, dose=dose, seed=seed)
    return Scan(name, ds, labels, chessboard_core(labels), len(LABEL_NAMES), dose,
                arr["expected"].sum(axis=(2, 3)), tuple(LABEL_NAMES.values()))


# -- the spot renderer of the generated structures -------------------------------------------

@dataclass(frozen=True)
class Optics:
    """Detector geometry, designed on 64 px and scaled with the detector's side."""

    detector: tuple[int, int]

    @property
    def scale(self) -> float:
        return min(self.detector) / 64.0

    @property
    def centre(self) -> tuple[float, float]:
        return (self.detector[0] - 1) / 2, (self.detector[1] - 1) / 2

    @property
    def spacing(self) -> float:  # first-order spot distance from the beam (px)
        return 9.5 * self.scale

    @property
    def reach(self) -> float:  # spots further out than this are not drawn
        return min(self.centre) - 3.0 * self.scale


def lattice(kind: str, reach: float, spacing: float, half_order: bool = False) -> np.ndarray:
    """Reciprocal-lattice points (k, 2) as (gy, gx) px within ``reach``, origin excluded.

    ``kind``: ``"square"`` or ``"hex"``. ``half_order``: only the half-order points
    (h/2, k/2) with h or k odd, the superlattice reflections of a doubled cell.
    """
    step = 0.5 if half_order else 1.0
    n = int(reach // (spacing * step)) + 2
    h, k = np.mgrid[-n:n + 1, -n:n + 1].astype(np.float64) * step
    h, k = h.ravel(), k.ravel()
    if half_order:
        keep = (np.abs(h % 1) > 0.25) | (np.abs(k % 1) > 0.25)
        h, k = h[keep], k[keep]
    if kind == "square":
        gy, gx = k, h
    elif kind == "hex":
        gy, gx = k * np.sqrt(3) / 2, h + k / 2
    else:
        raise ValueError(f"unknown lattice {kind!r}")
    g = np.stack([gy, gx], axis=1) * spacing
    r = np.hypot(g[:, 0], g[:, 1])
    return g[(r > 1e-9) & (r <= reach)]


def _spots(g: np.ndarray, weight: np.ndarray, optics: Optics, sigma: float) -> np.ndarray:
    """(n, Qy, Qx) float32 Gaussian spots at ``g`` (n, k, 2) px from the centre, each of total
    ``weight`` (n, k): one batched product of separable profiles."""
    qy, qx = optics.detector
    cy, cx = optics.centre
    norm = 1.0 / (2 * np.pi * sigma ** 2)
    py = np.exp(-0.5 * ((np.arange(qy)[None, None] - (cy + g[..., 0])[..., None]) / sigma) ** 2)
    px = np.exp(-0.5 * ((np.arange(qx)[None, None] - (cx + g[..., 1])[..., None]) / sigma) ** 2)
    py = (py * (weight * norm)[..., None]).astype(np.float32)
    return np.matmul(py.transpose(0, 2, 1), px.astype(np.float32))


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, waves: int = 3,
                  spread: float = np.pi / 2) -> np.ndarray:
    """A smooth random field in [0, 1] over the scan: a few long plane waves, each running
    within ``spread`` of the scan's columns (x)."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    v, u = (y + 0.5) / max(shape), (x + 0.5) / max(shape)
    out = np.zeros(shape)
    for _ in range(waves):
        angle = rng.uniform(-spread, spread)
        freq, phase = rng.uniform(0.4, 1.2), rng.uniform(0, 2 * np.pi)
        out += np.cos(2 * np.pi * freq * (u * np.cos(angle) + v * np.sin(angle)) + phase)
    return (out - out.min()) / max(np.ptp(out), 1e-12)


def render(optics: Optics, thickness: np.ndarray, g: np.ndarray, order: np.ndarray,
           bend: np.ndarray, extra_g: np.ndarray | None = None,
           extra_share: np.ndarray | None = None, extra_order: np.ndarray | None = None
           ) -> np.ndarray:
    """Noise-free patterns (n, Qy, Qx) float32, fractions of the beam (off-detector diffuse
    scattering missing), for n positions.

    ``thickness`` (n,) in [0, 1]; ``g`` (n, k, 2) spot positions (px from the beam);
    ``order`` (k,) each spot's |g| in units of the first order (its thickness oscillation);
    ``bend`` (n, 2) a small tilt: spots on one side brighten, on the other dim (a bending
    contour); ``extra_g`` (n, m, 2) weak spots taking ``extra_share`` (n,) of the spot
    intensity (superlattice reflections), shared by ``extra_order`` (m,) as the main spots'
    orders are (falling off with |g|).
    """
    qy, qx = optics.detector
    cy, cx = optics.centre
    s = optics.scale
    yy, xx = np.mgrid[0:qy, 0:qx]
    r = np.hypot(yy - cy, xx - cx)
    beam = 1.0 / (1.0 + np.exp((r - 3.5 * s) / (0.6 * s)))
    beam /= beam.sum()
    length = 12.0 * s  # exp(-r/L) over the whole plane: the detector sees ~80 % of it
    diffuse = np.exp(-r / length) / (2 * np.pi * length ** 2)

    t = thickness[:, None]
    # spot strengths: fall off with |g|; each order oscillates with thickness on its own
    # period (a dynamical-diffraction caricature), so spot ratios vary across a grain
    strength = np.exp(-0.3 * order[None] ** 2) * (
        0.35 + np.sin(np.pi * t * (1.1 + 0.45 * order[None])) ** 2)
    unit = g / np.maximum(np.hypot(g[..., 0], g[..., 1]), 1e-9)[..., None]
    strength = strength * np.clip(1.0 + np.einsum("nkc,nc->nk", unit, bend), 0.05, None)
    strength /= strength.sum(axis=1, keepdims=True)
    scattered = 1.0 - np.exp(-1.3 * thickness)  # leaves the direct beam: 0.23 .. 0.73
    to_spots = 0.6 * scattered
    sigma = 0.9 * s
    if extra_g is None:
        expected = _spots(g, strength * to_spots[:, None], optics, sigma)
    else:
        share = extra_share[:, None]
        extra = np.exp(-0.3 * extra_order ** 2)
        extra = np.broadcast_to(extra / extra.sum(), (len(t), extra.size))
        weights = np.concatenate([strength * (1 - share), extra * share],
                                 axis=1) * to_spots[:, None]
        expected = _spots(np.concatenate([g, extra_g], axis=1), weights, optics, sigma)
    f32 = np.float32
    expected += (1.0 - scattered).astype(f32)[:, None, None] * beam.astype(f32)[None]
    expected += (scattered - to_spots).astype(f32)[:, None, None] * diffuse.astype(f32)[None]
    return expected


def _turn(g: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Base lattice ``g`` (k, 2) turned by ``angle`` (n,) radians: (n, k, 2)."""
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return np.stack([g[None, :, 0] * c + g[None, :, 1] * s,
                     -g[None, :, 0] * s + g[None, :, 1] * c], axis=-1)


def _thickness_and_bend(shape: tuple[int, int], rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Thickness in [0.2, 1]: a wedge along the scan's columns plus smooth bumps that vary
    mostly along the columns too (within 20°), so every band of rows spans the same thickness
    range, whatever class it is; bending (n, 2): a smooth tilt of magnitude <= 0.5."""
    ny, nx = shape
    u = (np.arange(nx) + 0.5) / nx
    wedge = np.broadcast_to(u if rng.random() < 0.5 else u[::-1], shape)
    bumps = _smooth_field(shape, rng, spread=np.deg2rad(20))
    thickness = 0.2 + 0.8 * np.clip(0.65 * wedge + 0.35 * bumps, 0, 1)
    bend = 0.5 * np.stack([2 * _smooth_field(shape, rng) - 1, 2 * _smooth_field(shape, rng) - 1],
                          axis=-1)
    return thickness, bend.reshape(-1, 2)


def _wavy_bands(shape: tuple[int, int], n_bands: int, rng: np.random.Generator) -> np.ndarray:
    """Labels 0 .. n_bands - 1 in bands across the rows, boundaries wavy and irregular (two
    sinusoids each, random phases and amplitudes)."""
    ny, nx = shape
    v = (np.arange(ny)[:, None] + 0.5) / ny
    u = (np.arange(nx)[None, :] + 0.5) / nx
    labels = np.zeros(shape, dtype=np.int64)
    for b in range(1, n_bands):
        y0 = b / n_bands + rng.uniform(-0.04, 0.04)
        wave = (rng.uniform(0.03, 0.07) * np.sin(2 * np.pi * rng.uniform(0.7, 1.5) * u
                                                  + rng.uniform(0, 2 * np.pi))
                + rng.uniform(0.01, 0.03) * np.sin(2 * np.pi * rng.uniform(2.5, 4.0) * u
                                                    + rng.uniform(0, 2 * np.pi)))
        labels[v >= y0 + wave] = b
    return labels


def _drawn(expected: np.ndarray, dose: float, seed: int, stream: str, scan: tuple[int, int],
           detector: tuple[int, int], labels: np.ndarray, thickness: np.ndarray
           ) -> dict[str, np.ndarray]:
    """A generated structure's arrays: the (n, qy, qx) beam fractions ``expected`` scaled to
    ``dose`` (in place) and Poisson-drawn from the ``stream``'s generator, both as 4-D scans."""
    expected *= np.float32(dose)
    counts = _poisson(expected, _rng(seed, stream, f"{dose:g}"))
    shape4 = (*scan, *detector)
    return {"counts": counts.reshape(shape4), "expected": expected.reshape(shape4),
            "labels": labels, "thickness": thickness.astype(np.float32)}


def _generated_scan(name: str, arr: dict[str, np.ndarray], dose: float, seed: int,
                    class_names: tuple[str, ...]) -> Scan:
    """The :class:`Scan` of a generated structure's arrays (core: chessboard distance)."""
    labels = arr["labels"]
    ds = _dataset(name, arr["counts"], labels, dose=dose, seed=seed)
    return Scan(name, ds, labels, chessboard_core(labels), len(class_names), dose,
                arr["expected"].sum(axis=(2, 3)), class_names, {"thickness": arr["thickness"]})


# -- rotation: three grains a few degrees apart ----------------------------------------------

def rotation_arrays(seed: int, dose: float, scan: tuple[int, int] = SCAN,
                    detector: tuple[int, int] = DETECTOR, stream: str = "rotation"
                    ) -> dict[str, np.ndarray]:
    """``counts``, ``expected``, ``labels``, ``thickness`` of the ``rotation`` structure."""
    layout = _rng(seed, "rotation-layout", f"{scan}")
    optics = Optics(detector)
    bands = _wavy_bands(scan, 3, layout)
    angles = layout.permutation(np.deg2rad(ROTATIONS))  # which band is which grain
    base = layout.uniform(0, np.pi / 3)
    # label = grain by rotation (0: 0°, 1: 2.5°, 2: 5°)
    rank = np.argsort(np.argsort(angles))
    labels = rank[bands]
    thickness, bend = _thickness_and_bend(scan, layout)
    g0 = lattice("hex", optics.reach, optics.spacing)
    order = np.hypot(g0[:, 0], g0[:, 1]) / optics.spacing
    angle = base + angles[bands].ravel()
    expected = render(optics, thickness.ravel(), _turn(g0, angle), order, bend)
    return _drawn(expected, dose, seed, stream, scan, detector, labels, thickness)


def rotation_scan(dose: float, seed: int, name: str, scan: tuple[int, int] = SCAN,
                  detector: tuple[int, int] = DETECTOR) -> Scan:
    return _generated_scan(name, rotation_arrays(seed, dose, scan, detector, stream=name),
                           dose, seed, tuple(f"grain {a:g}°" for a in ROTATIONS))


# -- precipitate: matrix, a strained region, a few small precipitates ------------------------

def _precipitate_layout(scan: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """0 matrix, 1 strained (a wavy-edged blob, ~20-30 % of the scan), 2 precipitates (three
    plus-shaped blobs of 5 positions in the matrix, > 2 positions from everything else)."""
    ny, nx = scan
    y, x = np.mgrid[0:ny, 0:nx]
    cy, cx = rng.uniform(0.3, 0.7) * ny, rng.uniform(0.3, 0.7) * nx
    theta = np.arctan2(y - cy, x - cx)
    radius = 0.3 * min(ny, nx) * (1 + 0.15 * np.sin(3 * theta + rng.uniform(0, 2 * np.pi))
                                  + 0.08 * np.sin(5 * theta + rng.uniform(0, 2 * np.pi)))
    ry, rx = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
    labels = np.where(np.hypot((y - cy) / ry, (x - cx) / rx) < radius, 1, 0).astype(np.int64)
    plus = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
    n_blobs = max(1, int(round(0.015 * ny * nx / 5)))
    placed = 0
    for _ in range(2000):
        if placed == n_blobs:
            break
        py, px = rng.integers(2, ny - 2), rng.integers(2, nx - 2)
        near = labels[max(0, py - 4):py + 5, max(0, px - 4):px + 5]
        if np.all(near == 0):  # clear of the strained region and the other blobs
            labels[py - 1:py + 2, px - 1:px + 2][plus] = 2
            placed += 1
    if placed == 0:
        raise RuntimeError("no room for a precipitate")
    return labels


def precipitate_arrays(seed: int, dose: float, scan: tuple[int, int] = SCAN,
                       detector: tuple[int, int] = DETECTOR, stream: str = "precipitate"
                       ) -> dict[str, np.ndarray]:
    """``counts``, ``expected``, ``labels``, ``thickness`` of the ``precipitate`` structure."""
    layout = _rng(seed, "precipitate-layout", f"{scan}")
    optics = Optics(detector)
    labels = _precipitate_layout(scan, layout)
    base = layout.uniform(0, np.pi / 2)
    thickness, bend = _thickness_and_bend(scan, layout)
    g0 = lattice("square", optics.reach, optics.spacing)
    order = np.hypot(g0[:, 0], g0[:, 1]) / optics.spacing
    lab = labels.ravel()
    n = lab.size
    angle = np.full(n, base)
    g = _turn(g0, angle) / np.where(lab == 1, 1.0 + STRAIN, 1.0)[:, None, None]
    half = lattice("square", optics.reach, optics.spacing, half_order=True)
    extra = _turn(half, angle)
    share = np.where(lab == 2, SUPERLATTICE, 0.0)
    expected = render(optics, thickness.ravel(), g, order, bend, extra, share,
                      np.hypot(half[:, 0], half[:, 1]) / optics.spacing)
    return _drawn(expected, dose, seed, stream, scan, detector, labels, thickness)


def precipitate_scan(dose: float, seed: int, name: str) -> Scan:
    return _generated_scan(name, precipitate_arrays(seed, dose, stream=name), dose, seed,
                           ("matrix", f"strained +{STRAIN:.1%}", "precipitate"))


# -- optional: a peer package's simulation (pyxem) --------------------------------------------

def pyxem_scan(dose: float, seed: int, name: str) -> Scan:
    """pyxem's ``data.si_grains_simple``: silicon grains on four low-index zone axes
    ([001], [011], [111], [112]), kinematically simulated by diffsims, offline, one noise-free
    pattern per grain (``seed`` places the grains; two grain seeds can land together, leaving
    fewer classes). Labels are the distinct patterns; each pattern is scaled to a sum of 1 and
    Poisson-drawn at ``dose``. Needs ``import pyxem`` in this interpreter."""
    import pyxem.data

    signal = pyxem.data.si_grains_simple(seed=int(seed), size=SCAN[0], recip_pixels=DETECTOR[0])
    data = np.asarray(signal.data, dtype=np.float64).reshape(*SCAN, -1)
    empty = data.sum(axis=-1) <= 0  # positions no grain reached: the nearest grain's pattern
    if empty.any():
        _, (iy, ix) = ndimage.distance_transform_edt(empty, return_indices=True)
        data = data[iy, ix]
    flat = data.reshape(-1, data.shape[-1])
    _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    labels = np.argsort(np.argsort(first))[inverse.ravel()].reshape(SCAN).astype(np.int64)
    expected = (flat / flat.sum(axis=1, keepdims=True) * dose).astype(np.float32)
    counts = _poisson(expected, _rng(seed, name)).reshape(*SCAN, *DETECTOR)
    ds = _dataset(name, counts, labels, dose=dose, seed=seed, source="pyxem.data.si_grains_simple")
    n_classes = int(labels.max()) + 1
    return Scan(name, ds, labels, chessboard_core(labels), n_classes, dose,
                expected.sum(axis=1).reshape(SCAN), tuple(f"grain {i}" for i in range(n_classes)),
                {"source": f"pyxem {getattr(pyxem, '__version__', '?')}"})


# -- the registry ----------------------------------------------------------------------------

def _entry(make: Callable[..., Scan], dose: float, name: str, **kw: Any
           ) -> Callable[[int], Scan]:
    def build(seed: int) -> Scan:
        return make(dose, seed, name, **kw)
    build.__name__ = f"scan_{name.replace('-', '_')}"
    build.__doc__ = f"the {name} scan for a benchmark seed"
    return build


#: every labelled set by name: ``SETS[name](seed) -> Scan``
SETS: dict[str, Callable[[int], Scan]] = {
    **{f"sim-{d}": _entry(sim_scan, float(d), f"sim-{d}") for d in ("2e4", "1e3", "300", "100")},
    **{f"sample-{d}": _entry(sample_scan, float(d), f"sample-{d}")
       for d in ("2e3", "300", "100")},
    **{f"rotation-{d}": _entry(rotation_scan, float(d), f"rotation-{d}") for d in ("2e3", "200")},
    "rotation-2e3-wide": _entry(rotation_scan, 2e3, "rotation-2e3-wide", scan=WIDE_SCAN,
                                detector=WIDE_DETECTOR),
    **{f"precipitate-{d}": _entry(precipitate_scan, float(d), f"precipitate-{d}")
       for d in ("2e3", "200")},
    "pyxem-si-grains-100": _entry(pyxem_scan, 100.0, "pyxem-si-grains-100"),
}
#: the default family: every set above
FAMILY: list[str] = list(SETS)


def unavailable(name: str) -> str | None:
    """Why set ``name`` cannot be built here (None: it can)."""
    if name not in SETS:
        return f"unknown set {name!r}"
    if name.startswith("sim-") and not Path(SIM_PATH).is_file():
        return f"simulated data not found: {SIM_PATH} (pass --sim-path)"
    if name.startswith("pyxem-") and importlib.util.find_spec("pyxem") is None:
        return "pyxem is not installed in this interpreter"
    return None


@functools.lru_cache(maxsize=4)
def load(name: str, seed: int) -> Scan:
    """``SETS[name](seed)``, kept for the next case of the same scan in this process."""
    return SETS[name](seed)

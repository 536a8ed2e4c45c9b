"""Synthetic 4D-STEM sample with per-position ground truth (File > Open Sample, tests, demos).

The specimen (scan fractions are of the default 64x64 grid):

- 0 vacuum: a wavy band on the left; only the direct-beam disc.
- 1 grain A: spot lattice (square, spacing ``G``) rotated by 10 degrees.
- 2 grain B: the same lattice rotated by 35 degrees, across a wavy grain boundary.
- 3 strained: grain A's orientation with the lattice expanded by 3 % rising to 9 % across the
  region (a strain gradient: spots move outwards continuously).
- 4 amorphous: no spots; a diffuse ring.

Thickness rises from the vacuum edge (a wedge) with a smooth bump on top; thicker material
scatters more out of the direct beam into spots, ring and diffuse background. Patterns are
Poisson draws of ``dose`` electrons each. Spots are Gaussians, rendered for all positions at
once as one batched matrix product of separable profiles.
"""

from __future__ import annotations

import numpy as np

from .dataset import Calibration, Dataset4D

LABEL_NAMES: dict[int, str] = {
    0: "vacuum", 1: "grain A", 2: "grain B", 3: "strained (gradient)", 4: "amorphous",
}


def _layout(scan_shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, thickness in [0, 1], strain fraction in [0, 1] across the strained region)."""
    ny, nx = scan_shape
    y, x = np.mgrid[0:ny, 0:nx]
    v, u = (y + 0.5) / ny, (x + 0.5) / nx
    phase = rng.uniform(0, 2 * np.pi)
    vacuum_edge = 0.16 + 0.04 * np.sin(2 * np.pi * v + phase)
    boundary = 0.58 + 0.06 * np.sin(3 * np.pi * v + phase / 2)
    labels = np.full(scan_shape, 1, dtype=np.uint8)
    labels[u >= boundary] = 2
    lower = v >= 0.62
    labels[lower & (u < 0.68)] = 3
    labels[lower & (u >= 0.68)] = 4
    labels[u < vacuum_edge] = 0
    wedge = np.clip((u - vacuum_edge) / 0.35, 0, 1)
    bump = 0.25 * np.exp(-(((u - 0.45) / 0.18) ** 2 + ((v - 0.3) / 0.2) ** 2))
    thickness = np.where(labels == 0, 0.0, 0.15 + 0.6 * wedge + bump)
    strain = np.where(labels == 3, np.clip((u - vacuum_edge) / (0.68 - vacuum_edge), 0, 1), 0.0)
    return labels, thickness, strain


def _spot_lattice(radius_max: float, spacing: float) -> np.ndarray:
    """Reciprocal-lattice points (k, 2) of a square lattice within radius_max, without the origin."""
    n = int(radius_max // spacing) + 1
    h, k = np.mgrid[-n:n + 1, -n:n + 1]
    g = np.stack([h.ravel(), k.ravel()], axis=1).astype(np.float64) * spacing
    r = np.hypot(g[:, 0], g[:, 1])
    return g[(r > 0) & (r <= radius_max)]


def make_sample_arrays(scan_shape: tuple[int, int] = (64, 64), detector_shape: tuple[int, int] = (64, 64),
                       dose: float = 2000.0, seed: int = 0) -> dict[str, np.ndarray]:
    """The sample as plain arrays.

    Returns ``counts`` (Ry, Rx, Qy, Qx) uint16 Poisson counts, ``expected`` (same, float32,
    noise-free electrons per pixel), ``labels`` (Ry, Rx) uint8, ``thickness`` and ``strain``
    (Ry, Rx) float32.
    """
    if min(scan_shape) < 4 or min(detector_shape) < 16:
        raise ValueError("the sample needs a scan of at least 4x4 and a detector of at least 16x16")
    if not dose > 0:
        raise ValueError(f"dose must be positive, got {dose}")
    rng = np.random.default_rng(seed)
    labels, thickness, strain = _layout(scan_shape, rng)
    ny, nx = scan_shape
    qy, qx = detector_shape
    scale = min(qy, qx) / 64.0  # geometry is designed on 64 px and scales with the detector
    cy, cx = (qy - 1) / 2, (qx - 1) / 2
    yy, xx = np.mgrid[0:qy, 0:qx]
    r = np.hypot(yy - cy, xx - cx)

    # direct beam: a soft-edged disc (convergent probe); diffuse background; amorphous ring
    beam = 1.0 / (1.0 + np.exp((r - 3.5 * scale) / (0.6 * scale)))
    beam /= beam.sum()
    diffuse = np.exp(-r / (12.0 * scale))
    diffuse /= diffuse.sum()
    ring = np.exp(-0.5 * ((r - 17.0 * scale) / (2.5 * scale)) ** 2)
    ring /= ring.sum()

    # spot positions for every scan position: (n, k, 2), padded with weight-0 spots
    spacing = 9.5 * scale
    base = _spot_lattice(min(cy, cx) - 3 * scale, spacing)
    lab = labels.ravel()
    angle = np.where(lab == 2, np.deg2rad(35.0), np.deg2rad(10.0))
    expand = 1.0 + np.where(lab == 3, 0.03 + 0.06 * strain.ravel(), 0.0)
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    gy = (base[None, :, 0] * cos - base[None, :, 1] * sin) * expand[:, None]
    gx = (base[None, :, 0] * sin + base[None, :, 1] * cos) * expand[:, None]
    # kinematical-ish spot strengths: fall off with |g|, slight per-grain variation
    g2 = (gy ** 2 + gx ** 2) / (spacing ** 2)
    strength = np.exp(-0.35 * g2)
    crystalline = np.isin(lab, (1, 2, 3))
    strength *= crystalline[:, None]
    strength /= np.maximum(strength.sum(axis=1, keepdims=True), 1e-12)

    sigma = 0.9 * scale
    prof_y = np.exp(-0.5 * ((np.arange(qy)[None, None, :] - (cy + gy)[..., None]) / sigma) ** 2).astype(np.float32)
    prof_x = np.exp(-0.5 * ((np.arange(qx)[None, None, :] - (cx + gx)[..., None]) / sigma) ** 2).astype(np.float32)
    norm = 1.0 / (2 * np.pi * sigma ** 2)
    prof_y *= (strength * norm).astype(np.float32)[..., None]
    spots = np.matmul(prof_y.transpose(0, 2, 1), prof_x)  # (n, qy, qx), each sums to ~1

    # how the dose divides between beam, spots, ring and diffuse background
    t = thickness.ravel()
    scattered = 1.0 - np.exp(-1.6 * t)                      # leaves the direct beam
    to_spots = np.where(crystalline, 0.55, 0.0) * scattered
    to_ring = np.where(lab == 4, 0.6, 0.0) * scattered
    to_diffuse = scattered - to_spots - to_ring
    # accumulate in place in float32: the (n, qy, qx) arrays are the bulk of the work
    f32 = np.float32
    expected = spots
    expected *= to_spots.astype(f32)[:, None, None]
    for weight, image in ((1.0 - scattered, beam), (to_ring, ring), (to_diffuse, diffuse)):
        used = weight > 0
        expected[used] += weight[used].astype(f32)[:, None, None] * image.astype(f32)[None]
    expected *= f32(dose)
    counts = rng.poisson(expected)
    if counts.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"dose {dose} saturates 16-bit counts; use a lower dose")
    shape4 = (ny, nx, qy, qx)
    return {
        "counts": counts.astype(np.uint16).reshape(shape4),
        "expected": expected.reshape(shape4),
        "labels": labels,
        "thickness": thickness.astype(np.float32),
        "strain": strain.astype(np.float32),
    }


def make_sample_dataset(scan_shape: tuple[int, int] = (64, 64), detector_shape: tuple[int, int] = (64, 64),
                        dose: float = 2000.0, seed: int = 0) -> Dataset4D:
    """The sample as a :class:`Dataset4D` with ``labels`` and ``metadata["label_names"]``.

    Calibration: 0.5 nm scan step, 0.5 mrad per detector pixel (nominal values, for display).
    """
    arrays = make_sample_arrays(scan_shape, detector_shape, dose, seed)
    import dask.array as da

    data = da.from_array(arrays["counts"], chunks=(16, scan_shape[1], *detector_shape))
    meta = {
        "format": "sample", "name": "4D-STEM sample", "title": "4D-STEM sample",
        "label_names": dict(LABEL_NAMES), "dose": float(dose), "seed": int(seed),
        "thickness": arrays["thickness"], "strain": arrays["strain"],
    }
    return Dataset4D(data=data, calibration=Calibration((0.5, 0.5), "nm", (0.5, 0.5), "mrad"),
                     metadata=meta, labels=arrays["labels"])

"""The real-space canvas: probe marker, click and arrow-key selection, and layer upserts.

Installed once per viewer (:func:`install`), whichever dock opens first. A click (press and
release without dragging) on any layer selects the probe position under the cursor; with a
real-space 2-D layer or the probe layer active, the arrow keys step the probe. The 3-D
embedding stack keeps napari's own arrow keys (they step its channel slider).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .keys import REALSPACE_KEY
from .state import ScanGeometry, StemState, dataset_layers, get_state, layer_dataset, unwrap_viewer

PROBE_LAYER = "probe position"
EMBEDDINGS_LAYER = "AE embeddings"
ERROR_LAYER = "AE reconstruction error"
_INSTALLED_ATTR = "_stem4d_canvas_installed"
_ARROWS = {"Up": (-1, 0), "Down": (1, 0), "Left": (0, -1), "Right": (0, 1)}


def _with_units(state: StemState, kwargs: dict[str, Any], ndim: int) -> dict[str, Any]:
    """Give a new real-space layer the scan's units, exactly as the reader's navigator has them
    (``hooks.scan_units``: the scan's length unit, or ``pixel`` for an uncalibrated scan), so
    every layer of a dataset agrees and napari never finds inconsistent units among them.
    Leading axes (the embedding stack's latent channel) are in ``pixel``."""
    from .hooks import scan_units

    ds = state.dataset
    if ds is not None and "units" not in kwargs:
        kwargs["units"] = ("pixel",) * (ndim - 2) + scan_units(ds.calibration)
    return kwargs


def _pint_names(units: Any) -> tuple[str, ...]:
    """Unit names as napari's layers report them ('Å' -> 'angstrom')."""
    try:
        from napari.utils.transforms._units import get_units_from_name

        return tuple(str(u) for u in get_units_from_name(tuple(units)))
    except Exception:
        return tuple(str(u) for u in units)


def _set_units(layer: Any, units: Any) -> None:
    """Change a kept layer's units only when they differ: every change makes napari check
    the units of all layers again (and warn again when they clash)."""
    if units is not None and tuple(str(u) for u in layer.units) != _pint_names(units):
        layer.units = units


def upsert_image(viewer: Any, name: str, data: np.ndarray, **kwargs: Any) -> Any:
    """Add an image layer, or replace the data (and given properties) of the one named ``name``."""
    viewer = unwrap_viewer(viewer)
    metadata = dict(kwargs.pop("metadata", {}))
    metadata.setdefault(REALSPACE_KEY, True)
    ndim = np.ndim(data) - (1 if kwargs.get("rgb") else 0)
    kwargs = _with_units(get_state(viewer), kwargs, ndim)
    if name in viewer.layers:
        layer = viewer.layers[name]
        if layer.data.shape == np.shape(data) and getattr(layer, "rgb", False) == kwargs.get("rgb", False):
            layer.data = data
            for key in ("scale", "translate"):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            _set_units(layer, kwargs.get("units"))
            if "contrast_limits" in kwargs:
                layer.contrast_limits = kwargs["contrast_limits"]
            layer.metadata.update(metadata)
            return layer
        viewer.layers.remove(layer)
    layer = viewer.add_image(data, name=name, metadata=metadata, **kwargs)
    bind_arrow_keys(layer, get_state(viewer))
    return layer


def upsert_labels(viewer: Any, name: str, data: np.ndarray, **kwargs: Any) -> Any:
    viewer = unwrap_viewer(viewer)
    metadata = dict(kwargs.pop("metadata", {}))
    metadata.setdefault(REALSPACE_KEY, True)
    kwargs = _with_units(get_state(viewer), kwargs, np.ndim(data))
    if name in viewer.layers and viewer.layers[name].data.shape == np.shape(data):
        layer = viewer.layers[name]
        layer.data = data
        for key in ("scale", "translate"):
            if key in kwargs:
                setattr(layer, key, kwargs[key])
        _set_units(layer, kwargs.get("units"))
        return layer
    if name in viewer.layers:
        viewer.layers.remove(viewer.layers[name])
    layer = viewer.add_labels(data, name=name, metadata=metadata, **kwargs)
    bind_arrow_keys(layer, get_state(viewer))
    return layer


def bind_arrow_keys(layer: Any, state: StemState) -> None:
    """Arrow keys step the probe while ``layer`` is active (2-D real-space layers only)."""
    if layer.ndim != 2:  # e.g. the (32, Ry, Rx) stack: arrows keep stepping its channels
        return
    for key, (dy, dx) in _ARROWS.items():
        def step(_layer: Any, dy: int = dy, dx: int = dx) -> None:
            state.move_position(dy, dx)

        layer.bind_key(key, step, overwrite=True)


def _on_click(state: StemState):
    def callback(viewer: Any, event: Any):
        if event.button != 1 or "Shift" in event.modifiers or "Control" in event.modifiers:
            return
        start = np.asarray(event.position, dtype=float)
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = dragged or np.abs(np.asarray(event.position) - start).max() > 1e-9
            yield
        if dragged:
            return  # a pan or a draw, not a click
        # only a click on the real-space canvas moves the probe
        pos = state.world_to_position(tuple(event.position))
        if pos is not None:
            state.set_position(*pos)

    return callback


def _update_probe(viewer: Any, state: StemState) -> None:
    if viewer is None or state.dataset is None or state.position is None:
        return
    geo = state.file_geometry()
    point = np.array([[state.position[0], state.position[1]]], dtype=float)
    if PROBE_LAYER in viewer.layers:
        layer = viewer.layers[PROBE_LAYER]
        # each setter makes napari recompute the viewer's dims (several ms per event, per
        # click): set the scale only when it changed (another dataset), the data only when
        # the point moved
        rescaled = not np.allclose(layer.scale[-2:], geo.step)
        if rescaled:
            layer.scale = geo.step
        _set_units(layer, _with_units(state, {}, 2).get("units"))  # another dataset's units
        if layer.data.shape != point.shape or not np.array_equal(layer.data, point):
            # The viewer refits its dims to every layer on each data event, twice per move
            # (most of a move's cost). While the dataset's own layer is shown, it spans the
            # whole scan, so a marker moving inside the scan cannot change the dims: that one
            # callback is held back then (the plain setter for another dataset's scan, without
            # such a layer, or should napari rename the callback).
            refit = getattr(viewer, "_on_layers_change", None)
            same_scan = layer.metadata.get("probe_of") == id(state.dataset) and not rescaled
            layer.metadata["probe_of"] = id(state.dataset)
            if refit is not None and same_scan and any(
                    layer_dataset(other) is state.dataset for other in dataset_layers(viewer)):
                with layer.events.data.blocker(refit):
                    layer.data = point
            else:
                layer.data = point
        return
    size = max(geo.shape) / 40 + 1
    active = viewer.layers.selection.active
    layer = viewer.add_points(point, name=PROBE_LAYER, scale=geo.step, size=size,
                              symbol="cross", face_color="#00e5ff", border_width=0,
                              metadata={REALSPACE_KEY: True}, **_with_units(state, {}, 2))
    bind_arrow_keys(layer, state)
    if active is not None:  # keep the user's active layer (and its key bindings)
        viewer.layers.selection.active = active


def robust_limits(data: np.ndarray) -> tuple[float, float]:
    """Contrast limits from the 0.5 and 99.5 percentiles (never an empty range)."""
    finite = np.asarray(data)[np.isfinite(data)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.5, 99.5])
    return float(lo), float(hi) if hi > lo else float(lo) + 1e-6


def show_embeddings(viewer: Any, state: StemState, embeddings: np.ndarray | None,
                    positions_step: int = 1, geometry: ScanGeometry | None = None) -> Any:
    """The one writer of the embeddings layer: (Ry', Rx', D) as ONE image layer (D, Ry', Rx').

    Connected to the state (:func:`install`): its embeddings on their grid, and a training
    run's previews (``positions_step`` > 1: every n-th position of ``geometry``, the run's grid).
    """
    if viewer is None or embeddings is None or state.dataset is None:
        return None
    geo = geometry or state.embedding_geometry or state.model_geometry()
    stack = np.ascontiguousarray(np.moveaxis(np.asarray(embeddings, dtype=np.float32), -1, 0))
    scale = (1.0, geo.scale[0] * positions_step, geo.scale[1] * positions_step)
    new = EMBEDDINGS_LAYER not in viewer.layers
    layer = upsert_image(viewer, EMBEDDINGS_LAYER, stack, scale=scale,
                         translate=(0.0, *geo.translate), colormap="viridis",
                         metadata={"positions_step": positions_step})
    layer.metadata["positions_step"] = positions_step
    if viewer.dims.ndim == 3:
        # Show the most variable channel when the layer opens, and move to it again when the
        # channel on screen has gone flat (a ReLU unit that died during training shows nothing).
        var = stack.reshape(stack.shape[0], -1).var(axis=1)
        shown = int(np.clip(round(viewer.dims.point[0]), 0, stack.shape[0] - 1))
        if new or var[shown] < 0.01 * var.max():
            viewer.dims.set_point(0, int(np.argmax(var)))
    if new and viewer.dims.ndim == 3:
        labels = list(viewer.dims.axis_labels)
        if labels[0] in ("0", "-3"):
            viewer.dims.axis_labels = ["latent channel", *labels[1:]]
    _channel_contrast(state)
    return layer


def _channel_contrast(state: StemState) -> None:
    """Contrast of the embedding stack follows the channel shown (channels differ in range)."""
    viewer = state.viewer
    if viewer is None or EMBEDDINGS_LAYER not in viewer.layers or viewer.dims.ndim != 3:
        return
    layer = viewer.layers[EMBEDDINGS_LAYER]
    if layer.ndim != 3:
        return
    channel = int(np.clip(round(viewer.dims.point[0]), 0, layer.data.shape[0] - 1))
    layer.contrast_limits = robust_limits(layer.data[channel])


def show_error_map(viewer: Any, state: StemState, maps: dict[str, np.ndarray] | None) -> Any:
    if viewer is None or not maps or state.dataset is None:
        return None
    key = "mse" if "mse" in maps else sorted(maps)[0]
    geo = state.embedding_geometry or state.model_geometry()
    data = np.asarray(maps[key], dtype=np.float32)
    return upsert_image(viewer, ERROR_LAYER, data, scale=geo.scale, translate=geo.translate,
                        colormap="magma", contrast_limits=robust_limits(data),
                        metadata={"error_metric": key}, visible=False)


def install(viewer: Any) -> StemState:
    """Wire the canvas of ``viewer`` to its state (idempotent)."""
    viewer = unwrap_viewer(viewer)
    state = get_state(viewer)
    if getattr(state, _INSTALLED_ATTR, False):
        return state
    setattr(state, _INSTALLED_ATTR, True)
    viewer.mouse_drag_callbacks.append(_on_click(state))
    # the state holds its viewer weakly: so do these slots (no viewer kept alive by them)
    state.position_changed.connect(lambda *_: _update_probe(state.viewer, state))
    state.embeddings_changed.connect(lambda emb: show_embeddings(state.viewer, state, emb))
    state.preview_changed.connect(
        lambda emb, step, geo: show_embeddings(state.viewer, state, emb, step, geo))
    state.error_maps_changed.connect(lambda maps: show_error_map(state.viewer, state, maps))

    def inserted(event: Any) -> None:
        layer = event.value
        if layer_dataset(layer) is not None or layer.metadata.get(REALSPACE_KEY):
            bind_arrow_keys(layer, state)
        layers = event.source
        if layer.name != PROBE_LAYER and PROBE_LAYER in layers:
            # keep the probe marker above every map so it stays visible
            layers.move(layers.index(PROBE_LAYER), len(layers))

    viewer.layers.events.inserted.connect(inserted)
    viewer.dims.events.point.connect(lambda *_: _channel_contrast(state))
    for layer in dataset_layers(viewer):
        bind_arrow_keys(layer, state)
    return state


def adopt_first_dataset(viewer: Any, state: StemState) -> None:
    """Make the first layer that carries a dataset the current one (when none is chosen)."""
    if state.dataset is not None:
        return
    layers = dataset_layers(viewer)
    if layers:
        state.set_dataset(layer_dataset(layers[0]), layers[0].name)

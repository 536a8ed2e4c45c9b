"""The real-space canvas: probe marker, click and arrow-key selection, and layer upserts.

Installed once per viewer (:func:`install`), whichever dock opens first. A click (press and
release without dragging) on any layer selects the probe position under the cursor; with a
real-space 2-D layer or the probe layer active, the arrow keys step the probe. The 3-D
embedding stack keeps napari's own arrow keys (they step its channel slider).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .state import DATASET_KEY, REALSPACE_KEY, StemState, get_state, unwrap_viewer

PROBE_LAYER = "probe position"
_INSTALLED_ATTR = "_stem4d_canvas_installed"
_ARROWS = {"Up": (-1, 0), "Down": (1, 0), "Left": (0, -1), "Right": (0, 1)}


def upsert_image(viewer: Any, name: str, data: np.ndarray, **kwargs: Any) -> Any:
    """Add an image layer, or replace the data (and given properties) of the one named ``name``."""
    viewer = unwrap_viewer(viewer)
    metadata = dict(kwargs.pop("metadata", {}))
    metadata.setdefault(REALSPACE_KEY, True)
    if name in viewer.layers:
        layer = viewer.layers[name]
        if layer.data.shape == np.shape(data) and getattr(layer, "rgb", False) == kwargs.get("rgb", False):
            layer.data = data
            for key in ("scale", "translate"):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
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
    if name in viewer.layers and viewer.layers[name].data.shape == np.shape(data):
        layer = viewer.layers[name]
        layer.data = data
        for key in ("scale", "translate"):
            if key in kwargs:
                setattr(layer, key, kwargs[key])
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
    if state.dataset is None or state.position is None:
        return
    geo = state.file_geometry()
    point = np.array([[state.position[0], state.position[1]]], dtype=float)
    if PROBE_LAYER in viewer.layers:
        layer = viewer.layers[PROBE_LAYER]
        layer.scale = geo.step
        layer.data = point
        return
    size = max(geo.shape) / 40 + 1
    active = viewer.layers.selection.active
    layer = viewer.add_points(point, name=PROBE_LAYER, scale=geo.step, size=size,
                              symbol="cross", face_color="#00e5ff", border_width=0,
                              metadata={REALSPACE_KEY: True})
    bind_arrow_keys(layer, state)
    if active is not None:  # keep the user's active layer (and its key bindings)
        viewer.layers.selection.active = active


def install(viewer: Any) -> StemState:
    """Wire the canvas of ``viewer`` to its state (idempotent)."""
    viewer = unwrap_viewer(viewer)
    state = get_state(viewer)
    if getattr(state, _INSTALLED_ATTR, False):
        return state
    setattr(state, _INSTALLED_ATTR, True)
    viewer.mouse_drag_callbacks.append(_on_click(state))
    state.position_changed.connect(lambda *_: _update_probe(viewer, state))

    def inserted(event: Any) -> None:
        layer = event.value
        if layer.metadata.get(DATASET_KEY) is not None or layer.metadata.get(REALSPACE_KEY):
            bind_arrow_keys(layer, state)

    viewer.layers.events.inserted.connect(inserted)
    for layer in viewer.layers:
        if layer.metadata.get(DATASET_KEY) is not None:
            bind_arrow_keys(layer, state)
    return state


def adopt_first_dataset(viewer: Any, state: StemState) -> None:
    """Make the first layer that carries a dataset the current one (when none is chosen)."""
    if state.dataset is not None:
        return
    for layer in unwrap_viewer(viewer).layers:
        ds = layer.metadata.get(DATASET_KEY)
        if ds is not None:
            state.set_dataset(ds, layer.name)
            return

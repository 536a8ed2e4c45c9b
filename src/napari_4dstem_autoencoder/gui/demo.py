"""``stem-ae demo``: napari with the sample dataset loaded and every dock of the plugin open."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from .keys import PLUGIN

#: (display name in napari.yaml, dock area, tabify with the previous dock of that area)
DOCKS: list[tuple[str, str, bool]] = [
    ("Data", "right", False),
    ("Train", "right", True),
    ("Model", "right", True),
    ("Latent maps", "right", True),
    ("Inspector", "right", False),
    ("Projection", "right", True),
    ("Traversal", "right", True),
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="stem-ae demo",
        description="Open napari with the 4D-STEM sample dataset and the autoencoder docks.")
    parser.add_argument("--no-sample", action="store_true", help="start without the sample")
    parser.add_argument("--file", help="open this 4D-STEM file instead of the sample")
    parser.add_argument("--quit-after", type=float, default=None, metavar="SECONDS",
                        help="close napari after this many seconds (scripts, tests)")
    parser.add_argument("--screenshot", default=None, metavar="PNG",
                        help="save a screenshot of the window just before quitting")
    return parser.parse_args(list(argv) if argv is not None else None)


def open_demo(args: argparse.Namespace) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """A viewer with data and docks (no event loop).

    Returns (viewer, {name: widget}, {name: QDockWidget}).
    """
    import napari

    from .data_widget import sample_key

    viewer = napari.Viewer(title="4D-STEM autoencoder")
    if args.file:
        viewer.open(args.file, plugin=PLUGIN)
    elif not args.no_sample:
        key = sample_key()
        if key is None:
            raise RuntimeError("the plugin manifest provides no sample dataset")
        viewer.open_sample(PLUGIN, key)
    widgets: dict[str, Any] = {}
    docks: dict[str, Any] = {}
    for name, _area, tabify in DOCKS:
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name,
                                                                          tabify=tabify)
    # Room for the canvas next to the docks; the tabs are raised once the window is shown
    # (raising a tab of a dock area that is not laid out yet has no effect).
    viewer.window._qt_window.resize(1600, 1000)
    from qtpy.QtCore import QTimer

    def raise_first_tabs() -> None:
        for name in ("Data", "Inspector"):  # the first tab of each group in front
            docks[name].raise_()

    raise_first_tabs()
    QTimer.singleShot(0, raise_first_tabs)
    return viewer, widgets, docks


def run_demo(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``stem-ae demo``: runs napari's event loop until the window closes."""
    args = parse_args(argv)
    import napari
    from qtpy.QtCore import QTimer

    viewer, _widgets, _docks = open_demo(args)
    if args.quit_after is not None:
        def finish() -> None:
            if args.screenshot:
                viewer.screenshot(args.screenshot, canvas_only=False)
            viewer.close()

        QTimer.singleShot(int(args.quit_after * 1000), finish)
    napari.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run_demo())

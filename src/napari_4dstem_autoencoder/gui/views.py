"""Small pyqtgraph views used by several docks: pattern panels and an append-only loss plot."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

PATTERN_CMAP = "inferno"
DIFF_CMAP = "CET-D4"  # diverging blue-black-red (dark at zero, like the pattern panels)


def log_display(pattern: np.ndarray) -> np.ndarray:
    """log(1 + counts) scaled to [0, 1]: the display of a raw pattern when no model is loaded."""
    x = np.log1p(np.maximum(np.asarray(pattern, dtype=np.float32), 0))
    top = float(x.max())
    return x / top if top > 0 else x


class PatternPanels(QWidget):
    """Several images side by side, each with a title, sharing zoom and pan."""

    def __init__(self, titles: list[str], cmaps: list[str] | None = None,
                 parent: QWidget | None = None, height: int = 190, link: bool = True) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground("k")
        self.graphics.setMinimumHeight(height)
        self.graphics.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        layout.addWidget(self.graphics)
        self.items: list[pg.ImageItem] = []
        self.boxes: list[pg.ViewBox] = []
        self.labels: list[pg.LabelItem] = []
        cmaps = cmaps or [PATTERN_CMAP] * len(titles)
        for col, (title, cmap) in enumerate(zip(titles, cmaps)):
            label = self.graphics.addLabel(title, row=0, col=col, size="9pt")
            box = self.graphics.addViewBox(row=1, col=col, lockAspect=True, invertY=True,
                                           enableMenu=False)
            item = pg.ImageItem(axisOrder="row-major")
            item.setColorMap(pg.colormap.get(cmap))
            box.addItem(item)
            if self.boxes and link:  # same-size images: zoom and pan together
                box.setXLink(self.boxes[0])
                box.setYLink(self.boxes[0])
            self.items.append(item)
            self.boxes.append(box)
            self.labels.append(label)

    def fit(self) -> None:
        """Fit every panel's view to its image (after a resize or a new image size)."""
        for box, item in zip(self.boxes, self.items):
            if item.image is not None:
                box.autoRange(padding=0.0)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        super().resizeEvent(event)
        self.fit()

    def showEvent(self, event) -> None:  # noqa: N802 (Qt API)
        super().showEvent(event)
        self.fit()

    def set_image(self, index: int, image: np.ndarray | None,
                  levels: tuple[float, float] | None = None) -> None:
        item = self.items[index]
        if image is None:
            item.clear()
            return
        image = np.asarray(image, dtype=np.float32)
        if levels is None:
            lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
            levels = (lo, hi if hi > lo else lo + 1.0)
        first = item.image is None or item.image.shape != image.shape
        item.setImage(image, levels=levels, autoLevels=False)
        if first:
            self.boxes[index].autoRange(padding=0.0)


class LossPlot(pg.PlotWidget):
    """Loss per component against optimiser step, log y, appended in place.

    Arrays are preallocated and doubled when full, and each curve is given a view of the
    filled part, so appending costs O(1) amortised and nothing is redrawn from a Python list.
    """

    #: colours of the curves, in the order of the objective's term names (``total`` first)
    COLOURS = ["#ffffff", "#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176",
               "#4db6ac"]

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent, background="#262930")
        self.setLogMode(y=True)
        self.showGrid(x=True, y=True, alpha=0.25)
        self.setLabel("bottom", "step")
        self.setLabel("left", "loss")
        self.setMinimumHeight(170)
        self.legend = self.addLegend(offset=(-5, 5), labelTextSize="8pt")
        self._n = 0
        self._x = np.zeros(256, dtype=np.float64)
        self._y: dict[str, np.ndarray] = {}
        self._curves: dict[str, pg.PlotDataItem] = {}

    @property
    def n_points(self) -> int:
        return self._n

    def series(self, name: str) -> np.ndarray:
        """The values appended for ``name`` so far (a copy)."""
        return self._y[name][: self._n].copy()

    def clear_losses(self) -> None:
        for curve in self._curves.values():
            self.removeItem(curve)
        self.legend.clear()
        self._curves.clear()
        self._y.clear()
        self._n = 0

    def set_terms(self, names: Sequence[str]) -> None:
        """Start again with one curve per loss term the objective reports, in its order."""
        self.clear_losses()
        for name in names:
            self._add_curve(name)

    def _add_curve(self, name: str) -> None:
        self._y[name] = np.full(self._x.size, np.nan)
        colour = self.COLOURS[len(self._curves) % len(self.COLOURS)]
        self._curves[name] = self.plot(name=name, pen=pg.mkPen(colour, width=1.5),
                                       connect="finite")

    def append(self, step: float, losses: dict[str, float]) -> None:
        if self._n == self._x.size:  # grow every array together
            self._x = np.concatenate([self._x, np.zeros_like(self._x)])
            for key in self._y:
                self._y[key] = np.concatenate([self._y[key], np.full_like(self._y[key], np.nan)])
        self._x[self._n] = step
        for name, value in losses.items():
            if name not in self._y:  # a term set_terms was not told about
                self._add_curve(name)
            # log axis: a zero (e.g. a contrastive term that never fires) is left undrawn
            value = float(value)
            self._y[name][self._n] = value if value > 0 else np.nan
        self._n += 1
        for name, curve in self._curves.items():
            curve.setData(self._x[: self._n], self._y[name][: self._n])

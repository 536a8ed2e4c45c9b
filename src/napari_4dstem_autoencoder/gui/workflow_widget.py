"""The one-entry workflow: "4D-STEM Autoencoder" in the Plugins menu.

One dock with the steps as tabs, Data → Train → Model → Explore (latent maps, projection,
traversal), each scrollable so the window fits a 1366×768 laptop screen, and the Inspector in
its own dock under the canvas, where raw, reconstruction and difference sit side by side next
to the maps they are clicked on. The tabs hold the same dock widgets the single Plugins-menu
entries open, sharing the viewer's one state, so either way of working gives the same tools.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QFrame, QScrollArea, QTabWidget, QVBoxLayout, QWidget

from .data_widget import DataWidget
from .inspector_widget import InspectorWidget
from .latent_widget import LatentMapsWidget
from .model_widget import ModelWidget
from .projection_widget import ProjectionWidget
from .state import unwrap_viewer
from .train_widget import TrainWidget
from .traversal_widget import TraversalWidget

#: the tab dock's narrowest width: with napari's layer list (~320 px) and a canvas it keeps
#: the window within a 1366-px screen; wider step widgets scroll sideways
TAB_WIDTH = 390
INSPECTOR_HEIGHT = 250
INSPECTOR_DOCK = "Inspector (4D-STEM Autoencoder)"


def _scrolling(widget: QWidget) -> QScrollArea:
    """``widget`` in a vertical scroll area, so a tall form never makes the window taller."""
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    return area


class WorkflowWidget(QWidget):
    """The plugin's docks as the steps of one workflow (module docstring).

    The step widgets are attributes (``data``, ``train``, ``model``, ``latent``,
    ``projection``, ``traversal``, ``inspector``) for scripts, the demo and tests.
    """

    STEPS = ("Data", "Train", "Model", "Explore")

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = unwrap_viewer(napari_viewer)
        self.data = DataWidget(napari_viewer)
        self.train = TrainWidget(napari_viewer)
        self.model = ModelWidget(napari_viewer)
        self.latent = LatentMapsWidget(napari_viewer)
        self.projection = ProjectionWidget(napari_viewer)
        self.traversal = TraversalWidget(napari_viewer)

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.setUsesScrollButtons(False)  # four short titles: all visible, none cut off
        self.explore = QTabWidget()
        self.explore.setDocumentMode(True)
        for title, widget in (("Maps", self.latent), ("Projection", self.projection),
                              ("Traversal", self.traversal)):
            self.explore.addTab(_scrolling(widget), title)
        for title, widget in zip(self.STEPS, (self.data, self.train, self.model)):
            self.tabs.addTab(_scrolling(widget), title)
        self.tabs.addTab(self.explore, self.STEPS[3])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        self.setMinimumWidth(TAB_WIDTH)
        self.setMaximumWidth(TAB_WIDTH + 200)

        self.inspector = InspectorWidget(napari_viewer)
        self.inspector_dock = None
        # napari adds this widget's own dock after the constructor returns; the Inspector's
        # dock goes under the canvas then (the window may not exist yet in a script)
        QTimer.singleShot(0, self._dock_inspector)
        # after training, the embedding lands in Explore; a loaded model moves there too
        self.train.run_finished.connect(self._after_training)

    def _dock_inspector(self) -> None:
        window = getattr(self.viewer, "window", None)
        if window is None or self.inspector_dock is not None:
            return
        self.inspector.setMinimumHeight(INSPECTOR_HEIGHT - 60)
        self.inspector_dock = window.add_dock_widget(self.inspector, name=INSPECTOR_DOCK,
                                                     area="bottom")
        main = getattr(window, "_qt_window", None)
        if main is not None:
            # the side columns run to the bottom, so the Inspector sits under the canvas only
            main.setCorner(Qt.Corner.BottomLeftCorner, Qt.DockWidgetArea.LeftDockWidgetArea)
            main.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
            main.resizeDocks([self.inspector_dock], [INSPECTOR_HEIGHT], Qt.Orientation.Vertical)

    def show_step(self, name: str) -> None:
        """Bring one step's tab to the front (``Data``, ``Train``, ``Model``, ``Explore``,
        or one of Explore's ``Maps``, ``Projection``, ``Traversal``)."""
        if name in self.STEPS:
            self.tabs.setCurrentIndex(self.STEPS.index(name))
            return
        titles = [self.explore.tabText(i) for i in range(self.explore.count())]
        if name not in titles:
            raise ValueError(f"no step {name!r}; steps are {self.STEPS + tuple(titles)}")
        self.tabs.setCurrentIndex(self.STEPS.index("Explore"))
        self.explore.setCurrentIndex(titles.index(name))

    def _after_training(self, event: Any) -> None:
        from ..training import events as ev

        if isinstance(event, ev.Finished) and event.checkpoint:
            self.show_step("Maps")

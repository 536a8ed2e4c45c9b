"""Latent maps dock: RGB composite of three channels, clustering into a Labels layer with
class-mean patterns, the reconstruction-error map, and export (HDF5 / TIFF).

The 32 maps themselves are one image layer with a channel axis, ``AE embeddings`` (32, Ry, Rx),
kept up to date by the canvas whenever embeddings change (see :mod:`.canvas`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import backend
from .canvas import ERROR_LAYER, adopt_first_dataset, install, upsert_image, upsert_labels
from .state import unwrap_viewer
from .views import PATTERN_CMAP, log_display
from .workers import start_function

RGB_LAYER = "AE RGB composite"
CLUSTER_LAYER = "AE clusters"
PCA_CLUSTER_LAYER = "PCA clusters"
#: principal components of the patterns clustered for the baseline comparison (the same
#: number the evaluation's PCA + k-means baseline uses, docs/model.md)
BASELINE_COMPONENTS = 10
#: the dock's initial clustering scale; equal to ``analysis.clustering.STANDARDISE_DEFAULT``
#: (a test checks), kept here so opening the dock does not import scikit-learn
CLUSTER_STANDARDISE_DEFAULT = True


def rgb_composite(embeddings: np.ndarray, channels: tuple[int, int, int]) -> np.ndarray:
    """(Ry, Rx, 3) float in [0, 1]: each chosen channel stretched between its 1st and 99th
    percentiles (a dead channel stays black)."""
    out = np.zeros((*embeddings.shape[:2], 3), dtype=np.float32)
    for i, c in enumerate(channels):
        ch = embeddings[..., c].astype(np.float32)
        lo, hi = np.percentile(ch, [1, 99])
        if hi > lo:
            out[..., i] = np.clip((ch - lo) / (hi - lo), 0, 1)
    return out


def channels_by_variance(embeddings: np.ndarray) -> list[int]:
    """Channel indices, most variable first (good defaults for the composite)."""
    var = embeddings.reshape(-1, embeddings.shape[-1]).var(axis=0)
    return [int(i) for i in np.argsort(-var, kind="stable")]


class LatentMapsWidget(QWidget):
    """Composite, clusters, error map and export of the current embeddings."""

    clustered = Signal(object)  # labels (Ry', Rx')

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = unwrap_viewer(napari_viewer)
        self.state = install(napari_viewer)
        self.labels: np.ndarray | None = None
        self.class_means: np.ndarray | None = None
        self.pca_labels: np.ndarray | None = None
        self.agreement: float | None = None
        self._pca_cache: tuple[Any, tuple[np.ndarray, np.ndarray]] | None = None
        self._cluster_worker: Any = None

        layout = QVBoxLayout(self)
        self.info_label = QLabel("No embeddings yet: train a model or load one and embed.")
        self.info_label.setWordWrap(True)
        layout.addWidget(self.info_label)

        box = QGroupBox("RGB composite")
        row = QHBoxLayout(box)
        self.channel_spins = []
        for colour in ("R", "G", "B"):
            spin = QSpinBox(minimum=0, maximum=31)
            row.addWidget(QLabel(colour))
            row.addWidget(spin)
            self.channel_spins.append(spin)
            spin.valueChanged.connect(self._on_channels)
        self.rgb_button = QPushButton("Show")
        row.addWidget(self.rgb_button)
        layout.addWidget(box)

        box = QGroupBox("Clustering")
        form = QFormLayout(box)
        self.n_clusters = QSpinBox(minimum=2, maximum=64, value=5)
        self.method = QComboBox()
        self.method.addItems(["kmeans", "gmm", "spectral"])
        self.method.setToolTip(
            "kmeans: compact clusters; gmm: elongated (full-covariance) clusters; spectral: "
            "connected clusters of a nearest-neighbour graph, which follows a phase whose "
            "patterns drift (e.g. with thickness) where k-means cuts it")
        # on: every live dimension scaled to unit variance first; off: distances in the
        # latent space as the network made it (the geometry PCA + k-means uses)
        self.standardise = QCheckBox("scale every dimension to unit variance")
        self.standardise.setChecked(CLUSTER_STANDARDISE_DEFAULT)
        # the baseline a microscopist already has, clustered the same way: do the maps show
        # more than PCA of the patterns? (on the evaluation data they often do not)
        self.compare_pca = QCheckBox(f"also cluster PCA({BASELINE_COMPONENTS}) of the patterns")
        self.cluster_button = QPushButton("Cluster embeddings")
        self.cluster_info = QLabel("")
        self.cluster_info.setWordWrap(True)
        form.addRow("clusters", self.n_clusters)
        form.addRow("method", self.method)
        form.addRow(self.standardise)
        form.addRow(self.compare_pca)
        form.addRow(self.cluster_button)
        form.addRow(self.cluster_info)
        self.means_view = pg.GraphicsLayoutWidget()
        self.means_view.setBackground("k")
        self.means_view.setMinimumHeight(150)
        form.addRow(self.means_view)
        layout.addWidget(box)

        row = QHBoxLayout()
        self.error_button = QPushButton("Show error map")
        self.export_button = QPushButton("Export…")
        row.addWidget(self.error_button)
        row.addWidget(self.export_button)
        layout.addLayout(row)
        layout.addStretch(1)

        self.rgb_button.clicked.connect(self.show_rgb)
        self.cluster_button.clicked.connect(self.cluster)
        self.error_button.clicked.connect(self.show_error_map)
        self.export_button.clicked.connect(self._export_dialog)
        self.state.embeddings_changed.connect(self._on_embeddings)
        adopt_first_dataset(napari_viewer, self.state)
        self._on_embeddings(self.state.embeddings)

    # -- embeddings ------------------------------------------------------------------------
    def _on_embeddings(self, embeddings: np.ndarray | None) -> None:
        has = embeddings is not None
        for w in (self.rgb_button, self.cluster_button, self.error_button, self.export_button):
            w.setEnabled(has)
        self._pca_cache = None  # a new model may preprocess differently
        if not has:
            return
        ry, rx, d = embeddings.shape
        order = channels_by_variance(embeddings)
        self.info_label.setText(
            f"{d} latent maps on {ry}×{rx} positions; {backend.live_dimensions(embeddings)} carry "
            f"variance. Most variable channels: {', '.join(map(str, order[:6]))}.")
        for spin, c in zip(self.channel_spins, order[:3]):
            spin.blockSignals(True)
            spin.setMaximum(d - 1)
            spin.setValue(c)
            spin.blockSignals(False)
        self.show_rgb()

    def _on_channels(self, *_: Any) -> None:
        if RGB_LAYER in self.viewer.layers:
            self.show_rgb()

    def channels(self) -> tuple[int, int, int]:
        return tuple(s.value() for s in self.channel_spins)  # type: ignore[return-value]

    def show_rgb(self) -> Any:
        emb = self.state.embeddings
        if emb is None:
            return None
        geo = self.state.embedding_geometry
        channels = self.channels()
        layer = upsert_image(self.viewer, RGB_LAYER, rgb_composite(emb, channels), rgb=True,
                             scale=geo.scale, translate=geo.translate,
                             metadata={"channels": channels}, visible=False)
        layer.metadata["channels"] = channels
        return layer

    def show_error_map(self) -> Any:
        if ERROR_LAYER in self.viewer.layers:
            layer = self.viewer.layers[ERROR_LAYER]
            layer.visible = True
            self.viewer.layers.selection.active = layer
            return layer
        show_error("No reconstruction-error map: embed the dataset with a model first")
        return None

    # -- clustering ------------------------------------------------------------------------
    def cluster(self) -> Any:
        emb, dataset, loaded = self.state.embeddings, self.state.dataset, self.state.model
        if emb is None or dataset is None or self._cluster_worker is not None:
            return None
        k, method = self.n_clusters.value(), self.method.currentText()
        standardise = self.standardise.isChecked()
        compare = self.compare_pca.isChecked()
        self.cluster_button.setEnabled(False)
        view = loaded.preprocessor.scan_view(dataset) if loaded is not None else dataset
        prep = loaded.preprocessor if loaded is not None else None
        key = (id(dataset), id(prep), emb.shape[:2])
        cached = self._pca_cache[1] if self._pca_cache and self._pca_cache[0] == key else None

        def work() -> dict[str, Any]:
            labels = backend.cluster(emb, k, method, standardise=standardise)
            if tuple(view.scan_shape) != labels.shape:
                raise ValueError(f"the patterns give {tuple(view.scan_shape)} positions but the "
                                 f"embeddings {labels.shape}: embed this dataset again")
            out: dict[str, Any] = {"labels": labels}
            if compare and cached is None:
                # one read of the scan gives both the PCA scores and the class means
                pca, out["means"] = backend.pca_scores_and_class_means(
                    view, prep, BASELINE_COMPONENTS, labels, k)
            else:
                pca = cached
                out["means"] = backend.class_means(view, labels, k, prep)
            if compare:
                out.update(backend.compare_with_pca(labels, pca, k, method, standardise))
                out["pca"], out["key"] = pca, key
            return out

        def release() -> None:
            if self._cluster_worker is worker:
                self._cluster_worker = None
            self.cluster_button.setEnabled(
                self._cluster_worker is None and self.state.embeddings is not None)

        def show(result: dict[str, Any]) -> None:
            # free the dock before `clustered` is emitted: a listener may cluster again at once
            release()
            self._show_clusters(result)

        worker = start_function(work, what="Clustering", on_result=show, on_finished=release,
                                owner=self)
        self._cluster_worker = worker
        return worker

    def _show_clusters(self, result: dict[str, Any]) -> None:
        labels, means = result["labels"], result["means"]
        self.labels, self.class_means = labels, means
        geo = self.state.embedding_geometry
        layer = upsert_labels(self.viewer, CLUSTER_LAYER, labels.astype(np.int32) + 1,
                              scale=geo.scale, translate=geo.translate, opacity=0.6)
        self.pca_labels = result.get("pca_labels")
        self.agreement = result.get("agreement")
        if self.pca_labels is not None:
            self._pca_cache = (result["key"], result["pca"])
            # hidden under the AE clusters: toggle it to compare; matched ids share colours
            upsert_labels(self.viewer, PCA_CLUSTER_LAYER, self.pca_labels.astype(np.int32) + 1,
                          scale=geo.scale, translate=geo.translate, opacity=0.6, visible=False)
            explained = float(np.sum(result["pca"][1]))
            self.cluster_info.setText(
                f"PCA({len(result['pca'][1])}) of the patterns ({100 * explained:.0f} % of their "
                f"variance), clustered the same way: layer '{PCA_CLUSTER_LAYER}' (hidden; same "
                f"colour = matched cluster). Agreement with the AE clusters: adjusted Rand "
                f"index {self.agreement:.2f}, {100 * result['same_fraction']:.0f} % of positions "
                f"in matched clusters.")
        else:  # a comparison made for another clustering would mislead
            if PCA_CLUSTER_LAYER in self.viewer.layers:
                self.viewer.layers.remove(self.viewer.layers[PCA_CLUSTER_LAYER])
            self.cluster_info.setText("")
        self.means_view.clear()
        cols = min(len(means), 4)
        for k, mean in enumerate(means):
            count = int((labels == k).sum())
            colour = layer.get_color(k + 1)
            hex_colour = pg.mkColor(tuple(int(255 * c) for c in colour[:3])).name() \
                if colour is not None else "#ffffff"
            self.means_view.addLabel(f"<span style='color:{hex_colour}'>■</span> {k + 1} ({count})",
                                     row=2 * (k // cols), col=k % cols, size="8pt")
            box = self.means_view.addViewBox(row=2 * (k // cols) + 1, col=k % cols,
                                             lockAspect=True, invertY=True, enableMenu=False)
            item = pg.ImageItem(axisOrder="row-major")
            item.setColorMap(pg.colormap.get(PATTERN_CMAP))
            shown = mean if self.state.model is not None else log_display(mean)
            item.setImage(np.asarray(shown, dtype=np.float32), levels=(0.0, float(np.max(shown)) or 1.0))
            box.addItem(item)
            box.autoRange(padding=0)
        self.means_view.setMinimumHeight(130 * ((len(means) + cols - 1) // cols))
        self.clustered.emit(labels)

    # -- export ----------------------------------------------------------------------------
    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export embeddings", "embeddings.h5",
            "HDF5 (*.h5 *.hdf5);;TIFF stack (*.tif *.tiff)")
        if path:
            self.export(path)

    def export(self, path: str | Path) -> Path | None:
        """HDF5 (embeddings, error maps, clusters, configs) or a TIFF stack, by suffix."""
        if self.state.embeddings is None:
            show_error("Nothing to export: embed a dataset first")
            return None
        try:
            backend.export(str(path), self.state, self.labels, self.pca_labels)
        except Exception as exc:
            show_error(f"Export to {path} failed: {exc}")
            return None
        show_info(f"Exported to {path}")
        return Path(path)

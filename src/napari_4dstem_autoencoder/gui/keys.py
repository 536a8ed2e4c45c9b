"""Names the plugin's hooks, docks, scripts and tests share, each defined once (no imports)."""

from __future__ import annotations

#: the plugin's name in its npe2 manifest (``napari.yaml``), for ``viewer.open(plugin=...)``
PLUGIN = "napari-4dstem-autoencoder"

#: layer metadata: the lazy :class:`~..data.dataset.Dataset4D` a navigator layer stands for
DATASET_KEY = "stem4d_dataset"
#: layer metadata: the reader's direct-beam estimate of that dataset (a ``BeamEstimate``)
BEAM_KEY = "stem4d_beam"
#: layer metadata: the scan stride of the reader's navigator (1: every position)
NAVIGATOR_STRIDE_KEY = "stem4d_navigator_stride"
#: layer metadata: the sample's ground-truth labels
LABELS_KEY = "stem4d_labels"
#: layer metadata: a layer this plugin put on the real-space canvas
REALSPACE_KEY = "stem4d_realspace"

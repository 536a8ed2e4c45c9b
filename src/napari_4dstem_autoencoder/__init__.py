"""Train a ResNet autoencoder on 4D-STEM scans and browse its latent space in napari.

The package is layered (see docs/architecture.md): ``io``, ``models``, ``training`` and
``analysis`` never import Qt or napari; ``_widgets`` holds all GUI code.
"""

__version__ = "0.1.0"

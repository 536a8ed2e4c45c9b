"""Packaging: the manifest validates, ships inside the package, and the core stays Qt-free."""

import subprocess
import sys
from pathlib import Path

import napari_4dstem_autoencoder

REPO = Path(__file__).resolve().parents[1]


def test_manifest_validates_with_imports():
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-4dstem-autoencoder", "--imports"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_top_level_manifest_is_the_packaged_one():
    packaged = Path(napari_4dstem_autoencoder.__file__).with_name("napari.yaml")
    top = REPO / "napari.yaml"
    assert packaged.is_file() and top.exists()
    assert top.resolve() == packaged.resolve() or top.read_text() == packaged.read_text()


def test_core_layers_do_not_import_qt_or_napari():
    code = (
        "import sys\n"
        "import napari_4dstem_autoencoder.io, napari_4dstem_autoencoder.models\n"
        "import napari_4dstem_autoencoder.training, napari_4dstem_autoencoder.analysis\n"
        "import pkgutil, importlib\n"
        "for pkg in ('io', 'models', 'training', 'analysis'):\n"
        "    base = importlib.import_module('napari_4dstem_autoencoder.' + pkg)\n"
        "    for m in pkgutil.walk_packages(base.__path__, base.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = [m for m in ('qtpy', 'napari', 'magicgui', 'superqt', 'PyQt6', 'PyQt5') if m in sys.modules]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr

"""Packaging: the manifest validates, ships inside the package, and the core stays Qt-free."""

import ast
import shutil
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


#: The package's layers, lowest first (docs/architecture.md). A module may import its own
#: layer and the layers below it; ``cli`` is the top and only ``gui`` may import Qt or napari.
LAYERS = {"data": 0, "model": 0, "objective": 1, "training": 2, "inference": 3, "analysis": 3,
          "gui": 4, "cli": 5}
GUI_ONLY = ("qtpy", "napari", "magicgui", "superqt", "PyQt6", "PyQt5", "pyqtgraph", "vispy")
PACKAGE_DIR = Path(napari_4dstem_autoencoder.__file__).parent


def _imports(path: Path, root: Path) -> list[str]:
    """Every module ``path`` imports (lazy imports inside functions included), absolute."""
    rel = path.relative_to(root).with_suffix("").parts
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["napari_4dstem_autoencoder", *rel[:len(rel) - node.level]]
                mod = ".".join(base + ([node.module] if node.module else []))
                # "from . import x" names submodules too
                names += [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            else:
                names.append(node.module)
    return names


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "napari_4dstem_autoencoder" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def test_every_module_belongs_to_a_layer_or_imports_nothing_of_the_package():
    tops = {p.relative_to(PACKAGE_DIR).parts[0].removesuffix(".py")
            for p in PACKAGE_DIR.rglob("*.py")}
    assert tops - set(LAYERS) == {"__init__", "_fields", "_files"}
    for name in ("_fields.py", "_files.py"):  # shared by every layer, so below all of them
        path = PACKAGE_DIR / name
        assert [m for m in _imports(path, PACKAGE_DIR) if _layer_of(m)] == []


def layer_violations(root: Path) -> list[str]:
    """Imports of the package at ``root`` that break the layer order."""
    wrong = []
    for path in sorted(root.rglob("*.py")):
        me = path.relative_to(root).parts[0].removesuffix(".py")
        if me not in LAYERS:
            continue
        for name in _imports(path, root):
            other = _layer_of(name)
            where = path.relative_to(root).as_posix()
            if other is not None and other != me and LAYERS[other] >= LAYERS[me]:
                wrong.append(f"{where} imports {name}")
            if name.split(".")[0] in GUI_ONLY and me != "gui":
                wrong.append(f"{where} imports {name} (GUI only)")
    return wrong


def test_layers_import_only_downwards():
    assert layer_violations(PACKAGE_DIR) == []


def test_layer_rule_reports_upward_and_gui_imports(tmp_path):
    """The rule is not vacuous: in a copy of the package, a data module that imports the
    training layer and napari, and an analysis module that imports inference, are reported,
    while a downward import is not."""
    root = tmp_path / "napari_4dstem_autoencoder"
    shutil.copytree(PACKAGE_DIR, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "data" / "probe.py").write_text("from ..training.config import TrainConfig\nimport napari\n")
    (root / "analysis" / "probe.py").write_text("from ..inference import embedding\nfrom ..data import sample\n")
    assert layer_violations(root) == [
        "analysis/probe.py imports napari_4dstem_autoencoder.inference",
        "data/probe.py imports napari_4dstem_autoencoder.training.config",
        "data/probe.py imports napari (GUI only)",
    ]


def test_core_layers_do_not_load_qt_or_napari_at_run_time():
    code = (
        "import sys, pkgutil, importlib\n"
        "for pkg in ('data', 'model', 'objective', 'training', 'inference', 'analysis'):\n"
        "    base = importlib.import_module('napari_4dstem_autoencoder.' + pkg)\n"
        "    for m in pkgutil.walk_packages(base.__path__, base.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        f"bad = [m for m in {GUI_ONLY!r} if m in sys.modules]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr

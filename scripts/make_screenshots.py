"""Screenshots for docs/user_guide.md, taken from the real docks driving a real run.

    xvfb-run -a python scripts/make_screenshots.py            # writes docs/images/*.png

Opens napari with the sample, sets preprocessing in the Data dock, trains a short CPU run in
the Train dock (live losses and maps), embeds, clusters, clicks a probe position, draws a
selection in the projection and moves a traversal slider, saving a PNG after each step.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def wait(app, condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.01)


def settle(app, seconds: float = 0.3) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def save(viewer, app, name: str, out: Path, max_width: int = 1500) -> Path:
    """Screenshot of the whole window, downscaled and palette-quantised to stay small."""
    from PIL import Image

    viewer.reset_view()
    settle(app)
    img = Image.fromarray(np.asarray(viewer.screenshot(canvas_only=False, flash=False))[..., :3])
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
    img = img.quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    path = out / f"{name}.png"
    img.save(path, optimize=True)
    print(f"{path}  {path.stat().st_size / 1024:.0f} KB")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--preset", default=None, help="default: the package's DEFAULT_PRESET")
    parser.add_argument("--minutes", type=float, default=6.0, help="training time budget")
    parser.add_argument("--subset", type=int, default=512)
    parser.add_argument("--scan-bin", type=int, default=4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import napari

    from napari_4dstem_autoencoder.gui.demo import open_demo, parse_args
    from napari_4dstem_autoencoder.gui.state import get_state
    from napari_4dstem_autoencoder.training import events as ev

    viewer, w, docks = open_demo(parse_args([]))
    app = napari.qt.get_qapp()
    window = docks["Data"].window()  # the main window: screenshots need a fixed size
    window.resize(1700, 1050)
    window.show()
    state = get_state(viewer)

    def show(*names: str) -> None:
        for name in names:
            docks[name].raise_()
        settle(app)

    # 1. data: preprocessing + virtual detectors
    data = w["Data"]
    data.scan_bin.setValue(args.scan_bin)
    data.detector_bin.setValue(2)
    wait(app, lambda: data.preview_processed is not None
         and data.preview_processed.shape == (32, 32), 60, "the preprocessing preview")
    data.compute_virtual_images()
    wait(app, lambda: data._vworker is None, 120, "virtual images")
    show("Data", "Inspector")
    save(viewer, app, "01_data", args.out)

    # 2. training with live losses and maps
    train = w["Train"]
    from napari_4dstem_autoencoder.training.presets import DEFAULT_PRESET

    train.preset.setCurrentText(args.preset or DEFAULT_PRESET)
    train.epochs.setValue(1000)
    train.max_minutes.setValue(args.minutes)
    train.batch_size.setValue(16)
    train.subset.setValue(args.subset)
    train.device.setCurrentText("cpu")
    train.preview_seconds = 3.0
    show("Train")
    seen: list = []
    train.event_handled.connect(lambda e: seen.append(e))
    train.start()
    t_start = time.monotonic()
    wait(app, lambda: sum(isinstance(e, ev.Preview) for e in seen) >= 2
         and time.monotonic() - t_start > args.minutes * 30, 1800, "training half way")
    viewer.layers.selection.active = viewer.layers["AE embeddings"]
    save(viewer, app, "02_training", args.out)
    wait(app, lambda: not train.running, 3600, "training to finish")
    wait(app, lambda: state.embeddings is not None and state.error_maps is not None, 3600,
         "the scan's embeddings")

    # 3. latent maps: composite and clusters, compared with PCA of the same patterns
    latent = w["Latent maps"]
    latent.n_clusters.setValue(5)
    latent.compare_pca.setChecked(True)
    latent.cluster()
    wait(app, lambda: latent.labels is not None, 300, "clustering")
    for layer in viewer.layers:
        layer.visible = layer.name in ("AE clusters", "AE RGB composite", "probe position")
    show("Latent maps")
    save(viewer, app, "03_latent_maps", args.out)

    # 4. inspector after a click on the maps
    ds = state.dataset
    geo = state.embedding_geometry
    for layer in viewer.layers:
        layer.visible = layer.name in ("AE embeddings", "probe position")
    viewer.dims.set_point(0, int(latent.channels()[0]))
    inspector = w["Inspector"]
    target = (ds.scan_shape[0] // 3, ds.scan_shape[1] * 2 // 3)
    state.set_position(*target)
    wait(app, lambda: inspector.recon_image is not None and inspector.position == geo.to_grid(*target),
         120, "the inspector")
    show("Inspector", "Model")
    save(viewer, app, "04_inspector", args.out)

    # 5. projection with a lasso-like selection of one end of the cloud
    proj = w["Projection"]
    show("Projection", "Latent maps")
    proj.project()
    wait(app, lambda: proj.points is not None, 120, "the projection")
    pts = proj.points
    x_cut = np.percentile(pts[:, 0], 75)
    lo, hi = pts.min(axis=0) - 1, pts.max(axis=0) + 1
    proj.select_polygon(np.array([[x_cut, lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [x_cut, hi[1]]]))
    wait(app, lambda: proj.mean_pattern is not None, 120, "the selection mean")
    for layer in viewer.layers:
        layer.visible = layer.name.endswith("virtual BF") or layer.name in (
            "AE projection selection", "probe position")
    save(viewer, app, "05_projection", args.out)

    # 6. traversal: push the most variable dimension up
    trav = w["Traversal"]
    show("Traversal")
    wait(app, lambda: trav.decoded_image is not None, 120, "the first decode")
    d = trav.dims[0]
    lo, hi = trav._ranges[d]
    trav.set_dimension(d, hi)
    before = trav.decoded_image
    wait(app, lambda: trav.decoded_image is not before, 120, "the traversal decode")
    save(viewer, app, "06_traversal", args.out)
    viewer.close()


if __name__ == "__main__":
    main()

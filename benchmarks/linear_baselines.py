"""How strong is the linear baseline? PCA + k-means / GMM, plain and whitened, by component count.

``eval_presets.py`` compares the autoencoder with PCA(10) + k-means, the baseline the issue
names. This prints the neighbours of that baseline on the same preprocessed patterns (log +
normalise, detector bin 2 by default), so a reader can see how much of a gap is the
autoencoder and how much is the choice of clustering geometry: k-means on raw
principal-component scores weighs each direction by its variance; whitened scores weigh the
leading directions equally; a full-covariance GMM allows elongated clusters; spectral
clustering on a 10-nearest-neighbour graph follows connected (curved) clusters.

    python benchmarks/linear_baselines.py                 # both datasets, 2..10 components
    python benchmarks/linear_baselines.py --datasets sample --components 3,4,5
    python benchmarks/linear_baselines.py --remove-level  # the linear analogue of `levelled`

``--remove-level`` first subtracts from every pixel its least-squares line in the pattern's
level (mean value): what the ``levelled`` preset's decoder is given, taken out of PCA's input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_presets import (SIM_PATH, load_sample, load_sim, preprocess_all,  # noqa: E402
                          spectral_ari)

from napari_4dstem_autoencoder.analysis.clustering import adjusted_rand  # noqa: E402
from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor  # noqa: E402


def remove_level(x: np.ndarray) -> np.ndarray:
    """Patterns minus each pixel's least-squares line in the pattern's level (mean value)."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    level = flat.mean(axis=1)
    centred = level - level.mean()
    slope = centred @ (flat - flat.mean(axis=0)) / (centred @ centred)
    return (flat - np.outer(centred, slope)).reshape(x.shape).astype(np.float32)


def scores_for(x: np.ndarray, labels: np.ndarray, k: int, n_components: int,
               whiten: bool, seed: int) -> tuple[float, float, float]:
    feats = PCA(n_components, whiten=whiten, random_state=seed).fit_transform(
        x.reshape(x.shape[0], -1))
    km = KMeans(k, n_init=10, random_state=seed).fit_predict(feats)
    gmm = GaussianMixture(k, covariance_type="full", n_init=3, reg_covar=1e-4,
                          random_state=seed).fit_predict(feats)
    truth = labels.ravel()
    return (adjusted_rand(truth, km), adjusted_rand(truth, gmm),
            spectral_ari(feats, labels, k, seed))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="sim,sample")
    ap.add_argument("--components", default="2,3,4,5,6,8,10")
    ap.add_argument("--detector-bin", type=int, default=2)
    ap.add_argument("--sample-scan", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sim-path", type=Path, default=SIM_PATH)
    ap.add_argument("--remove-level", action="store_true",
                    help="regress each pixel on the pattern's level and cluster the residual")
    args = ap.parse_args(argv)
    comps = [int(c) for c in args.components.split(",")]
    prep_cfg = PreprocessConfig(scaling="log", normalise=True, detector_bin=args.detector_bin)
    for name in args.datasets.split(","):
        task = load_sim(args.sim_path) if name == "sim" else load_sample(args.sample_scan)
        x = preprocess_all(task, Preprocessor.fit(task.dataset, prep_cfg))
        if args.remove_level:
            x = remove_level(x)
        ratio = PCA(max(comps), random_state=args.seed).fit(
            x.reshape(x.shape[0], -1)).explained_variance_ratio_
        tag = " (level removed)" if args.remove_level else ""
        print(f"{name}{tag}: {x.shape[0]} patterns of {x.shape[1]}x{x.shape[2]}, {task.n_clusters} "
              f"classes; variance fraction of the leading components: "
              + " ".join(f"{v:.4f}" for v in ratio))
        print(f"{'components':>10} {'k-means':>8} {'GMM':>6} {'spectral':>9} {'k-means white':>14} "
              f"{'GMM white':>10} {'spectral white':>15}")
        for n in comps:
            plain = scores_for(x, task.labels, task.n_clusters, n, False, args.seed)
            white = scores_for(x, task.labels, task.n_clusters, n, True, args.seed)
            print(f"{n:>10} {plain[0]:>8.3f} {plain[1]:>6.3f} {plain[2]:>9.3f} {white[0]:>14.3f} "
                  f"{white[1]:>10.3f} {white[2]:>15.3f}")
        task.dataset.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Single-seed screen of training variants that presets cannot express (yet).

A plain training loop around ``Autoencoder`` (not the engine) on the preprocessed sim or sample
patterns (log + normalise, detector binned 2x: 32x32), scored at wall-clock marks: k-means ARI
of the embeddings (standardised, raw, on their PCA), ARI with train-mode BN, live/effective
dimensions, eval-mode reconstruction PSNR on 256 random positions and the training batches'
PSNR. Variants are monkeypatched onto the model: ``--meanprior`` (the mean-pattern output
prior, now the ``prior`` preset), ``--rebn N`` (BN recalibration on N patterns, now in the
engine), ``--wide C`` (C channels in the encoder's conv_final: changes the parameter count),
``--final-relu 0`` / ``--act`` (embedding activations), ``--set field=value`` (ModelConfig).
docs/model.md ("What the first CPU minutes showed") has the table this produced; variants
that became presets were then rerun through the engine with eval_presets.py.

    python benchmarks/screen_variants.py sample --marks 1,3 --meanprior 1 --lr 1e-4 --rebn 256
"""
import argparse, time, sys
from pathlib import Path
import numpy as np
import torch
import torch.nn.functional as F
from napari_4dstem_autoencoder.model import Autoencoder
from napari_4dstem_autoencoder.model.config import get_preset
from napari_4dstem_autoencoder.analysis.clustering import cluster_embeddings, adjusted_rand
from napari_4dstem_autoencoder.analysis.quality import effective_dimensions, live_dimensions
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

ap = argparse.ArgumentParser()
ap.add_argument("data", choices=["sim", "sample"]); ap.add_argument("--preset", default="decorrelated")
ap.add_argument("--marks", default="1,3"); ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--lr", type=float, default=1e-3); ap.add_argument("--bs", type=int, default=32)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--set", action="append", default=[], help="config field=value")
ap.add_argument("--act", default="relu"); ap.add_argument("--final-relu", type=int, default=1)
ap.add_argument("--tag", default="")
ap.add_argument("--rebn", type=int, default=0, help="re-estimate BN stats on this many patterns before scoring")
ap.add_argument("--meanprior", type=int, default=0); ap.add_argument("--center", type=int, default=0)
ap.add_argument("--wide", type=int, default=0, help="conv_final channels (0: seed's 1)")
a = ap.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(a.seed); np.random.seed(a.seed)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_presets as ep  # noqa: E402  (the same datasets and preprocessing)
from napari_4dstem_autoencoder.data.preprocess import PreprocessConfig, Preprocessor  # noqa: E402
task = ep.load_sim(ep.SIM_PATH) if a.data == "sim" else ep.load_sample(32)
x = ep.preprocess_all(task, Preprocessor.fit(task.dataset, PreprocessConfig(detector_bin=2)))
x = x.astype(np.float32); labels, core, k = task.labels, task.core, task.n_clusters
cfg = get_preset(a.preset)
for s in a.set:
    kk, v = s.split("="); cur = getattr(cfg, kk)
    cfg = cfg.replace(**{kk: type(cur)(v) if not isinstance(cur, str) else v})
m = Autoencoder(out_shape=x.shape[1:], config=cfg)
if a.wide:
    from napari_4dstem_autoencoder.model.blocks import ConvBN
    torch.manual_seed(a.seed + 1000)
    m.encoder.conv_final = ConvBN(64, a.wide)
    m.encoder.embedding.linear = torch.nn.Linear(16 * a.wide, 32)
    print("params", sum(p.numel() for p in m.parameters()))
if not a.final_relu: m.encoder.conv_final.relu = False
acts = {"relu": F.relu, "softplus": F.softplus, "none": lambda t: t, "leaky": lambda t: F.leaky_relu(t, 0.1), "elu1": lambda t: F.elu(t)+1}
act = acts[a.act]
mean_pat = torch.from_numpy(x.mean(0)).float()
if a.meanprior:
    class Prior(torch.nn.Module):
        def __init__(self, conv, mean):
            super().__init__(); self.conv = conv
            p = mean.clamp(1e-3, 1 - 1e-3); self.register_buffer("logit", torch.log(p / (1 - p))[None, None])
        def forward(self, t):
            return self.conv(t) + self.logit
    m.decoder.conv_final = Prior(m.decoder.conv_final, mean_pat)
    print("params", sum(p.numel() for p in m.parameters()))
if a.center:
    m.encoder.register_forward_pre_hook(lambda mod, inp: (inp[0] - mean_pat[None, None],))
m.encoder.embedding.forward = lambda t, L=m.encoder.embedding.linear: act(L(t))
opt = torch.optim.Adam(m.parameters(), a.lr)
X = torch.from_numpy(x).unsqueeze(1); hist = []
def rebn(n):
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    saved = [b.momentum for b in bns]
    for b in bns: b.reset_running_stats(); b.momentum = None
    idx = torch.from_numpy(np.random.default_rng(1).choice(len(X), n, replace=False))
    m.train()
    with torch.no_grad():
        for i in range(0, n, 64): m(X[idx[i:i+64]])
    for b, mo in zip(bns, saved): b.momentum = mo
def score(tag):
    if a.rebn: rebn(a.rebn)
    m.eval()
    with torch.inference_mode():
        z = torch.cat([m.embed(X[i:i+256]) for i in range(0, len(X), 256)]).numpy()
        ridx = torch.from_numpy(np.random.default_rng(0).choice(len(X), 256, replace=False)); r = m(X[ridx])
    m.train()
    mse = float(((r - X[ridx])**2).mean())
    out = {}
    zm = z.reshape(*labels.shape, -1)
    out["std"] = adjusted_rand(labels, cluster_embeddings(zm, k, seed=0, standardise=True))
    out["core"] = adjusted_rand(labels, cluster_embeddings(zm, k, seed=0, standardise=True), mask=core)
    out["raw"] = adjusted_rand(labels, cluster_embeddings(zm, k, seed=0, standardise=False))
    zc = z - z.mean(0)
    if np.abs(zc).max() > 0:
        p = PCA(min(10, z.shape[1]), whiten=False).fit_transform(zc)
        out["pca10"] = adjusted_rand(labels.ravel(), KMeans(k, n_init=10, random_state=0).fit_predict(p))
    sd = {k_: v.clone() for k_, v in m.state_dict().items()}
    with torch.no_grad():
        zt = torch.cat([m.embed(X[i:i+256]) for i in range(0, len(X), 256)]).numpy()
    m.load_state_dict(sd)
    out["trainbn"] = adjusted_rand(labels, cluster_embeddings(zt.reshape(*labels.shape, -1), k, seed=0, standardise=True))
    if hist: out["train_psnr"] = round(10*np.log10(1/np.mean(hist[-10:])), 1)
    out["live"] = live_dimensions(z); out["eff"] = round(effective_dimensions(z), 2)
    out["psnr"] = round(10*np.log10(1/mse), 1)
    print(a.tag, tag, {kk: (round(v, 3) if isinstance(v, float) else v) for kk, v in out.items()}, flush=True)
score("init")
marks = [float(v)*60 for v in a.marks.split(",")]
hist = []
rng = np.random.default_rng(a.seed); t_train = 0.0; seen = 0
while marks:
    perm = rng.permutation(len(X))
    for s in range(0, len(X) - a.bs + 1, a.bs):
        t = time.perf_counter()
        xb = X[perm[s:s+a.bs]]
        xh, z = m.encode_decode(xb)
        loss = m.compute_loss(xb, xh, z)["total"]
        opt.zero_grad(); loss.backward(); opt.step()
        hist.append(float(F.mse_loss(xh.detach(), xb)))
        t_train += time.perf_counter() - t; seen += a.bs
        if t_train >= marks[0]:
            score(f"{marks[0]/60:g}min ep{seen/len(X):.1f}")
            marks.pop(0)
            if not marks: break

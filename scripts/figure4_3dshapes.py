#!/usr/bin/env python
"""Figure 4 of Lachapelle et al. (ICML 2023): disentanglement from images by sparse meta-learning.

World: 3D Shapes (six factors: floor, wall and object hue, scale, shape, orientation).
Without ``--data-root`` the procedural stand-in of
:mod:`episodes.sources.shapes3d_procedural` (not the released dataset); with it,
``DATA_ROOT/3dshapes.h5`` read by :mod:`episodes.sources.shapes3d`.

Ground-truth factors ``z`` of a grid row: the factor values, jittered once per row by
``U(-z_noise * gap/2, z_noise * gap/2)`` (``gap`` = the factor's grid step; breaks the
grid, as in the paper's code) and standardised over the grid.  Rows are drawn with
probability ``p(row) ∝ N(z_row; 0, Sigma_rho)``, ``Sigma_rho = (1 - rho) I + rho 1 1^T``
(every pair of factors correlated by ``rho`` before the grid discretisation).

Tasks (all configurations see the same ones for a given seed and rho):

* regression: a random support ``S_t`` of ``support_size`` factors, ``W_t`` (6 x k)
  Gaussian on the rows ``S_t`` and zero elsewhere, ``y = z W_t + sigma_t eps``
  (``sigma_t = target_noise * std(z W_t)``);
* classification: ``y = argmax_c (z W_t)_c`` over ``n_classes`` classes, same supports,
  ``classification_support`` (50) support images per task instead of ``n_support`` (25);
  a task whose support misses a class (the heads need every class in the support) has its
  ``W_t`` redrawn from a generator of its own (the other tasks keep their draws).

A conv encoder ``f`` (64 or 32 pixels) with ``d = 6`` outputs, standardised over the
meta-batch, is trained on

    min_f  sum_t  || Y_t^query - f(X_t^query) W_t(f) - b_t(f) ||^2 / Var(Y_t^query),
    W_t(f) = argmin_W  1/(2n) ||Y_t^supp - f(X_t^supp) W - b||^2 + lam_t ||W||_{2,1}

(``group_lasso``: ``lam_t = lambda_ratio * lambda_max``, ``metasparse.solvers.group_lasso``
with implicit gradients) or with the inner ridge ``(lam/2) ||W||_F^2`` (``ridge``, closed
form); on classification tasks with the group-sparse SVM head
(``group_sparse_svm``, ``lambda_ratio``) and the same head at lambda = 0 (``svm``, the
vanilla multiclass SVM), outer cross-entropy.

Scores of ``f`` on ``n_eval`` images drawn uniformly from the grid (as the paper's code does): MCC (Pearson,
Hungarian matching) and DCI (Lasso importances) of the codes against ``z``
(:mod:`metasparse.metrics.disentanglement`); MIG, SAP, modularity and explicitness
(:mod:`metasparse.metrics.information`, 20 bins per code) against the factors' grid
indices (``z`` is the grid value jittered inside its own cell, so the index is ``z``
discretised exactly); mean and 95% interval over seeds
(``metasparse.metrics.accuracy.mean_t_ci``: Student t, ``None`` for one seed).

Outputs: ``OUT/figure4.json``::

    {"settings": {...}, "world": {...}, "results": {"<rho>": {"group_lasso": {"mcc_mean", "mcc_ci95",
     "n_seeds", "mcc_seeds", "dci_disentanglement_mean", ..., "mig_mean", "sap_mean", "modularity_mean",
     "explicitness_mean", ...}, "ridge": {...}, ...}}, "<rho>": {...same as results[<rho>]...}, "runtime_s": ...}

``OUT/figure4.png`` (MCC, DCI disentanglement, MIG, SAP, modularity and explicitness against rho) and
``OUT/figure4_traversal.png`` (for the sparse and the ridge encoder trained at the
largest rho, seed 0: for each learned feature, evaluation images ordered by its value).

    python scripts/figure4_3dshapes.py --out results/figure4 --quick        # 2 CPU cores
    python scripts/figure4_3dshapes.py --out results/figure4_full --device cuda   # GPU
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from episodes.atomic import atomic_write_bytes  # noqa: E402
from episodes.sources.shapes3d import FACTOR_NAMES, Shapes3DWorld, load_shapes3d  # noqa: E402
from episodes.sources.shapes3d_procedural import ProceduralShapes3D  # noqa: E402
from metasparse.metrics.accuracy import mean_t_ci  # noqa: E402
from metasparse.metrics.disentanglement import dci, match_factors  # noqa: E402
from metasparse.metrics.information import information_report  # noqa: E402
from metasparse.plots import save_figure  # noqa: E402
from metasparse.solvers.group_lasso import ridge_regression, solve_group_lasso  # noqa: E402

METHODS = ("group_lasso", "ridge", "group_sparse_svm", "svm")
LABELS = {"group_lasso": "inner group Lasso", "ridge": "inner ridge",
          "group_sparse_svm": "group-sparse SVM (classif.)", "svm": "SVM, lambda = 0 (classif.)"}


@dataclass
class Settings:
    """Everything that defines the world, the tasks and the training (the full GPU setting)."""

    rhos: Tuple[float, ...] = (0.0, 0.3, 0.6, 0.9)
    seeds: int = 5
    methods: Tuple[str, ...] = METHODS
    image_size: int = 64
    pool_size: int = 0               # grid rows the tasks draw from (0: the whole grid)
    z_noise: float = 1.0
    support_size: int = 3
    n_outputs: int = 3
    n_classes: int = 3
    target_noise: float = 0.1
    n_support: int = 25
    classification_support: int = 50   # support images of a classification task (its labels carry less)
    n_query: int = 25
    tasks_per_step: int = 8
    steps: int = 5000
    classification_steps: int = 5000
    lr: float = 2e-3
    widths: Tuple[int, ...] = (32, 32, 64, 64)
    hidden: int = 256
    lambda_ratio: float = 0.1
    ridge_lam: float = 0.1
    svm_lambda_ratio: float = 0.1
    n_eval: int = 4000
    inner_max_iter: int = 300
    inner_tol: float = 1e-5
    world_seed: int = 0


QUICK = dict(image_size=16, pool_size=16000, steps=400, classification_steps=600, n_eval=1500,
             widths=(16, 32, 32, 64), hidden=128, tasks_per_step=8, inner_max_iter=150)


# --------------------------------------------------------------------------- world
class FactorWorld:
    """A 3D-Shapes world prepared for the experiment: a pool of grid rows, their images
    (uint8, channels first, at ``image_size``) and ground-truth factors ``z`` (standardised)."""

    def __init__(self, world: Shapes3DWorld, settings: Settings, device="cpu", progress: bool = True):
        s = settings
        self.world, self.device = world, torch.device(device)
        rng = np.random.default_rng([s.world_seed, 4])
        n = len(world)
        rows = np.arange(n) if not s.pool_size or s.pool_size >= n else np.sort(rng.choice(n, s.pool_size, False))
        values = world.factor_array(rows)
        gaps = np.array([np.diff(v).min() if len(v) > 1 else 1.0 for v in world.factor_values])
        jitter = np.random.default_rng([s.world_seed, 5]).uniform(-0.5, 0.5, (n, len(gaps)))[rows]
        z = values + s.z_noise * gaps * jitter
        self.z = ((z - z.mean(0)) / z.std(0)).astype(np.float64)
        self.rows = rows
        self.images = self._load_images(rows, s.image_size, progress)
        self._probs: Dict[float, np.ndarray] = {}

    def _load_images(self, rows, size, progress) -> torch.Tensor:
        from tqdm import tqdm

        chunk = 8192
        source = self.world.images(rows)          # sorted rows: one read (a memory map for a procedural cache)
        out = torch.empty((len(rows), 3, size, size), dtype=torch.uint8)
        for start in tqdm(range(0, len(rows), chunk), desc="preparing images",
                          disable=True if (not progress or len(rows) <= chunk) else None, leave=False):
            block = torch.from_numpy(np.array(source[start:start + chunk])).permute(0, 3, 1, 2).float()
            if size != block.shape[-1]:
                block = F.interpolate(block, size=(size, size), mode="area")
            out[start:start + chunk] = block.round().clamp(0, 255).to(torch.uint8)
        return out.to(self.device)

    def probabilities(self, rho: float) -> np.ndarray:
        """p(row) ∝ N(z_row; 0, (1 - rho) I + rho 1 1^T) over the pool."""
        if rho not in self._probs:
            m = self.z.shape[1]
            cov = (1 - rho) * np.eye(m) + rho * np.ones((m, m))
            logp = -0.5 * np.einsum("ni,ij,nj->n", self.z, np.linalg.inv(cov), self.z)
            p = np.exp(logp - logp.max())
            self._probs[rho] = p / p.sum()
        return self._probs[rho]

    def sample(self, rho: float, shape, rng: np.random.Generator) -> np.ndarray:
        """Pool positions drawn from the rho distribution."""
        return rng.choice(len(self.rows), size=shape, p=self.probabilities(rho))

    def inputs(self, pos) -> torch.Tensor:
        pos = torch.as_tensor(np.asarray(pos), device=self.device)
        return self.images[pos.reshape(-1)].float().div_(255.0).reshape(*pos.shape, *self.images.shape[1:])

    def factors(self, pos) -> torch.Tensor:
        return torch.as_tensor(self.z[np.asarray(pos)], dtype=torch.float32, device=self.device)


def draw_tasks(fw: FactorWorld, s: Settings, rho: float, seed: int, step: int, task: str, stream: int = 0):
    """Positions (B, n) and targets of one meta-batch; a pure function of (seed, rho, stream, step)."""
    rng = np.random.default_rng([s.world_seed, seed, int(round(rho * 1000)), stream, step])
    b, n, m = s.tasks_per_step, support_images(s, task) + s.n_query, fw.z.shape[1]
    pos = fw.sample(rho, (b, n), rng)
    z = fw.z[pos]                                                         # (B, n, m)
    k = s.n_classes if task == "classification" else s.n_outputs
    support = np.zeros((b, m), bool)
    for t in range(b):
        support[t, rng.choice(m, s.support_size, replace=False)] = True
    w = rng.standard_normal((b, m, k)) * support[:, :, None]
    zw = np.einsum("bnm,bmk->bnk", z, w)
    if task == "classification":
        labels = zw.argmax(-1)
        ns = support_images(s, task)
        for t in range(b):   # a class without a support image cannot be learned: redraw that task's weights
            for attempt in range(1, 1001):
                if len(np.unique(labels[t, :ns])) == k:
                    break
                redraw = np.random.default_rng([s.world_seed, seed, int(round(rho * 1000)), stream, step, t, attempt])
                w[t] = redraw.standard_normal((m, k)) * support[t, :, None]
                labels[t] = (z[t] @ w[t]).argmax(-1)
            else:
                raise RuntimeError(f"step {step}, task {t}: no draw of the task's weights puts each of the {k} "
                                   f"classes in its {ns} support images; raise --classification-support")
        y = torch.as_tensor(labels, device=fw.device)
    else:
        sigma = s.target_noise * zw.std(1, keepdims=True)
        y = torch.as_tensor(zw + sigma * rng.standard_normal(zw.shape), dtype=torch.float32, device=fw.device)
    return pos, y, support


# --------------------------------------------------------------------------- model
class ConvEncoder(nn.Module):
    """Four strided convolutions (kernel 4, 4, 2, 2; stride 2) + ReLU, two linear layers
    (the paper's 3D Shapes encoder, widths configurable), ``d`` outputs."""

    def __init__(self, image_size: int, widths: Sequence[int], hidden: int, d: int):
        super().__init__()
        layers, c = [], 3
        for w, k in zip(widths, (4, 4, 2, 2)):
            layers += [nn.Conv2d(c, w, k, stride=2, padding=(1 if k == 4 else 0)), nn.ReLU()]
            c = w
        self.conv = nn.Sequential(*layers)
        side = image_size // 16
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, hidden), nn.ReLU(), nn.Linear(hidden, d))

    def forward(self, x):
        return self.head(self.conv(x))


def standardise(f: torch.Tensor) -> torch.Tensor:
    """Features standardised over all examples of the meta-batch (the paper's batch norm
    without affine parameters): the inner penalty cannot be shrunk by scaling f."""
    flat = f.reshape(-1, f.shape[-1])
    return ((flat - flat.mean(0)) / (flat.std(0) + 1e-5)).reshape(f.shape)


def support_images(s: Settings, task: str) -> int:
    """Support images per task: ``classification_support`` for classification tasks
    (a label says less about the factors than a regression target), else ``n_support``."""
    return s.classification_support if task == "classification" else s.n_support


def task_kind(method: str) -> str:
    return "classification" if method in ("group_sparse_svm", "svm") else "regression"


class Inner:
    """The inner problem of one method and its outer loss."""

    def __init__(self, method: str, s: Settings):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method, self.s = method, s
        self.head = None
        if task_kind(method) == "classification":
            from metasparse.heads import GroupSparseSVMHead
            self.head = GroupSparseSVMHead(lambda_ratio=s.svm_lambda_ratio if method == "group_sparse_svm" else 0.0)

    def parameters(self):
        return [] if self.head is None else list(self.head.parameters())

    def loss(self, fs, ys, fq, yq) -> Tuple[torch.Tensor, torch.Tensor]:
        """Outer loss and the (B, d) mask of the features each task's predictor uses."""
        s = self.s
        if self.head is None:
            if self.method == "group_lasso":
                sol = solve_group_lasso(fs, ys, lambda_ratio=s.lambda_ratio, max_iter=s.inner_max_iter, tol=s.inner_tol)
            else:
                sol = ridge_regression(fs, ys, s.ridge_lam)
            err = ((sol.predict(fq) - yq) ** 2).mean((1, 2)) / yq.var(1).mean(-1).clamp_min(1e-8)
            return err.mean(), sol.active
        out = self.head.predict(fq, fs, ys, s.n_classes)
        return F.cross_entropy(out.logits.reshape(-1, s.n_classes), yq.reshape(-1)), out.fit.active


# --------------------------------------------------------------------------- train / score
def eval_positions(fw: FactorWorld, s: Settings) -> np.ndarray:
    """``n_eval`` pool positions drawn uniformly: the scores are measured on the whole grid,
    out of the training distribution (as in the paper's code), so that correlated factors
    do not inflate the MCC of an entangled representation."""
    n = len(fw.rows)
    return np.random.default_rng([s.world_seed, 77]).choice(n, min(s.n_eval, n), replace=False)


@torch.no_grad()
def codes_of(encoder: nn.Module, fw: FactorWorld, pos: np.ndarray, batch: int = 500) -> np.ndarray:
    encoder.eval()
    out = [encoder(fw.inputs(pos[i:i + batch])).double().cpu() for i in range(0, len(pos), batch)]
    encoder.train()
    return torch.cat(out).numpy()


def train_one(method: str, rho: float, seed: int, fw: FactorWorld, s: Settings, progress: bool = True):
    """Train one encoder; returns (scores dict, encoder).  Same inputs -> same CPU numbers."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    encoder = ConvEncoder(s.image_size, s.widths, s.hidden, fw.z.shape[1]).to(fw.device)
    inner = Inner(method, s)
    if inner.head is not None:
        inner.head.to(fw.device)
    opt = torch.optim.Adam(list(encoder.parameters()) + inner.parameters(), lr=s.lr)
    kind = task_kind(method)
    steps = s.classification_steps if kind == "classification" else s.steps
    ns = support_images(s, kind)
    recent: List[float] = []
    used: List[float] = []
    start = time.time()
    bar = tqdm(range(steps), desc=f"rho={rho:g} seed={seed} {method}", disable=None if progress else True, leave=False)
    for step in bar:
        pos, y, _ = draw_tasks(fw, s, rho, seed, step, kind)
        x = fw.inputs(pos)
        f = standardise(encoder(x.reshape(-1, *x.shape[2:])).reshape(*pos.shape, -1))
        loss, active = inner.loss(f[:, :ns], y[:, :ns], f[:, ns:], y[:, ns:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        recent = (recent + [loss.item()])[-50:]
        used = (used + [float(active.float().sum(1).mean())])[-50:]
        if step % 25 == 0:
            bar.set_postfix(loss=f"{np.mean(recent):.3f}")
    seconds = time.time() - start
    pos = eval_positions(fw, s)
    codes, z = codes_of(encoder, fw, pos), fw.z[pos]
    match = match_factors(z, codes)
    d = dci(z, codes, seed=seed)
    info = information_report(fw.world.factor_indices(fw.rows[pos]), codes, discrete_factors=True, seed=seed)
    scores = {"mcc": match.mcc, "dci_disentanglement": d.disentanglement, "dci_completeness": d.completeness,
              "dci_informativeness": d.informativeness, **info, "train_loss_last50": float(np.mean(recent)),
              "used_features_last50": float(np.mean(used)), "train_seconds": seconds,
              "matching": {FACTOR_NAMES[i]: int(j) for i, j in zip(match.factor_index, match.code_index)}}
    return scores, encoder


METRICS = ("mcc", "dci_disentanglement", "dci_completeness", "dci_informativeness", "mig", "sap", "modularity",
           "explicitness")
PANELS = (("mcc", "MCC"), ("dci_disentanglement", "DCI disentanglement"), ("mig", "MIG"), ("sap", "SAP"),
          ("modularity", "modularity"), ("explicitness", "explicitness (ROC-AUC)"))


def summarise(records: List[Dict]) -> Dict:
    out = {"n_seeds": len(records)}
    for key in METRICS:
        vals = [r[key] for r in records]
        out[f"{key}_mean"] = float(np.mean(vals))
        out[f"{key}_ci95"] = mean_t_ci(vals)
        out[f"{key}_seeds"] = [float(v) for v in vals]
    out["used_features_mean"] = float(np.mean([r["used_features_last50"] for r in records]))
    out["train_seconds_mean"] = float(np.mean([r["train_seconds"] for r in records]))
    return out


_FW: Optional[FactorWorld] = None          # the world of the worker processes (inherited by fork)


def _job(args):
    method, rho, seed, s, progress, keep, threads = args
    torch.set_num_threads(threads)
    scores, encoder = train_one(method, rho, seed, _FW, s, progress)
    return scores, ({k: v.cpu() for k, v in encoder.state_dict().items()} if keep else None)


def run(s: Settings, fw: FactorWorld, progress: bool = True, workers: int = 1,
        traversal_rho: Optional[float] = None) -> Tuple[Dict, Dict]:
    """All (rho, method, seed) runs, in ``workers`` processes (forked, one torch thread each;
    the numbers do not depend on ``workers``); returns (results by rho, the encoders kept
    for the traversal: sparse and ridge at ``traversal_rho`` (default the largest rho), seed 0)."""
    global _FW
    from tqdm import tqdm

    jobs = [(rho, method, seed) for rho in s.rhos for method in s.methods for seed in range(s.seeds)]
    t_rho = max(s.rhos) if traversal_rho is None else traversal_rho
    keep = [rho == t_rho and seed == 0 and method in ("group_lasso", "ridge") for rho, method, seed in jobs]
    threads = torch.get_num_threads()
    args = [(m, rho, seed, s, progress and workers == 1, k, threads) for (rho, m, seed), k in zip(jobs, keep)]
    _FW = fw
    try:
        if workers > 1 and fw.device.type == "cpu":
            import multiprocessing as mp
            with mp.get_context("fork").Pool(workers) as pool:
                outs = list(tqdm(pool.imap(_job, args), total=len(args), desc="figure 4 runs", disable=None if progress else True))
        else:
            outs = [_job(a) for a in tqdm(args, desc="figure 4 runs", disable=None if progress else True)]
    finally:
        _FW = None
    records: Dict[Tuple[float, str], List[Dict]] = {}
    encoders: Dict[str, nn.Module] = {}
    for (rho, method, seed), (scores, state) in zip(jobs, outs):
        records.setdefault((rho, method), []).append(scores)
        if state is not None:
            enc = ConvEncoder(s.image_size, s.widths, s.hidden, fw.z.shape[1]).to(fw.device)
            enc.load_state_dict(state)
            encoders[method] = enc
    results = {f"{rho:g}": {m: summarise(records[(rho, m)]) for m in s.methods} for rho in s.rhos}
    return results, encoders


# --------------------------------------------------------------------------- plots
def plot_figure4(result: Dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = result["results"]
    rhos = sorted(res, key=float)
    methods = [m for m in METHODS if m in res[rhos[0]]]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2))
    axes = axes.ravel()
    style = {"group_lasso": ("tab:blue", "o-"), "ridge": ("tab:orange", "s--"),
             "group_sparse_svm": ("tab:green", "^-"), "svm": ("tab:red", "v--")}
    for ax, (key, label) in zip(axes, PANELS):
        for i, m in enumerate(methods):
            if f"{key}_mean" not in res[rhos[0]][m]:         # a figure4.json written before the metric existed
                continue
            color, fmt = style[m]
            xs = np.array([float(r) for r in rhos]) + (i - (len(methods) - 1) / 2) * 0.008
            ax.errorbar(xs, [res[r][m][f"{key}_mean"] for r in rhos],
                        yerr=[res[r][m][f"{key}_ci95"] or 0.0 for r in rhos], fmt=fmt, color=color, capsize=3,
                        label=LABELS[m])
        ax.set_xlabel("correlation between factors rho")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    n = res[rhos[0]][methods[0]]["n_seeds"]
    world = result["world"]["name"]
    axes[0].set_title(f"{world}: mean, 95% CI over {n} seeds" if n > 1 else f"{world}: 1 seed", fontsize=9)
    axes[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)


def plot_traversal(encoders: Dict[str, nn.Module], fw: FactorWorld, s: Settings, rho: float, path: Path,
                   columns: int = 9) -> None:
    """For each learned feature (rows), evaluation images at evenly spaced quantiles of its
    value (columns, low to high); sparse and ridge encoders side by side.  Row labels: the
    factor matched to the feature and |corr|."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = eval_positions(fw, s)
    z = fw.z[pos]
    names = [m for m in ("group_lasso", "ridge") if m in encoders]
    d = fw.z.shape[1]
    fig, axes = plt.subplots(d, len(names), figsize=(5.2 * len(names), 0.75 * d + 0.8), squeeze=False)
    for col, m in enumerate(names):
        codes = codes_of(encoders[m], fw, pos)
        match = match_factors(z, codes)
        factor_of = {int(c): int(f) for f, c in zip(match.factor_index, match.code_index)}
        order = sorted(range(d), key=lambda j: factor_of.get(j, d))
        for row, j in enumerate(order):
            ranked = np.argsort(codes[:, j], kind="stable")
            picks = ranked[np.linspace(0, len(ranked) - 1, columns).round().astype(int)]
            strip = fw.images[torch.as_tensor(pos[picks], device=fw.device)].cpu().permute(0, 2, 3, 1).numpy()
            ax = axes[row][col]
            ax.imshow(np.concatenate(list(strip), axis=1))
            ax.set_xticks([])
            ax.set_yticks([])
            f = factor_of.get(j)
            label = f"f{j}: {FACTOR_NAMES[f]}\n|r| = {match.corr[f, j]:.2f}" if f is not None else f"f{j}"
            ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
        axes[0][col].set_title(f"{LABELS[m]} encoder (MCC {match.mcc:.2f})\nimages ordered by each learned feature",
                               fontsize=9)
    fig.suptitle(f"latent traversal, rho = {rho:g}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--quick", action="store_true", help="reduced CPU setting (16 px, 16000-row pool, 400 / 600 steps)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per (rho, method) (default 5)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding the released 3dshapes.h5 (default: the procedural stand-in)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the procedural images are cached (default ~/.cache/metasparse/shapes3d)")
    p.add_argument("--rhos", type=float, nargs="+", default=None, help="correlations (default 0 0.3 0.6 0.9)")
    p.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    p.add_argument("--steps", type=int, default=None, help="outer steps per regression run")
    p.add_argument("--classification-steps", type=int, default=None, help="outer steps per classification run")
    p.add_argument("--pool-size", type=int, default=None, help="grid rows the tasks draw from (0: all)")
    p.add_argument("--image-size", type=int, default=None, choices=[16, 32, 64])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (1: best on a shared machine)")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel (CPU: forked processes)")
    p.add_argument("--traversal-rho", type=float, default=None,
                   help="rho of the encoders drawn in figure4_traversal.png (default: the largest)")
    p.add_argument("--traversal-only", action="store_true",
                   help="only train the two seed-0 encoders at --traversal-rho and redraw figure4_traversal.png")
    p.add_argument("--support-size", type=int, default=None, help="factors per task")
    p.add_argument("--n-outputs", type=int, default=None, help="regression outputs per task")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--lambda-ratio", type=float, default=None, help="inner group-Lasso lambda / lambda_max")
    p.add_argument("--ridge-lam", type=float, default=None, help="inner ridge lambda")
    p.add_argument("--svm-lambda-ratio", type=float, default=None,
                   help="lambda / lambda_max of the group-sparse SVM head (classification)")
    p.add_argument("--n-classes", type=int, default=None, help="classes per classification task")
    p.add_argument("--classification-support", type=int, default=None,
                   help="support images per classification task (default 50)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    s = Settings(**(QUICK if a.quick else {}))
    over = {"seeds": a.seeds, "steps": a.steps, "classification_steps": a.classification_steps,
            "pool_size": a.pool_size, "image_size": a.image_size, "support_size": a.support_size,
            "n_outputs": a.n_outputs, "lr": a.lr, "lambda_ratio": a.lambda_ratio, "ridge_lam": a.ridge_lam,
            "svm_lambda_ratio": a.svm_lambda_ratio, "n_classes": a.n_classes,
            "classification_support": a.classification_support}
    s = replace(s, **{k: v for k, v in over.items() if v is not None})
    if a.rhos is not None:
        s = replace(s, rhos=tuple(a.rhos))
    if a.methods is not None:
        s = replace(s, methods=tuple(dict.fromkeys(a.methods)))
    if s.seeds < 1 or s.steps < 1 or s.classification_steps < 1 or s.pool_size < 0:
        p.error("--seeds, --steps and --classification-steps must be >= 1 and --pool-size >= 0")
    if any(not 0 <= r < 1 for r in s.rhos):
        p.error(f"--rhos must be in [0, 1), got {list(s.rhos)}")
    if a.traversal_rho is not None and a.traversal_rho not in s.rhos:
        p.error(f"--traversal-rho must be one of --rhos {list(s.rhos)}, got {a.traversal_rho}")
    if a.traversal_only and a.traversal_rho is None:
        p.error("--traversal-only needs --traversal-rho")
    if s.classification_support < s.n_classes:
        p.error(f"--classification-support must be >= --n-classes, got {s.classification_support}")
    if not 0 < s.svm_lambda_ratio < 1 or s.n_classes < 2:
        p.error(f"--svm-lambda-ratio must be in (0, 1) and --n-classes >= 2, got {s.svm_lambda_ratio}, {s.n_classes}")
    if not 1 <= s.support_size <= 6 or s.n_outputs < 1:
        p.error(f"--support-size must be in 1..6 and --n-outputs >= 1, got {s.support_size}, {s.n_outputs}")
    return a, s


def make_world(a) -> Shapes3DWorld:
    if a.data_root is not None:
        return load_shapes3d(a.data_root)
    cache = a.cache_dir if a.cache_dir is not None else Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "metasparse" / "shapes3d"
    return ProceduralShapes3D(cache_dir=cache, progress=not a.no_progress)


def experiment(s: Settings, world: Shapes3DWorld, out: Path, device="cpu", progress: bool = True,
               workers: int = 1, traversal_rho: Optional[float] = None) -> Dict:
    """Run everything and write OUT/figure4.json, figure4.png, figure4_traversal.png."""
    start = time.time()
    t_rho = max(s.rhos) if traversal_rho is None else traversal_rho
    fw = FactorWorld(world, s, device, progress)
    results, encoders = run(s, fw, progress, workers, t_rho)
    result = {"settings": asdict(s),
              "world": {"name": world.name, "procedural": bool(world.procedural), "grid": list(world.factor_sizes),
                        "pool": int(len(fw.rows)), "factors": list(FACTOR_NAMES)},
              "results": results, **results, "runtime_s": time.time() - start}
    atomic_write_bytes(out / "figure4.json", json.dumps(result, indent=1).encode())
    plot_figure4(result, out / "figure4.png")
    if encoders:
        plot_traversal(encoders, fw, s, t_rho, out / "figure4_traversal.png")
    return result


def traversal_only(s: Settings, world: Shapes3DWorld, out: Path, rho: float, device="cpu", progress: bool = True,
                   workers: int = 1) -> None:
    """Train the sparse and the ridge encoder at ``rho``, seed 0 (the same runs as in the
    full experiment) and write only OUT/figure4_traversal.png."""
    s1 = replace(s, rhos=(rho,), seeds=1, methods=("group_lasso", "ridge"))
    fw = FactorWorld(world, s1, device, progress)
    _, encoders = run(s1, fw, progress, workers, rho)
    plot_traversal(encoders, fw, s1, rho, out / "figure4_traversal.png")


def _mean_ci(rec: Dict, key: str) -> str:
    ci = rec[f"{key}_ci95"]
    return f"{rec[f'{key}_mean']:.3f}" + ("" if ci is None else f" ± {ci:.3f}")


def print_table(result: Dict) -> None:
    """One line per (rho, method): every score's mean ± 95% half-width over seeds."""
    res = result["results"]
    print(f"{'rho':<5} {'method':<17}" + "".join(f"{label.split(' (')[0]:>21}" for _, label in PANELS))
    for rho, row in res.items():
        for m, rec in row.items():
            print(f"{rho:<5} {m:<17}" + "".join(f"{_mean_ci(rec, key):>21}" for key, _ in PANELS))


def main(argv=None) -> Optional[Dict]:
    a, s = parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    try:
        world = make_world(a)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if a.traversal_only:
        traversal_only(s, world, a.out, a.traversal_rho, a.device, not a.no_progress, max(1, a.workers))
        print(f"wrote {a.out / 'figure4_traversal.png'}")
        return None
    result = experiment(s, world, a.out, a.device, progress=not a.no_progress, workers=max(1, a.workers),
                        traversal_rho=a.traversal_rho)
    print_table(result)
    print(f"wrote {a.out / 'figure4.json'}, {a.out / 'figure4.png'} ({result['runtime_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()

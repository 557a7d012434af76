#!/usr/bin/env python
"""Identifiability by sparse multi-task learning (Problem 4 of Lachapelle et al., ICML 2023).

Ground truth: ``z ~ N(0, I_m)``, ``x = g(z)`` with ``g`` a random invertible MLP; task
``t`` has a support ``S_t`` of ``l`` factors and ``y = W_t z + noise`` with ``W_t``
(k x m) Gaussian on the columns ``S_t``.  An MLP encoder ``f`` is trained on a stream
of such tasks with the bilevel objective

    min_f  sum_t  || Y_t^query - f(X_t^query) W_t(f) - b_t(f) ||^2 / Var(Y),
    W_t(f) = argmin_W  1/(2n) ||Y_t^supp - f(X_t^supp) W - b||^2 + lam_t ||W||_{2,1}

(inner group-Lasso, ``lam_t = lambda_ratio * lambda_max(task)``, solved by
``metasparse.solvers.group_lasso`` with implicit gradients), or with an inner ridge
``(lam/2)||W||_F^2`` (closed form) as the control.  Features are standardised over
the meta-batch before the inner problem (otherwise the encoder could shrink the
penalty by scaling features up).  Every configuration sees the same tasks.

Supports: ``random`` (uniform l-subsets: Assumption 7 holds) or ``blocks`` (unions of
blocks of a fixed partition: features in a block always co-occur, Assumption 7
fails, the theory only identifies the blocks).

Classification variant (``--classification``): ``y = argmax(W_t z)`` over k classes,
inner head = ``metasparse.heads.GroupSparseSVMHead`` (group-sparse multiclass SVM)
against the same head at lambda = 0 (vanilla SVM-CS), outer cross-entropy.

Scores of the learned representation ``f(g(z))`` against ``z`` on fresh samples:
MCC (Pearson and Spearman), linear R^2, DCI (Lasso importances), MIG, SAP, modularity
and explicitness (:mod:`metasparse.metrics.information`; ``z`` and the codes cut into 20
equal-width bins, SAP's single-code fits on the continuous ``z``), block R^2 (is ``z``
recovered up to mixing inside the blocks of the ``blocks`` partition?), and, on fresh
tasks, the features each task's inner predictor uses (count, and precision / recall
against the true support after matching learned features to factors).

Seeds (``--seeds N``, default 5): seed ``s = --seed + i`` draws its own world ``g``, its own
task stream, evaluation data and encoder initialisation; every configuration is trained
once per seed.  Each configuration's record holds the mean over seeds of every score
(``mcc`` is the mean MCC), the per-seed MCCs ``mcc_seeds`` and the half-width of the
95% confidence interval of the mean, ``mcc_ci95 = t_{0.975, N-1} * sd / sqrt(N)``
(Student t, ``metasparse.metrics.accuracy.mean_t_ci``; ``None`` for one seed), likewise
``r2``, ``mig``, ``sap``, ``modularity`` and ``explicitness`` (``<key>_seeds`` /
``<key>_ci95``), and the per-seed records in ``per_seed``.

Output: ``OUT/identifiability.json`` (settings, baselines, one record per
configuration) and PNGs ``identifiability_mcc.png`` (means with 95% intervals),
``identifiability_training.png``, ``identifiability_supports.png``.

    python scripts/identifiability.py --out results/identifiability --seeds 5 --workers 2
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from episodes.sources.synthetic import (Mixing, SparseTasks, make_mixing, sample_sparse_tasks,  # noqa: E402
                                        satisfies_assumption7)
from metasparse.backbones import build_backbone  # noqa: E402
from metasparse.engine.checkpoint import atomic_write_bytes as atomic_write  # noqa: E402
from metasparse.plots import save_figure  # noqa: E402
from metasparse.metrics.accuracy import mean_t_ci  # noqa: E402
from metasparse.metrics.disentanglement import dci, linear_r2, match_factors  # noqa: E402
from metasparse.metrics.information import information_report  # noqa: E402
from metasparse.solvers.group_lasso import ridge_regression, solve_group_lasso  # noqa: E402

SUPPORT_KINDS = ("random", "blocks")


@dataclass
class Settings:
    """Everything that defines the data and the training (shared by all configurations)."""

    n_factors: int = 10
    support_size: int = 4
    block_size: int = 2
    n_outputs: int = 3
    n_classes: int = 3
    mixing: str = "mlp"
    noise_std: float = 0.1
    n_support: int = 50
    n_query: int = 50
    tasks_per_step: int = 32
    steps: int = 2000
    classification_steps: int = 500
    lr: float = 1e-3
    hidden: Sequence[int] = (128, 128)
    n_eval: int = 2000
    n_eval_tasks: int = 256
    n_checkpoints: int = 8
    inner_max_iter: int = 300
    inner_tol: float = 1e-5
    seed: int = 0


@dataclass
class Config:
    """One trained encoder: the inner solver, its regularisation and the support kind."""

    inner: str                 # group_lasso | ridge | group_sparse_svm
    reg: float                 # lambda_ratio (group_lasso, svm) or lam (ridge)
    supports: str = "random"   # random | blocks
    task: str = "regression"   # regression | classification

    @property
    def reg_name(self) -> str:
        return "lam" if self.inner == "ridge" else "lambda_ratio"

    @property
    def name(self) -> str:
        return f"{self.task}/{self.inner}/{self.reg_name}={self.reg:g}/{self.supports}"


# --------------------------------------------------------------------------- helpers


def make_world(settings: Settings) -> Mixing:
    return make_mixing(settings.mixing, settings.n_factors, seed=np.random.default_rng([settings.seed, 11]))


def draw_tasks(settings: Settings, mixing: Mixing, supports: str, task: str, n_tasks: int, stream: int, step: int):
    """Tasks of training step ``step`` (stream 0) or of the evaluation set (stream 1):
    a pure function of (seed, stream, step, support kind) so every configuration sees the same data."""
    if supports not in SUPPORT_KINDS:
        raise ValueError(f"supports must be one of {SUPPORT_KINDS}, got {supports!r}")
    block = settings.block_size if supports == "blocks" else 1
    k = settings.n_classes if task == "classification" else settings.n_outputs

    def draw(n: int, *key: int) -> SparseTasks:
        return sample_sparse_tasks(n, settings.n_support + settings.n_query, n_factors=settings.n_factors,
                                   support_size=settings.support_size, block_size=block, n_outputs=k, mixing=mixing,
                                   noise_std=settings.noise_std, task=task,
                                   seed=np.random.default_rng([settings.seed, stream, step,
                                                               SUPPORT_KINDS.index(supports), *key]))
    tasks = draw(n_tasks)
    if task == "classification":   # the heads need every class in the support: such a task is drawn again
        for t in range(n_tasks):
            for attempt in range(1, 1001):
                if len(torch.unique(tasks.y[t, :settings.n_support])) == k:
                    break
                new = draw(1, t, attempt)
                for name in ("x", "z", "y", "weights", "supports"):
                    getattr(tasks, name)[t] = getattr(new, name)[0]
            else:
                raise RuntimeError(f"no draw of task {t} puts each of the {k} classes in its {settings.n_support} "
                                   f"support examples; raise --n-support")
    return tasks


def encode(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Encoder features standardised over all examples of the meta-batch: (..., D) -> (..., d)."""
    f = encoder(x.reshape(-1, x.shape[-1]))
    f = (f - f.mean(0)) / (f.std(0) + 1e-5)
    return f.reshape(*x.shape[:-1], f.shape[-1])


def build_svm_head(reg: float):
    """The group-sparse SVM head (lambda_ratio = reg; 0 = vanilla SVM-CS)."""
    from metasparse.heads import GroupSparseSVMHead
    # lambda2 = 1: the value RESULTS.md's numbers were produced with (the head's default is now 10)
    return GroupSparseSVMHead(lambda_ratio=reg, lambda2=1.0)


class InnerProblem:
    """Inner solver of one configuration: ``fit(support feats, support targets)`` and the outer loss."""

    def __init__(self, cfg: Config, settings: Settings):
        self.cfg, self.settings = cfg, settings
        self.head = build_svm_head(cfg.reg) if cfg.inner == "group_sparse_svm" else None
        if cfg.inner not in ("group_lasso", "ridge", "group_sparse_svm"):
            raise ValueError(f"inner must be group_lasso, ridge or group_sparse_svm, got {cfg.inner!r}")

    def parameters(self):
        return [] if self.head is None else list(self.head.parameters())

    def outer_loss(self, fs, ys, fq, yq):
        """Held-out loss and the (B, d) used-feature mask of the inner predictors."""
        s = self.settings
        if self.cfg.task == "regression":
            if self.cfg.inner == "group_lasso":
                sol = solve_group_lasso(fs, ys, lambda_ratio=self.cfg.reg, max_iter=s.inner_max_iter,
                                        tol=s.inner_tol)
            else:
                sol = ridge_regression(fs, ys, self.cfg.reg)
            return ((sol.predict(fq) - yq) ** 2).mean() / yq.var().clamp_min(1e-8), sol.active
        out = self.head.predict(fq, fs, ys, s.n_classes)
        loss = F.cross_entropy(out.logits.reshape(-1, s.n_classes), yq.reshape(-1))
        return loss, out.fit.active


# --------------------------------------------------------------------------- evaluation
def block_r2(z: np.ndarray, codes: np.ndarray, block_size: int, seed: int) -> float:
    """Identifiability up to mixing *within* blocks: for each block ``B`` of
    ``block_size`` consecutive factors (the partition of the ``blocks`` supports), the
    held-out R^2 of ``z_B`` regressed on the codes matched to ``B`` only (Hungarian
    matching of the MCC), averaged over blocks.  ~1 when the representation equals
    the ground truth up to permutation of blocks and invertible maps inside them."""
    match = match_factors(z, codes)
    code_of = dict(zip(match.factor_index.tolist(), match.code_index.tolist()))
    m = z.shape[1]
    scores = []
    for start in range(0, m - m % block_size, block_size):
        block = list(range(start, start + block_size))
        cols = [code_of[j] for j in block if j in code_of]
        scores.append(linear_r2(z[:, block], codes[:, cols], seed=seed) if cols else 0.0)
    return float(np.mean(scores))


def representation_scores(encoder: torch.nn.Module, z: np.ndarray, x: torch.Tensor, seed: int,
                          full: bool = True, block_size: int = 2) -> Dict:
    """MCC / R^2 (and Spearman MCC, block R^2, DCI, MIG, SAP, modularity, explicitness when
    ``full``) of ``encoder(x)`` against ``z``."""
    with torch.no_grad():
        codes = encoder(x).double().numpy()
    match = match_factors(z, codes)
    out = {"mcc": match.mcc, "r2": linear_r2(z, codes, seed=seed)}
    if full:
        out["mcc_spearman"] = match_factors(z, codes, "spearman").mcc
        out["block_r2"] = block_r2(z, codes, block_size, seed)
        d = dci(z, codes, seed=seed)
        out["dci"] = {"disentanglement": d.disentanglement, "completeness": d.completeness,
                      "informativeness": d.informativeness}
        out.update(information_report(z, codes, discrete_factors=False, seed=seed))
    return out


def support_usage(encoder, inner: InnerProblem, cfg: Config, settings: Settings, mixing: Mixing,
                  z: np.ndarray, x: torch.Tensor) -> Dict:
    """Which features the inner predictors use on fresh tasks, against the true supports
    (learned feature -> factor through the MCC matching)."""
    tasks = draw_tasks(settings, mixing, cfg.supports, cfg.task, settings.n_eval_tasks, stream=1, step=0)
    with torch.no_grad():
        codes = encoder(x).double().numpy()
    match = match_factors(z, codes)
    code_to_factor = np.full(codes.shape[1], -1)
    code_to_factor[match.code_index] = match.factor_index
    ns = settings.n_support
    with torch.no_grad():
        feats = encode(encoder, tasks.x)
        loss, active = inner.outer_loss(feats[:, :ns], tasks.y[:, :ns], feats[:, ns:], tasks.y[:, ns:])
    active = active.cpu().numpy().astype(bool)
    true = tasks.supports.numpy()
    used_as_factor = np.zeros_like(true)
    for t in range(len(active)):
        idx = code_to_factor[active[t]]
        used_as_factor[t, idx[idx >= 0]] = True
    hits = (used_as_factor & true).sum(1)
    n_used = active.sum(1)
    return {
        "query_loss": float(loss),
        "used_features_mean": float(n_used.mean()),
        "true_support_size": int(settings.support_size),
        "support_precision": float(np.mean(hits / np.maximum(n_used, 1))),
        "support_recall": float(np.mean(hits / true.sum(1))),
        "assumption7": bool(satisfies_assumption7(true, settings.n_factors)),
        "example_true_supports": true[:20].astype(int).tolist(),
        "example_used_factors": used_as_factor[:20].astype(int).tolist(),
    }


def eval_data(settings: Settings, mixing: Mixing):
    z = np.random.default_rng([settings.seed, 99]).standard_normal((settings.n_eval, settings.n_factors))
    return z, torch.as_tensor(mixing.g(z), dtype=torch.float32)


# --------------------------------------------------------------------------- training
def train_config(cfg: Config, settings: Settings, mixing: Mixing, progress: bool = True) -> Dict:
    """Train one encoder for ``cfg`` and score it.  Same seed -> same numbers."""
    from tqdm import tqdm

    torch.manual_seed(settings.seed)
    encoder = build_backbone("mlp", in_dim=settings.n_factors, out_dim=settings.n_factors,
                             hidden=tuple(settings.hidden))
    inner = InnerProblem(cfg, settings)
    opt = torch.optim.Adam(list(encoder.parameters()) + inner.parameters(), lr=settings.lr)
    z_eval, x_eval = eval_data(settings, mixing)
    ns = settings.n_support
    n_steps = settings.classification_steps if cfg.task == "classification" else settings.steps
    checkpoints = set(np.linspace(0, n_steps, settings.n_checkpoints + 1).astype(int).tolist())
    history: List[Dict] = []
    start = time.time()
    bar = tqdm(range(n_steps), desc=cfg.name, disable=None if progress else True, leave=False)
    recent: List[float] = []
    for step in bar:
        if step in checkpoints:
            history.append({"step": step, **representation_scores(encoder, z_eval, x_eval, settings.seed, False)})
        tasks = draw_tasks(settings, mixing, cfg.supports, cfg.task, settings.tasks_per_step, stream=0, step=step)
        feats = encode(encoder, tasks.x)
        loss, _ = inner.outer_loss(feats[:, :ns], tasks.y[:, :ns], feats[:, ns:], tasks.y[:, ns:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        recent = (recent + [loss.item()])[-50:]
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(recent):.4f}")
    seconds = time.time() - start
    scores = representation_scores(encoder, z_eval, x_eval, settings.seed, True, settings.block_size)
    history.append({"step": n_steps, "mcc": scores["mcc"], "r2": scores["r2"]})
    usage = support_usage(encoder, inner, cfg, settings, mixing, z_eval, x_eval)
    return {"name": cfg.name, "task": cfg.task, "inner": cfg.inner,
            "regularization": {"name": cfg.reg_name, "value": cfg.reg}, "supports": cfg.supports,
            **scores, **usage, "train_loss_last50": float(np.mean(recent)), "train_seconds": seconds,
            "history": history}


def baselines(settings: Settings, mixing: Mixing) -> Dict:
    """Scores of the observations x themselves and of the untrained encoder."""
    z, x = eval_data(settings, mixing)
    torch.manual_seed(settings.seed)
    encoder = build_backbone("mlp", in_dim=settings.n_factors, out_dim=settings.n_factors,
                             hidden=tuple(settings.hidden))
    return {"observations_x": representation_scores(torch.nn.Identity(), z, x, settings.seed, True,
                                                    settings.block_size),
            "untrained_encoder": representation_scores(encoder, z, x, settings.seed, True, settings.block_size)}


def heads_available() -> Optional[str]:
    """None if the group-sparse SVM head can be imported, else the reason."""
    try:
        build_svm_head(0.1)
    except Exception as e:  # noqa: BLE001 - reported in the JSON
        return f"{type(e).__name__}: {e}"
    return None


def default_configs(lasso_ratios, ridge_lams, supports, svm_ratios, classification) -> List[Config]:
    configs = []
    for kind in supports:
        configs += [Config("group_lasso", r, kind) for r in lasso_ratios]
        configs += [Config("ridge", r, kind) for r in ridge_lams]
    if classification:
        for kind in supports:
            configs += [Config("group_sparse_svm", r, kind, "classification") for r in svm_ratios]
    return configs


INFO_KEYS = ("mig", "sap", "modularity", "explicitness")
_MEAN_KEYS = ("mcc", "r2", "mcc_spearman", "block_r2", *INFO_KEYS, "used_features_mean", "support_precision",
              "support_recall", "query_loss", "train_loss_last50", "train_seconds")


def aggregate(records: Sequence[Dict]) -> Dict:
    """One configuration over seeds: means of the scores, ``<key>_seeds`` / ``<key>_ci95``
    for MCC, R^2, MIG, SAP, modularity and explicitness, the mean training curve, the
    per-seed records and the support examples of the first seed."""
    first = records[0]
    out = {k: first[k] for k in ("name", "task", "inner", "regularization", "supports", "true_support_size",
                                 "assumption7")}
    out["n_seeds"] = len(records)
    out["seeds"] = [r["seed"] for r in records]
    for key in _MEAN_KEYS:
        out[key] = float(np.mean([r[key] for r in records]))
    for key in ("mcc", "r2", *INFO_KEYS):
        out[f"{key}_seeds"] = [r[key] for r in records]
        out[f"{key}_ci95"] = mean_t_ci(out[f"{key}_seeds"])
    out["dci"] = {k: float(np.mean([r["dci"][k] for r in records])) for k in first["dci"]}
    steps = [p["step"] for p in first["history"]]
    out["history"] = [{"step": st, "mcc": float(np.mean([r["history"][i]["mcc"] for r in records])),
                       "r2": float(np.mean([r["history"][i]["r2"] for r in records]))} for i, st in enumerate(steps)]
    out["example_true_supports"] = first["example_true_supports"]
    out["example_used_factors"] = first["example_used_factors"]
    out["per_seed"] = [{k: v for k, v in r.items() if k not in ("history", "example_true_supports",
                                                                "example_used_factors")} for r in records]
    return out


def _aggregate_baselines(per_seed: Sequence[Dict]) -> Dict:
    out = {}
    for key in per_seed[0]:
        vals = [b[key]["mcc"] for b in per_seed]
        out[key] = {"mcc": float(np.mean(vals)), "mcc_seeds": vals, "mcc_ci95": mean_t_ci(vals),
                    "r2": float(np.mean([b[key]["r2"] for b in per_seed])),
                    **{k: float(np.mean([b[key][k] for b in per_seed])) for k in INFO_KEYS},
                    "per_seed": [b[key] for b in per_seed]}
    return out


def _train_job(job):
    """One (configuration, seed) training: a top-level function so worker processes can run it."""
    cfg, settings = job
    torch.set_num_threads(1)
    rec = train_config(cfg, settings, make_world(settings), progress=False)
    rec["seed"] = settings.seed
    return rec


def run(settings: Settings, configs: Sequence[Config], progress: bool = True, seeds: int = 1,
        workers: int = 1) -> Dict:
    """Train every configuration for seeds ``settings.seed .. settings.seed + seeds - 1``
    (``workers`` processes) and aggregate over seeds.  Same arguments -> same numbers
    whatever ``workers``."""
    from tqdm import tqdm

    seed_settings = [replace(settings, seed=settings.seed + i) for i in range(seeds)]
    reason = heads_available() if any(c.inner == "group_sparse_svm" for c in configs) else None
    runnable = [c for c in configs if not (c.inner == "group_sparse_svm" and reason is not None)]
    result = {"settings": {**asdict(settings), "seeds": [s.seed for s in seed_settings]},
              "baselines": _aggregate_baselines([baselines(s, make_world(s)) for s in seed_settings]),
              "configs": [], "skipped": [{"name": c.name, "reason": reason} for c in configs if c not in runnable]}
    jobs = [(cfg, s) for cfg in runnable for s in seed_settings]
    bar = tqdm(total=len(jobs), desc="configurations x seeds", disable=None if progress else True)
    records: List[Dict] = []
    if workers <= 1:
        for cfg, s in jobs:
            rec = train_config(cfg, s, make_world(s), progress)
            rec["seed"] = s.seed
            records.append(rec)
            bar.update(1)
    else:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for rec in pool.map(_train_job, jobs):
                records.append(rec)
                bar.update(1)
    bar.close()
    for i in range(len(runnable)):
        result["configs"].append(aggregate(records[i * seeds:(i + 1) * seeds]))
    return result


# --------------------------------------------------------------------------- plots
def plot_mcc(result: Dict, path: Path) -> None:
    """MCC (solid) and linear R^2 (dashed) against the regularisation, per inner solver."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {}
    for rec in result["configs"]:
        groups.setdefault((rec["task"], rec["inner"]), []).append(rec)
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(4.3 * max(1, len(groups)), 3.6), squeeze=False)
    colors = {"random": "tab:blue", "blocks": "tab:orange"}
    base = result["baselines"]["observations_x"]["mcc"]
    for ax, ((task, inner), recs) in zip(axes[0], sorted(groups.items())):
        values = sorted({r["regularization"]["value"] for r in recs})
        pos = {v: i for i, v in enumerate(values)}          # categorical axis (0 is a valid value)
        for kind in SUPPORT_KINDS:
            rs = sorted((r for r in recs if r["supports"] == kind), key=lambda r: r["regularization"]["value"])
            if not rs:
                continue
            xs = [pos[r["regularization"]["value"]] for r in rs]
            label = f"{kind} supports (A7 {'holds' if rs[0]['assumption7'] else 'fails'})"
            ax.errorbar(xs, [r["mcc"] for r in rs], yerr=[r.get("mcc_ci95") or 0.0 for r in rs], fmt="o-",
                        capsize=3, color=colors[kind], label=f"MCC, {label}")
            ax.errorbar(xs, [r["r2"] for r in rs], yerr=[r.get("r2_ci95") or 0.0 for r in rs], fmt="s--",
                        capsize=3, color=colors[kind], alpha=0.6, label=f"R$^2$, {kind}")
        ax.axhline(base, color="gray", lw=1, ls=":", label="MCC of x itself")
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels([f"{v:g}" for v in values])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(recs[0]["regularization"]["name"])
        n_seeds = recs[0].get("n_seeds", 1)
        ax.set_title(f"{task}: inner {inner}\nmean" + (f" +- 95% CI over {n_seeds} seeds" if n_seeds > 1 else
                                                          " (1 seed)"), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("score of learned representation")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)


def plot_training(result: Dict, path: Path) -> None:
    """MCC of the learned representation during training, one panel per task type."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({rec["task"] for rec in result["configs"]}, reverse=True)
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(6.5 * max(1, len(tasks)), 4.2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, task in zip(axes[0], tasks):
        recs = [r for r in result["configs"] if r["task"] == task]
        keys = sorted({(r["inner"], r["regularization"]["value"]) for r in recs})
        for rec in recs:
            h = rec["history"]
            color = cmap(keys.index((rec["inner"], rec["regularization"]["value"])) % 10)
            ls = "-" if rec["supports"] == "random" else "--"
            label = f"{rec['inner']} {rec['regularization']['name']}={rec['regularization']['value']:g}, {rec['supports']}"
            ax.plot([p["step"] for p in h], [p["mcc"] for p in h], ls, color=color, label=label)
        ax.set_title(f"{task}, mean over {recs[0].get('n_seeds', 1)} seed(s) "
                     f"(solid: random supports, dashed: blocks)", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("MCC")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def plot_supports(result: Dict, path: Path) -> None:
    """True supports vs the factors used by the inner predictors, for the best-MCC
    configuration of each inner solver (random supports)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = {}
    for rec in result["configs"]:
        if rec["supports"] != "random":
            continue
        key = (rec["task"], rec["inner"])
        if key not in best or rec["mcc"] > best[key]["mcc"]:
            best[key] = rec
    recs = [best[k] for k in sorted(best)]
    if not recs:
        return
    fig, axes = plt.subplots(1, len(recs) + 1, figsize=(3.2 * (len(recs) + 1), 3.6), squeeze=False)
    axes[0][0].imshow(np.asarray(recs[0]["example_true_supports"]).T, cmap="Greys", aspect="auto", vmin=0, vmax=1)
    axes[0][0].set_title("true supports")
    for ax, rec in zip(axes[0][1:], recs):
        ax.imshow(np.asarray(rec["example_used_factors"]).T, cmap="Greys", aspect="auto", vmin=0, vmax=1)
        ax.set_title(f"{rec['inner']} ({rec['regularization']['name']}={rec['regularization']['value']:g})\n"
                     f"MCC {rec['mcc']:.2f}, used {rec['used_features_mean']:.1f}", fontsize=8)
    for ax in axes[0]:
        ax.set_xlabel("task")
        ax.set_ylabel("factor")
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------- CLI
def parse_args(argv=None):
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--steps", type=int, default=d.steps, help=f"outer steps per configuration ({d.steps})")
    p.add_argument("--classification-steps", type=int, default=d.classification_steps,
                   help=f"outer steps per classification configuration ({d.classification_steps})")
    p.add_argument("--tasks-per-step", type=int, default=d.tasks_per_step)
    p.add_argument("--n-factors", type=int, default=d.n_factors, help="latent dimension m")
    p.add_argument("--support-size", type=int, default=d.support_size, help="factors per task l")
    p.add_argument("--block-size", type=int, default=d.block_size, help="block size of 'blocks' supports")
    p.add_argument("--n-outputs", type=int, default=d.n_outputs, help="regression outputs k per task")
    p.add_argument("--n-classes", type=int, default=d.n_classes, help="classes per classification task")
    p.add_argument("--mixing", default=d.mixing, choices=["identity", "rotation", "linear", "mlp"])
    p.add_argument("--n-support", type=int, default=d.n_support, help="inner training examples per task")
    p.add_argument("--n-query", type=int, default=d.n_query, help="outer held-out examples per task")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--n-eval", type=int, default=d.n_eval,
                   help=f"fresh samples the representation is scored on ({d.n_eval})")
    p.add_argument("--seed", type=int, default=d.seed, help="first seed (default 0)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per configuration: --seed .. --seed + N - 1 (default 5)")
    p.add_argument("--workers", type=int, default=1, help="training processes in parallel (default 1)")
    p.add_argument("--lasso-ratios", type=float, nargs="+", default=[0.03, 0.1, 0.3],
                   help="group-Lasso lambda / lambda_max values")
    p.add_argument("--ridge-lams", type=float, nargs="+", default=[0.01, 0.1, 1.0], help="ridge lam values")
    p.add_argument("--supports", nargs="+", default=list(SUPPORT_KINDS), choices=SUPPORT_KINDS)
    p.add_argument("--classification", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the group-sparse SVM classification variant")
    p.add_argument("--svm-ratios", type=float, nargs="+", default=[0.0, 0.1, 0.3],
                   help="group-sparse SVM lambda / lambda_max values (0 = vanilla SVM)")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNGs from OUT/identifiability.json")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if min(a.steps, a.classification_steps, a.tasks_per_step, a.n_query) < 1 or a.n_support < 2:
        p.error("--steps, --classification-steps, --tasks-per-step, --n-query must be >= 1 and --n-support >= 2")
    if a.n_eval < 100:
        p.error(f"--n-eval must be >= 100 (the held-out scores split it in halves), got {a.n_eval}")
    if not 1 <= a.support_size <= a.n_factors:
        p.error(f"--support-size must be in 1..--n-factors={a.n_factors}, got {a.support_size}")
    if "blocks" in a.supports and (a.n_factors % a.block_size or a.support_size % a.block_size):
        p.error(f"--block-size={a.block_size} must divide --n-factors and --support-size")
    if a.seeds < 1 or a.workers < 1:
        p.error(f"--seeds and --workers must be >= 1, got {a.seeds} and {a.workers}")
    if any(r < 0 for r in a.lasso_ratios + a.svm_ratios + a.ridge_lams):
        p.error("regularisation values must be >= 0")
    return a


def plot_all(result: Dict, out: Path) -> None:
    plot_mcc(result, out / "identifiability_mcc.png")
    plot_training(result, out / "identifiability_training.png")
    plot_supports(result, out / "identifiability_supports.png")


def main(argv=None) -> Dict:
    a = parse_args(argv)
    if a.plot_only:
        path = a.out / "identifiability.json"
        if not path.is_file():
            raise FileNotFoundError(f"--plot-only: {path} not found (run without --plot-only first)")
        result = json.loads(path.read_text())
        plot_all(result, a.out)
        return result
    settings = Settings(n_factors=a.n_factors, support_size=a.support_size, block_size=a.block_size,
                        n_outputs=a.n_outputs, n_classes=a.n_classes, mixing=a.mixing, n_support=a.n_support,
                        n_query=a.n_query, tasks_per_step=a.tasks_per_step, steps=a.steps,
                        classification_steps=a.classification_steps, lr=a.lr, n_eval=a.n_eval, seed=a.seed)
    configs = default_configs(a.lasso_ratios, a.ridge_lams, a.supports, a.svm_ratios, a.classification)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    result = run(settings, configs, progress=not a.no_progress, seeds=a.seeds, workers=a.workers)
    atomic_write(a.out / "identifiability.json", json.dumps(result, indent=1).encode())
    plot_all(result, a.out)
    b = result["baselines"]
    print(f"baselines: x itself MCC={b['observations_x']['mcc']:.3f}, untrained encoder "
          f"MCC={b['untrained_encoder']['mcc']:.3f} (means over {a.seeds} seed(s))")
    for rec in result["configs"]:
        ci = "" if rec["mcc_ci95"] is None else f" +- {rec['mcc_ci95']:.3f}"
        print(f"{rec['name']:<55} MCC={rec['mcc']:.3f}{ci} R2={rec['r2']:.3f} "
              f"DCI-D={rec['dci']['disentanglement']:.3f} MIG={rec['mig']:.3f} SAP={rec['sap']:.3f} "
              f"mod={rec['modularity']:.3f} expl={rec['explicitness']:.3f} blockR2={rec['block_r2']:.3f} "
              f"used={rec['used_features_mean']:.1f}/{settings.n_factors} "
              f"({rec['train_seconds']:.0f}s)")
    for rec in result["skipped"]:
        print(f"skipped {rec['name']}: {rec['reason']}")
    print(f"wrote {a.out / 'identifiability.json'}")
    return result


if __name__ == "__main__":
    main()

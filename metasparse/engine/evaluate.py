"""Meta-testing: per-episode accuracy and feature usage of a model (and optionally a
swapped head) on a re-iterable stream of episode batches.

For episode ``t`` with fitted weights ``W_t`` (d x N) the head reports
``active_t[j] = (W_t[j, :] != 0)``; we keep

* ``accuracy[t]``        fraction of correctly classified queries,
* ``unused_fraction[t]`` = 1 - mean_j active_t[j] (fraction of features with an all-zero row),
* ``feature_usage[j]``   = sum_t active_t[j] (how many tasks use feature j), the paper's
  feature-usage curve is ``sort(feature_usage / n_episodes)`` in decreasing order,
* ``rel_gap[t]``, ``converged[t]`` when the head reports them (``HeadFit.converged``,
  the SVM heads): the summary then has ``max_rel_gap`` and ``unconverged_episodes``, and
  an evaluation in which some episode's solve stopped short of its tolerance ends with
  one :class:`~metasparse.heads.SolverConvergenceWarning`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..heads.base import SolverConvergenceWarning, unconverged_message
from ..metrics.accuracy import episode_accuracy, mean_ci
from .distributed import DistContext, gather_objects, shard_bounds

__all__ = ["EvalResult", "evaluate_episodes"]


@dataclass
class EvalResult:
    accuracy: np.ndarray                 # (n_episodes,)
    unused_fraction: np.ndarray          # (n_episodes,)
    feature_usage: np.ndarray            # (d,) number of episodes using each feature
    n_features: int
    loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rel_gap: Optional[np.ndarray] = None     # (n_episodes,) when the head reports convergence
    converged: Optional[np.ndarray] = None   # (n_episodes,) bool, idem

    @property
    def n_episodes(self) -> int:
        return int(self.accuracy.size)

    def summary(self) -> Dict[str, Any]:
        acc = mean_ci(self.accuracy)
        used = 1.0 - self.unused_fraction
        return {"accuracy": acc["mean"], "ci95": acc["ci95"], "std": acc["std"], "episodes": acc["n"],
                "features_used_fraction": float(used.mean()), "features_used_ci95": mean_ci(used)["ci95"],
                "features_used_mean": float(used.mean() * self.n_features), "n_features": int(self.n_features),
                "features_never_used": int((self.feature_usage == 0).sum()),
                "loss": float(self.loss.mean()) if self.loss.size else None, **self._convergence_summary()}

    def _convergence_summary(self) -> Dict[str, Any]:
        """``max_rel_gap`` and ``unconverged_episodes``, or nothing for heads that report no convergence."""
        if self.converged is None:
            return {}
        return {"max_rel_gap": float(self.rel_gap.max()), "unconverged_episodes": int((~self.converged).sum())}


@torch.no_grad()
def evaluate_episodes(model: nn.Module, episodes: Iterable, device: torch.device, head: Optional[nn.Module] = None,
                      ctx: Optional[DistContext] = None, progress: bool = True, desc: str = "eval",
                      total: Optional[int] = None) -> EvalResult:
    """Evaluate ``model`` (a :class:`FewShotModel`, eval mode) on ``episodes`` (batches
    ready for the model: the streams of :mod:`metasparse.engine.streams` normalise them).

    With a distributed ``ctx`` every rank takes its shard of each batch and the results are
    gathered in the original episode order, so all ranks return the same result."""
    ctx = ctx or DistContext(device=device)
    model.eval()
    if head is not None:
        head.eval()
    accs: List[np.ndarray] = []
    unused: List[np.ndarray] = []
    losses: List[np.ndarray] = []
    gaps: List[np.ndarray] = []
    converged: List[np.ndarray] = []
    usage, tol = None, None
    bar = tqdm(episodes, desc=desc, unit="batch", total=total, disable=not (progress and ctx.is_main),
               dynamic_ncols=True, leave=False)
    for batch in bar:
        lo, hi = shard_bounds(batch.n_episodes, ctx.rank, ctx.world_size)
        n_way = batch.n_way
        if hi > lo:
            local = batch[lo:hi].to(device, non_blocking=True)
            logits, fit = model(local.support, local.support_labels, local.query, n_way, head=head)
            acc = episode_accuracy(logits, local.query_labels).double().cpu().numpy()
            ce = torch.nn.functional.cross_entropy(logits.reshape(-1, n_way).float(), local.query_labels.reshape(-1),
                                                   reduction="none").reshape(logits.shape[:2]).mean(1)
            active = fit.active.detach().cpu()
            out = (acc, (1.0 - active.double().mean(1)).numpy(), ce.double().cpu().numpy(),
                   active.sum(0).numpy().astype(np.int64), *_fit_convergence(fit))
            tol = getattr(fit, "tol", None)
        else:
            out = None
        parts = gather_objects(out, ctx)
        for p in parts:
            if p is None:
                continue
            accs.append(p[0]); unused.append(p[1]); losses.append(p[2])
            usage = p[3].copy() if usage is None else usage + p[3]
            if p[5] is not None:
                gaps.append(p[4]); converged.append(p[5])
        if accs:
            bar.set_postfix(acc=f"{100 * np.concatenate(accs).mean():.2f}%",
                            used=f"{100 * (1 - np.concatenate(unused).mean()):.1f}%")
    bar.close()
    if not accs:
        raise ValueError("evaluate: the episode stream was empty")
    res = EvalResult(np.concatenate(accs), np.concatenate(unused), usage, int(usage.size), np.concatenate(losses),
                     np.concatenate(gaps) if converged else None, np.concatenate(converged) if converged else None)
    if ctx.is_main:
        _warn_unconverged(res, tol, desc)
    return res


def _fit_convergence(fit):
    """``(rel_gap, converged)`` of a fit as numpy arrays, ``(None, None)`` if it reports none."""
    if getattr(fit, "converged", None) is None:
        return None, None
    return fit.rel_gap.detach().double().cpu().numpy(), fit.converged.detach().cpu().numpy()


def _warn_unconverged(res: EvalResult, tol: Optional[float], desc: str) -> None:
    """One warning for the evaluation when some episodes' solve stopped short of the tolerance."""
    if res.converged is not None and not res.converged.all():
        warnings.warn(SolverConvergenceWarning(
            f"{desc}: " + unconverged_message(int((~res.converged).sum()), res.n_episodes,
                                               float(res.rel_gap.max()), tol)), stacklevel=2)

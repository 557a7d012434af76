"""Few-shot accuracy statistics over meta-test episodes.

* ``mean_ci(acc)``: mean and MetaOptNet's 95% half-width ``1.96 * std / sqrt(n)``
  (``std`` the population standard deviation, numpy's default, as in MetaOptNet).
* ``mean_t_ci(values)``: the half-width of the Student-t interval of a mean over a few
  runs (seeds): ``t_{(1 + level)/2, n-1} * sd / sqrt(n)``, ``sd`` with ``ddof = 1``;
  ``None`` for fewer than two values (no spread to measure).
* ``paired_difference(a, b)``: for per-episode accuracies of two models on the *same*
  episodes, the mean difference ``d = a - b`` with the same CI form, a paired t-test
  (``scipy.stats.ttest_rel``) and a Wilcoxon signed-rank test.
* ``episode_accuracy(logits, labels)``: per-episode accuracy (B,) from (B, Q, N) logits.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import torch
from scipy import stats

__all__ = ["episode_accuracy", "mean_ci", "mean_t_ci", "paired_difference", "format_ci"]

Z95 = 1.96


def episode_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of correctly classified queries per episode: (B, Q, N), (B, Q) -> (B,)."""
    return (logits.argmax(dim=-1) == labels).float().mean(dim=-1)


def mean_ci(values) -> Dict[str, float]:
    """``{"mean", "ci95", "std", "n"}`` with ``ci95 = 1.96 * std / sqrt(n)`` (MetaOptNet form)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_ci: no values")
    std = float(x.std())
    return {"mean": float(x.mean()), "ci95": Z95 * std / math.sqrt(x.size), "std": std, "n": int(x.size)}


def mean_t_ci(values, level: float = 0.95) -> Optional[float]:
    """Half-width ``t_{(1 + level)/2, n-1} * sd / sqrt(n)`` of the Student-t confidence
    interval of the mean of ``values`` (``sd``: sample standard deviation, ``ddof = 1``);
    ``None`` for one value.  For scores over a handful of seeds, where 1.96 is too small."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_t_ci: no values")
    if not 0 < level < 1:
        raise ValueError(f"mean_t_ci: level must be in (0, 1), got {level}")
    if not np.isfinite(x).all():
        raise ValueError("mean_t_ci: values contain NaN or inf")
    if x.size < 2:
        return None
    return float(stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


def paired_difference(a, b) -> Dict[str, float]:
    """Paired comparison of per-episode scores ``a`` and ``b`` measured on identical episodes.

    Returns the mean difference ``mean(a - b)`` and its 95% half-width
    ``1.96 * std(a - b) / sqrt(n)``, the paired t-test p-value (two-sided) and the
    Wilcoxon signed-rank p-value (two-sided; 1.0 when all differences are zero).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: scores must be paired, got {a.size} and {b.size} episodes")
    d = a - b
    out = mean_ci(d)
    if d.size < 2 or np.all(d == d[0]):
        t_p = 1.0 if np.all(d == 0) else 0.0
        w_p = 1.0 if np.all(d == 0) else float("nan")
        t_stat = 0.0 if np.all(d == 0) else float("inf") * np.sign(d[0])
    else:
        t = stats.ttest_rel(a, b)
        t_stat, t_p = float(t.statistic), float(t.pvalue)
        w_p = float(stats.wilcoxon(a, b, zero_method="zsplit").pvalue) if np.any(d != 0) else 1.0
    return {"mean_diff": out["mean"], "ci95": out["ci95"], "n": out["n"],
            "t_statistic": t_stat, "t_pvalue": t_p, "wilcoxon_pvalue": w_p}


def format_ci(stat: Dict[str, float], percent: bool = True, digits: int = 2) -> str:
    """``"62.64 +- 0.61"`` from a ``mean_ci`` dict (accuracies in [0, 1] printed in %)."""
    s = 100.0 if percent else 1.0
    key = "mean" if "mean" in stat else "mean_diff"
    return f"{stat[key] * s:.{digits}f} +- {stat['ci95'] * s:.{digits}f}"

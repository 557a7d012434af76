"""How well a learned representation recovers ground-truth latent factors.

All functions take ``factors`` (n, m) -- the true ``z`` -- and ``codes`` (n, d) -- the
learned representation ``f(x)`` -- as numpy arrays or torch tensors.

* MCC (mean correlation coefficient): ``C_ij = |corr(z_i, c_j)|`` (Pearson, or
  Spearman = Pearson of ranks); a one-to-one matching ``pi`` maximising
  ``sum_i C_{i, pi(i)}`` (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``);
  ``MCC = mean_i C_{i, pi(i)}``.  MCC = 1 iff codes equal factors up to permutation
  and (monotone, for Spearman) rescaling -- Definition 1 of Lachapelle et al. 2023.
* Linear R^2: held-out ``R^2`` of the least-squares regression ``z ~ A c + b``
  (averaged over factors).  Equals 1 for any invertible linear entanglement.
* DCI (Eastwood & Williams, ICLR 2018): an importance matrix ``R`` (d, m),
  ``R_ij`` = importance of code ``i`` for predicting factor ``j`` (|Lasso
  coefficient| on standardised data, or tree feature importances):
  ``D = sum_i rho_i (1 - H_m(P_i.))`` with ``P_ij = R_ij / sum_k R_ik``,
  ``rho_i = sum_j R_ij / sum_kj R_kj``;  ``C = mean_j (1 - H_d(P~_.j))`` with
  ``P~_ij = R_ij / sum_k R_kj``; ``H_b`` the entropy in base ``b``.
  Informativeness: mean held-out ``R^2`` of the same predictors (higher is better;
  the original paper reports the error, ``1 - R^2`` up to normalisation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

__all__ = ["MCCResult", "DCIResult", "correlation_matrix", "match_factors", "mean_corr_coef",
           "linear_r2", "dci", "importance_matrix", "disentanglement_report"]


def _as_2d(a, name: str) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_samples, n_dims) array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _check_pair(factors, codes) -> Tuple[np.ndarray, np.ndarray]:
    z, c = _as_2d(factors, "factors"), _as_2d(codes, "codes")
    if z.shape[0] != c.shape[0]:
        raise ValueError(f"factors and codes need the same number of samples, got {z.shape[0]} and {c.shape[0]}")
    if z.shape[0] < 3:
        raise ValueError(f"need at least 3 samples, got {z.shape[0]}")
    return z, c


def correlation_matrix(factors, codes, method: str = "pearson") -> np.ndarray:
    """``|corr(z_i, c_j)|`` as an (m, d) matrix (constant columns give 0)."""
    z, c = _check_pair(factors, codes)
    if method == "spearman":
        z, c = rankdata(z, axis=0), rankdata(c, axis=0)
    elif method != "pearson":
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    z = z - z.mean(0)
    c = c - c.mean(0)
    zn, cn = np.linalg.norm(z, axis=0), np.linalg.norm(c, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (z.T @ c) / np.outer(zn, cn)
    return np.abs(np.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0))


@dataclass
class MCCResult:
    """mcc: mean matched |correlation|; per_factor: (min(m, d),) matched values;
    factor_index / code_index: the matching (factor ``factor_index[k]`` <-> code ``code_index[k]``);
    corr: the full (m, d) |correlation| matrix."""

    mcc: float
    per_factor: np.ndarray
    factor_index: np.ndarray
    code_index: np.ndarray
    corr: np.ndarray


def match_factors(factors, codes, method: str = "pearson") -> MCCResult:
    """Hungarian matching of codes to factors maximising total |correlation|."""
    corr = correlation_matrix(factors, codes, method)
    rows, cols = linear_sum_assignment(corr, maximize=True)
    per = corr[rows, cols]
    return MCCResult(float(per.mean()), per, rows, cols, corr)


def mean_corr_coef(factors, codes, method: str = "pearson") -> float:
    """MCC: mean |correlation| of matched (factor, code) pairs (see module doc)."""
    return match_factors(factors, codes, method).mcc


def mcc_interval(factors, codes, n_boot: int = 200, level: float = 0.95, seed: int = 0,
                 method: str = "pearson") -> Tuple[float, float]:
    """Percentile bootstrap interval of :func:`mean_corr_coef` over the examples (rows):
    the MCC of ``n_boot`` resamples with replacement, its ``(1 - level)/2`` and
    ``(1 + level)/2`` quantiles.  It says how much the score depends on which examples
    were drawn (not on the training run)."""
    z, c = np.asarray(factors, dtype=np.float64), np.asarray(codes, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = z.shape[0]
    scores = [mean_corr_coef(z[idx], c[idx], method) for idx in (rng.integers(0, n, n) for _ in range(n_boot))]
    lo, hi = np.quantile(scores, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _split(n: int, test_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    if n_test == 0:
        return perm, perm
    return perm[n_test:], perm[:n_test]


def linear_r2(factors, codes, test_fraction: float = 0.5, seed: int = 0) -> float:
    """Held-out ``R^2`` of predicting the factors linearly from the codes, averaged
    over factors (``test_fraction = 0``: in-sample)."""
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    z, c = _check_pair(factors, codes)
    tr, te = _split(len(z), test_fraction, seed)
    model = LinearRegression().fit(c[tr], z[tr])
    return float(r2_score(z[te], model.predict(c[te]), multioutput="uniform_average"))


def _standardise(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    std = ref.std(0)
    std[std == 0] = 1.0
    return (a - ref.mean(0)) / std


def importance_matrix(factors, codes, importance: str = "lasso", test_fraction: float = 0.3,
                      alpha: float = 0.02, seed: int = 0, n_estimators: int = 50
                      ) -> Tuple[np.ndarray, float]:
    """DCI importance matrix ``R`` (d, m) and the informativeness (mean held-out R^2).

    ``importance``: ``lasso`` (|coefficients| of a Lasso with penalty ``alpha`` on
    standardised codes and factors), ``random_forest`` or ``gbt`` (sklearn's
    impurity-based ``feature_importances_``; one model per factor).
    """
    from sklearn.linear_model import Lasso
    from sklearn.metrics import r2_score

    z, c = _check_pair(factors, codes)
    tr, te = _split(len(z), test_fraction, seed)
    cz, zz = _standardise(c, c[tr]), _standardise(z, z[tr])
    m, d = z.shape[1], c.shape[1]
    if importance == "lasso":
        model = Lasso(alpha=alpha, max_iter=10000).fit(cz[tr], zz[tr])
        r = np.abs(np.atleast_2d(model.coef_)).T                        # (d, m)
        pred = model.predict(cz[te]).reshape(len(te), m)
    elif importance in ("random_forest", "gbt"):
        from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
        r = np.zeros((d, m))
        pred = np.zeros((len(te), m))
        for j in range(m):
            if importance == "random_forest":
                est = RandomForestRegressor(n_estimators=n_estimators, max_depth=8, random_state=seed, n_jobs=1)
            else:
                est = GradientBoostingRegressor(n_estimators=n_estimators, max_depth=3, random_state=seed)
            est.fit(cz[tr], zz[tr, j])
            r[:, j] = est.feature_importances_
            pred[:, j] = est.predict(cz[te])
    else:
        raise ValueError(f"importance must be 'lasso', 'random_forest' or 'gbt', got {importance!r}")
    info = float(r2_score(zz[te], pred, multioutput="uniform_average"))
    return r, info


def _entropy_base(p: np.ndarray, base: int, axis: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -(p * logs).sum(axis=axis) / np.log(base)


def dci_from_importance(r: np.ndarray) -> Tuple[float, float]:
    """(disentanglement, completeness) from an importance matrix ``R`` (d codes, m factors)."""
    r = np.abs(np.asarray(r, dtype=np.float64))
    d, m = r.shape
    if d < 2 or m < 2:
        raise ValueError(f"DCI needs at least 2 codes and 2 factors, got importance shape {r.shape}")
    total = r.sum()
    if total <= 0:
        return 0.0, 0.0
    row = r.sum(1, keepdims=True)
    p = np.divide(r, row, out=np.full_like(r, 1.0 / m), where=row > 0)
    dis = 1.0 - _entropy_base(p, m, axis=1)
    rho = row[:, 0] / total
    col = r.sum(0, keepdims=True)
    q = np.divide(r, col, out=np.full_like(r, 1.0 / d), where=col > 0)
    comp = 1.0 - _entropy_base(q, d, axis=0)
    return float((rho * dis).sum()), float(comp.mean())


@dataclass
class DCIResult:
    """Disentanglement, completeness, informativeness (mean held-out R^2) and the
    importance matrix (d codes, m factors)."""

    disentanglement: float
    completeness: float
    informativeness: float
    importance: np.ndarray


def dci(factors, codes, importance: str = "lasso", **kwargs) -> DCIResult:
    """DCI scores of Eastwood & Williams (2018) -- see module doc for the formulas."""
    r, info = importance_matrix(factors, codes, importance=importance, **kwargs)
    dis, comp = dci_from_importance(r)
    return DCIResult(dis, comp, info, r)


def disentanglement_report(factors, codes, dci_importance: str = "lasso", seed: int = 0) -> Dict[str, float]:
    """All scores as a flat JSON-ready dict: mcc (Pearson), mcc_spearman, linear_r2,
    dci_disentanglement, dci_completeness, dci_informativeness."""
    d = dci(factors, codes, importance=dci_importance, seed=seed)
    return {
        "mcc": mean_corr_coef(factors, codes, "pearson"),
        "mcc_spearman": mean_corr_coef(factors, codes, "spearman"),
        "linear_r2": linear_r2(factors, codes, seed=seed),
        "dci_disentanglement": d.disentanglement,
        "dci_completeness": d.completeness,
        "dci_informativeness": d.informativeness,
    }

"""MIG, SAP, modularity and explicitness: four more scores of how well codes recover factors.

Same conventions as :mod:`metasparse.metrics.disentanglement`: ``factors`` (n, m) -- the
true ``z`` -- and ``codes`` (n, d), numpy arrays or torch tensors.

**Discretisation** (MIG, modularity, explicitness).  Mutual information is the plug-in
estimate on discretised variables (the estimator of disentanglement_lib):

* a code column is cut into ``n_bins`` (default 20) equal-width bins spanning its
  range (``numpy.histogram_bin_edges``; a constant column is one bin);
* a factor column is *discrete* when it takes at most ``n_bins`` distinct values (3D
  Shapes' grid, class labels): its values are the classes; otherwise it is cut into
  ``n_bins`` equal-width bins like a code.  ``discrete_factors=True`` / ``False`` /
  one bool per factor overrides the rule.

``I(c_j; z_k) = sum_ab p(a, b) log(p(a, b) / (p(a) p(b)))`` over the bins of ``c_j`` and
the classes of ``z_k`` (``sklearn.metrics.mutual_info_score``, nats) and
``H(z_k) = -sum_b p(b) log p(b)``.  The plug-in estimate is biased upwards by about
``(bins_c - 1)(classes_z - 1) / (2n)`` for independent variables, so with few samples
an uninformative code still shows a little information.

* **MIG** (Chen et al., NeurIPS 2018): for each factor ``k``, with ``j(k) = argmax_j
  I(c_j; z_k)``,
  ``MIG = 1/m sum_k (I(c_{j(k)}; z_k) - max_{j != j(k)} I(c_j; z_k)) / H(z_k)``.
  1: each factor is captured fully by one code and by no other; 0: the two best codes
  know as much about the factor (a constant code, an even mixture of two factors).
* **SAP** (Kumar et al., ICLR 2018): a score matrix ``S`` (d, m), ``S_jk`` = how well
  code ``j`` *alone* predicts factor ``k`` on held-out data; ``SAP = 1/m sum_k (S_(1)k -
  S_(2)k)``, the gap between the two largest scores of each factor.  Continuous factor:
  held-out ``R^2`` of the linear fit ``z_k ~ a c_j + b``.  Discrete factor with ``K``
  values: a decision tree with ``K`` leaves on the one code (up to ``K`` intervals of the
  code, each labelled with a value: what a multiclass linear classifier such as
  disentanglement_lib's linear SVM can do with one input), class-balanced, scored by the
  chance-adjusted balanced accuracy (``sklearn.metrics.balanced_accuracy_score(...,
  adjusted=True)``: 0 at chance, 1 perfect; with plain accuracy a perfect code could not
  score above ``1 - 1/K``).  Scores below 0 (worse than the mean or chance) count as 0.
* **Modularity** (Ridgeway & Mozer, NeurIPS 2018): from the (d, m) mutual information
  matrix ``M_ik = I(c_i; z_k)``: ``theta_i = max_k M_ik``, template ``t_ik = theta_i`` at
  the argmax and 0 elsewhere, ``delta_i = sum_k (M_ik - t_ik)^2 / (theta_i^2 (m - 1))``,
  ``modularity_i = 1 - delta_i``, averaged over codes.  1: every code informs about one
  factor only.  A code with no information at all (``theta_i = 0``, e.g. a constant code)
  scores 0, as in disentanglement_lib: it is a module of nothing (``per_code`` keeps the
  values to average over live codes instead).
* **Explicitness** (Ridgeway & Mozer): for each factor, a logistic regression on *all*
  codes (standardised with the training split's statistics) predicts the factor's
  class; each class's predicted probability is scored one-vs-rest by ROC-AUC on the
  held-out split (classes absent from either side skipped), averaged over classes, then
  over factors.  The classifier is multinomial (softmax over the classes, sklearn's
  ``LogisticRegression``): a separate linear one-vs-rest classifier could not single out
  a middle value of an ordinal factor even from a perfect code.  Its L2 penalty is weak,
  ``C = 100`` (sklearn's default ``C = 1``, disentanglement_lib's, keeps the boundaries
  between 20 bins soft: a perfect code of a Gaussian factor then scores about 0.91, with
  ``C = 100`` about 0.98, on 2000 samples).  1: every factor value is linearly
  decodable; 0.5: chance (a constant code).  It measures information, not
  disentanglement: an invertible linear mixing of the factors keeps it close to 1.

SAP and explicitness split the samples once (``test_fraction``, ``seed``): same seed,
same numbers.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .disentanglement import _check_pair, _split, _standardise

__all__ = ["MIGResult", "SAPResult", "ModularityResult", "ExplicitnessResult", "discretize", "discretize_factors",
           "discrete_entropy", "mutual_information_matrix", "mig", "mig_from_mi", "sap", "modularity",
           "modularity_from_mi", "explicitness", "information_report"]

DiscreteSpec = Union[None, bool, Sequence[bool]]


def _check_bins(n_bins: int) -> int:
    if int(n_bins) != n_bins or n_bins < 2:
        raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}")
    return int(n_bins)


def discretize(x, n_bins: int = 20) -> np.ndarray:
    """int64 (n, k) bin index in ``0..n_bins-1`` of each column of ``x`` (n, k): ``n_bins``
    equal-width bins over the column's range (right edge included in the last bin)."""
    n_bins = _check_bins(n_bins)
    x = np.asarray(x, dtype=np.float64)
    out = np.empty(x.shape, dtype=np.int64)
    for j in range(x.shape[1]):
        edges = np.histogram_bin_edges(x[:, j], bins=n_bins)
        out[:, j] = np.digitize(x[:, j], edges[1:-1])
    return out


def _discrete_mask(z: np.ndarray, n_bins: int, discrete: DiscreteSpec) -> np.ndarray:
    m = z.shape[1]
    if discrete is None:
        return np.array([len(np.unique(z[:, k])) <= n_bins for k in range(m)])
    if isinstance(discrete, (bool, np.bool_)):
        return np.full(m, bool(discrete))
    mask = np.asarray(discrete, dtype=bool).ravel()
    if mask.shape != (m,):
        raise ValueError(f"discrete_factors must be None, a bool or {m} bools (one per factor), got {len(mask)}")
    return mask


def discretize_factors(factors, n_bins: int = 20, discrete_factors: DiscreteSpec = None
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """(labels int64 (n, m), discrete (m,) bool): the classes of each factor -- its values
    (as 0..K-1) for a discrete factor, else its ``n_bins`` equal-width bins (module doc)."""
    n_bins = _check_bins(n_bins)
    z = np.asarray(factors, dtype=np.float64)
    mask = _discrete_mask(z, n_bins, discrete_factors)
    labels = discretize(z, n_bins)
    for k in np.flatnonzero(mask):
        labels[:, k] = np.unique(z[:, k], return_inverse=True)[1].ravel()
    return labels, mask


def discrete_entropy(labels) -> np.ndarray:
    """``H(y_k) = -sum_b p(b) log p(b)`` (nats) of each column of integer labels (n, m)."""
    from scipy.stats import entropy

    y = np.asarray(labels)
    return np.array([entropy(np.unique(y[:, k], return_counts=True)[1]) for k in range(y.shape[1])])


def _mi(code_labels: np.ndarray, factor_labels: np.ndarray) -> np.ndarray:
    from sklearn.metrics import mutual_info_score

    d, m = code_labels.shape[1], factor_labels.shape[1]
    return np.array([[mutual_info_score(factor_labels[:, k], code_labels[:, j]) for k in range(m)]
                     for j in range(d)])


def mutual_information_matrix(factors, codes, n_bins: int = 20, discrete_factors: DiscreteSpec = None) -> np.ndarray:
    """``I(c_j; z_k)`` (nats) as a (d, m) matrix: binned codes, discrete or binned factors."""
    z, c = _check_pair(factors, codes)
    labels, _ = discretize_factors(z, n_bins, discrete_factors)
    return _mi(discretize(c, n_bins), labels)


def _non_constant(entropy: np.ndarray, metric: str) -> None:
    bad = np.flatnonzero(entropy <= 0)
    if bad.size:
        raise ValueError(f"{metric}: factor {int(bad[0])} is constant (zero entropy): the score is undefined")


@dataclass
class MIGResult:
    """mig: the mean gap; per_factor: (m,) normalised gaps; mutual_information: (d, m)
    ``I(c_j; z_k)`` in nats; entropy: (m,) ``H(z_k)``; discrete: (m,) which factors were
    used as they are (the rest binned)."""

    mig: float
    per_factor: np.ndarray
    mutual_information: np.ndarray
    entropy: np.ndarray
    discrete: np.ndarray


def mig_from_mi(mi: np.ndarray, entropy: np.ndarray) -> np.ndarray:
    """Per-factor ``(I_(1)k - I_(2)k) / H(z_k)`` from a (d, m) MI matrix and (m,) entropies."""
    mi = np.asarray(mi, dtype=np.float64)
    if mi.ndim != 2 or mi.shape[0] < 2:
        raise ValueError(f"MIG needs at least 2 codes, got mutual information of shape {mi.shape}")
    top = np.sort(mi, axis=0)
    return (top[-1] - top[-2]) / np.asarray(entropy, dtype=np.float64)


def mig(factors, codes, n_bins: int = 20, discrete_factors: DiscreteSpec = None) -> MIGResult:
    """Mutual Information Gap of Chen et al. (2018) -- see the module doc."""
    z, c = _check_pair(factors, codes)
    if c.shape[1] < 2:
        raise ValueError(f"MIG needs at least 2 codes, got codes of shape {c.shape}")
    labels, mask = discretize_factors(z, n_bins, discrete_factors)
    h = discrete_entropy(labels)
    _non_constant(h, "MIG")
    mi = _mi(discretize(c, n_bins), labels)
    per = mig_from_mi(mi, h)
    return MIGResult(float(per.mean()), per, mi, h, mask)


@dataclass
class ModularityResult:
    """modularity: mean over codes; per_code: (d,) ``1 - delta_i`` (0 for a code with no
    information); mutual_information: (d, m)."""

    modularity: float
    per_code: np.ndarray
    mutual_information: np.ndarray


def modularity_from_mi(mi: np.ndarray) -> np.ndarray:
    """Per-code modularity ``1 - delta_i`` of Ridgeway & Mozer from a (d, m) MI matrix."""
    mi = np.asarray(mi, dtype=np.float64)
    if mi.ndim != 2 or mi.shape[1] < 2:
        raise ValueError(f"modularity needs at least 2 factors, got mutual information of shape {mi.shape}")
    theta = mi.max(axis=1)
    template = np.where(np.arange(mi.shape[1]) == mi.argmax(axis=1)[:, None], theta[:, None], 0.0)
    dev = ((mi - template) ** 2).sum(axis=1)
    live = theta > 0
    out = np.zeros(mi.shape[0])
    out[live] = 1.0 - dev[live] / (theta[live] ** 2 * (mi.shape[1] - 1))
    return out


def modularity(factors, codes, n_bins: int = 20, discrete_factors: DiscreteSpec = None) -> ModularityResult:
    """Modularity of Ridgeway & Mozer (2018) -- see the module doc."""
    mi = mutual_information_matrix(factors, codes, n_bins, discrete_factors)
    per = modularity_from_mi(mi)
    return ModularityResult(float(per.mean()), per, mi)


def _held_out(n: int, test_fraction: float, seed: int, metric: str) -> Tuple[np.ndarray, np.ndarray]:
    if not 0 < test_fraction < 1:
        raise ValueError(f"{metric}: test_fraction must be in (0, 1), got {test_fraction}")
    tr, te = _split(n, test_fraction, seed)
    if len(tr) < 2 or len(te) < 2:
        raise ValueError(f"{metric}: too few samples ({n}) for a train/test split with test_fraction {test_fraction}")
    return tr, te


def _two_classes(y: np.ndarray, k: int, metric: str, part: str) -> None:
    if len(np.unique(y)) < 2:
        raise ValueError(f"{metric}: factor {k} takes a single value in the {part} split "
                         "(constant factor, or too few samples)")


@dataclass
class SAPResult:
    """sap: mean top-two gap; per_factor: (m,) gaps; scores: (d, m) held-out score of each
    code alone for each factor (R^2 or chance-adjusted balanced accuracy, floored at 0);
    discrete: (m,) which factors were classified."""

    sap: float
    per_factor: np.ndarray
    scores: np.ndarray
    discrete: np.ndarray


def _sap_continuous(c_tr, c_te, y_tr, y_te) -> np.ndarray:
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    pred = LinearRegression().fit(c_tr[:, None], y_tr).predict(c_te[:, None])
    return np.atleast_1d(r2_score(y_te, pred, multioutput="raw_values"))


def _sap_discrete(c_tr, c_te, y_tr, y_te, seed: int) -> float:
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.tree import DecisionTreeClassifier

    tree = DecisionTreeClassifier(max_leaf_nodes=max(2, len(np.unique(y_tr))), class_weight="balanced",
                                  random_state=seed)
    pred = tree.fit(c_tr[:, None], y_tr).predict(c_te[:, None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # a class predicted but absent from the test split
        return float(balanced_accuracy_score(y_te, pred, adjusted=True))


def sap(factors, codes, n_bins: int = 20, discrete_factors: DiscreteSpec = None, test_fraction: float = 0.5,
        seed: int = 0) -> SAPResult:
    """Separated Attribute Predictability of Kumar et al. (2018) -- see the module doc.
    ``n_bins`` only decides which factors are discrete (at most ``n_bins`` values)."""
    z, c = _check_pair(factors, codes)
    if c.shape[1] < 2:
        raise ValueError(f"SAP needs at least 2 codes, got codes of shape {c.shape}")
    labels, mask = discretize_factors(z, n_bins, discrete_factors)
    tr, te = _held_out(len(z), test_fraction, seed, "SAP")
    d, m = c.shape[1], z.shape[1]
    for k in range(m):
        _two_classes(labels[tr, k], k, "SAP", "training")
        _two_classes(labels[te, k], k, "SAP", "test")
    scores = np.zeros((d, m))
    cont = np.flatnonzero(~mask)
    for j in range(d):
        if cont.size:
            scores[j, cont] = _sap_continuous(c[tr, j], c[te, j], z[np.ix_(tr, cont)], z[np.ix_(te, cont)])
        for k in np.flatnonzero(mask):
            scores[j, k] = _sap_discrete(c[tr, j], c[te, j], labels[tr, k], labels[te, k], seed)
    scores = np.clip(scores, 0.0, 1.0)
    top = np.sort(scores, axis=0)
    per = top[-1] - top[-2]
    return SAPResult(float(per.mean()), per, scores, mask)


@dataclass
class ExplicitnessResult:
    """explicitness: mean held-out ROC-AUC over factors; per_factor: (m,) the mean over
    each factor's classes."""

    explicitness: float
    per_factor: np.ndarray


def _mean_auc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    aucs = [roc_auc_score(y == cls, proba[:, i]) for i, cls in enumerate(classes) if 0 < (y == cls).sum() < len(y)]
    if not aucs:
        raise ValueError("explicitness: no factor value is seen in both the training and the test split "
                         "(too few samples)")
    return float(np.mean(aucs))


def explicitness(factors, codes, n_bins: int = 20, discrete_factors: DiscreteSpec = None,
                 test_fraction: float = 0.5, seed: int = 0, C: float = 100.0) -> ExplicitnessResult:
    """Explicitness of Ridgeway & Mozer (2018) -- see the module doc.  ``C``: inverse L2
    penalty of the logistic regression on standardised codes."""
    from sklearn.linear_model import LogisticRegression

    z, c = _check_pair(factors, codes)
    labels, _ = discretize_factors(z, n_bins, discrete_factors)
    tr, te = _held_out(len(z), test_fraction, seed, "explicitness")
    x = _standardise(c, c[tr])
    m = z.shape[1]
    test = np.zeros(m)
    for k in range(m):
        _two_classes(labels[tr, k], k, "explicitness", "training")
        _two_classes(labels[te, k], k, "explicitness", "test")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # lbfgs may stop at max_iter on separable classes
            clf = LogisticRegression(C=C, max_iter=500).fit(x[tr], labels[tr, k])
        test[k] = _mean_auc(labels[te, k], clf.predict_proba(x[te]), clf.classes_)
    return ExplicitnessResult(float(test.mean()), test)


def information_report(factors, codes, n_bins: int = 20, discrete_factors: DiscreteSpec = None, seed: int = 0,
                       max_samples: Optional[int] = None) -> Dict[str, float]:
    """``{"mig", "sap", "modularity", "explicitness"}`` as a flat JSON-ready dict (one MI
    matrix for MIG and modularity).  ``max_samples``: score a seeded random subset of at
    most that many rows (the classifiers' cost grows with ``n``)."""
    z, c = _check_pair(factors, codes)
    if max_samples is not None and len(z) > max_samples:
        keep = np.sort(np.random.default_rng([seed, 31]).choice(len(z), max_samples, replace=False))
        z, c = z[keep], c[keep]
    if discrete_factors is None:                  # decide once, on the rows scored
        discrete_factors = _discrete_mask(z, _check_bins(n_bins), None)
    g = mig(z, c, n_bins, discrete_factors)
    return {"mig": g.mig,
            "sap": sap(z, c, n_bins, discrete_factors, seed=seed).sap,
            "modularity": float(modularity_from_mi(g.mutual_information).mean()),
            "explicitness": explicitness(z, c, n_bins, discrete_factors, seed=seed).explicitness}

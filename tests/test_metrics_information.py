"""MIG, SAP, modularity, explicitness and the Student-t interval against closed forms,
hand-computed values and an independent numpy computation."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from metasparse.metrics import (discretize, discretize_factors, explicitness, information_report, mig, modularity,
                                mutual_information_matrix, sap)
from metasparse.metrics.accuracy import mean_t_ci
from metasparse.metrics.information import discrete_entropy, mig_from_mi, modularity_from_mi


def _grid(sizes=(5, 5, 3), repeat=4):
    """Every combination of the factor values, ``repeat`` times: in the empirical
    distribution the factors are exactly independent (their mutual information is 0)."""
    return np.repeat(np.array(list(itertools.product(*map(range, sizes))), dtype=np.float64), repeat, axis=0)


def _rot45(z):
    """Factors 0 and 1 mixed at 45 degrees, factor 2 kept."""
    return np.c_[(z[:, 0] + z[:, 1]) / math.sqrt(2), (z[:, 0] - z[:, 1]) / math.sqrt(2), z[:, 2:]]


def _mi_from_counts(a, b):
    """Plug-in mutual information (nats) of two integer label vectors, from their joint counts."""
    ia, ib = np.unique(a, return_inverse=True)[1], np.unique(b, return_inverse=True)[1]
    joint = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(joint, (ia, ib), 1.0)
    p = joint / joint.sum()
    outer = p.sum(1, keepdims=True) * p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / outer[nz])).sum())


def _entropy_from_counts(a):
    p = np.unique(a, return_counts=True)[1] / len(a)
    return float(-(p * np.log(p)).sum())


def test_mutual_information_by_hand():
    # z = 0 0 1 1, c = 0 1 1 1: p(0,0) = p(0,1) = 1/4, p(1,1) = 1/2; p(z) = 1/2, 1/2; p(c) = 1/4, 3/4
    z = np.array([[0.0], [0.0], [1.0], [1.0]])
    c = np.array([[0.0], [1.0], [1.0], [1.0]])
    want = 0.25 * math.log(2) + 0.25 * math.log(2 / 3) + 0.5 * math.log(4 / 3)
    assert mutual_information_matrix(z, c, n_bins=2)[0, 0] == pytest.approx(want, abs=1e-12)
    assert discrete_entropy(discretize_factors(z, 2)[0])[0] == pytest.approx(math.log(2), abs=1e-12)
    # an invertible relabelling of the code keeps I; with the factor itself I = H
    assert mutual_information_matrix(z, -3 * c + 1, n_bins=2)[0, 0] == pytest.approx(want, abs=1e-12)
    assert mutual_information_matrix(z, z, n_bins=2)[0, 0] == pytest.approx(math.log(2), abs=1e-12)


def test_discretize_is_numpys_equal_width_histogram():
    x = np.random.default_rng(0).standard_normal((500, 3)) * [1.0, 10.0, 0.1]
    b = discretize(x, 7)
    assert b.min() == 0 and b.max() == 6
    for j in range(3):
        np.testing.assert_array_equal(np.bincount(b[:, j], minlength=7), np.histogram(x[:, j], bins=7)[0])
    assert len(np.unique(discretize(np.full((5, 1), 2.5), 20))) == 1          # a constant column: one bin
    z = np.c_[np.repeat([0.0, 0.01, 1.0], 10), np.linspace(0, 1, 30)]
    labels, discrete = discretize_factors(z, n_bins=20)
    assert discrete.tolist() == [True, False]                                   # 3 values <= 20; 30 values > 20
    assert sorted(set(labels[:, 0])) == [0, 1, 2]                               # 0 and 0.01 stay apart
    assert discretize_factors(z, 20, discrete_factors=False)[0][:, 0].tolist().count(0) == 20


def test_mig_matches_an_independent_numpy_computation():
    rng = np.random.default_rng(3)
    n, sizes, n_bins = 3000, (2, 4, 7), 10
    z = np.stack([rng.integers(0, s, n) for s in sizes], axis=1).astype(float)
    c = np.c_[z[:, 0] + 0.8 * rng.standard_normal(n), z[:, 1] + z[:, 2] + rng.standard_normal(n),
              z[:, 2] + 0.3 * rng.standard_normal(n), rng.uniform(size=n)]
    # bins written out: floor((x - min) / width), the maximum in the last bin
    lo, hi = c.min(0), c.max(0)
    cb = np.minimum(np.floor((c - lo) / (hi - lo) * n_bins), n_bins - 1).astype(int)
    mi = np.array([[_mi_from_counts(cb[:, j], z[:, k]) for k in range(3)] for j in range(4)])
    h = np.array([_entropy_from_counts(z[:, k]) for k in range(3)])
    top = np.sort(mi, axis=0)
    want = np.mean((top[-1] - top[-2]) / h)
    res = mig(z, c, n_bins=n_bins)
    np.testing.assert_allclose(res.mutual_information, mi, atol=1e-12)
    np.testing.assert_allclose(res.entropy, h, atol=1e-12)
    assert res.mig == pytest.approx(want, abs=1e-12) and 0.05 < res.mig < 0.95
    assert res.discrete.tolist() == [True, True, True]
    # modularity from the same matrix, written out: 1 - sum_k (m_ik - t_ik)^2 / (theta_i^2 (M - 1))
    theta = mi.max(1)
    dev = (mi ** 2).sum(1) - theta ** 2
    np.testing.assert_allclose(modularity(z, c, n_bins=n_bins).per_code, 1 - dev / (theta ** 2 * 2), atol=1e-12)


def test_permuted_rescaled_identity_scores_one():
    z = _grid()
    codes = z[:, [2, 0, 1]] * np.array([-3.0, 0.5, 7.0]) + 2.0
    g = mig(z, codes)
    assert g.mig == pytest.approx(1.0, abs=1e-12)                 # exact: distinct values fall in distinct bins
    np.testing.assert_allclose(g.mutual_information[[1, 2, 0], [0, 1, 2]], g.entropy, atol=1e-12)
    assert modularity(z, codes).modularity == pytest.approx(1.0, abs=1e-12)
    assert sap(z, codes).sap == pytest.approx(1.0, abs=0.05)
    assert explicitness(z, codes).explicitness > 0.99


def test_identity_on_continuous_factors_is_close_to_one():
    z = np.random.default_rng(0).standard_normal((3000, 4))
    codes = z[:, [3, 1, 0, 2]] * np.array([2.0, -1.0, 0.3, 5.0])
    r = information_report(z, codes)
    assert r["mig"] > 0.9 and r["sap"] > 0.95 and r["modularity"] > 0.99 and r["explicitness"] > 0.97
    assert not mig(z, codes).discrete.any()                      # 3000 distinct values: binned


def test_rotation_of_two_factors_is_entangled():
    z = _grid()                                                     # factors 0 and 1 both have 5 values
    codes = _rot45(z)
    g = mig(z, codes)
    # c0 = z0 + z1 and c1 = z0 - z1 say exactly as much about z0 (and about z1): no gap
    np.testing.assert_allclose(g.per_factor, [0.0, 0.0, 1.0], atol=1e-12)
    # the mixed codes inform equally about two factors: 1 - 1/(M - 1) = 1/2 each, the kept code 1
    np.testing.assert_allclose(modularity(z, codes).per_code, [0.5, 0.5, 1.0], atol=1e-12)
    ident = sap(z, z)
    rot = sap(z, codes)
    assert rot.per_factor[2] == pytest.approx(ident.per_factor[2]) and rot.sap < ident.sap - 0.3
    assert rot.per_factor[:2].max() < 0.5
    # explicitness reads all codes linearly: an invertible linear mixing keeps it
    assert explicitness(z, codes).explicitness > 0.99


def test_constant_code_scores_zero_and_chance():
    z = _grid()
    const = np.full((len(z), 3), 4.2)
    assert mig(z, const).mig == 0.0
    assert sap(z, const).sap == 0.0
    m = modularity(z, const)
    assert m.modularity == 0.0 and np.all(m.mutual_information == 0)          # no information: 0 by convention
    e = explicitness(z, const)
    np.testing.assert_allclose(e.per_factor, 0.5, atol=1e-12)                # constant scores: chance AUC
    # one dead code among perfect ones: it alone scores 0
    mixed = np.c_[z[:, :2], const[:, 0]]
    np.testing.assert_allclose(modularity(z, mixed).per_code, [1.0, 1.0, 0.0], atol=1e-12)


def test_code_permutation_changes_nothing():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((1200, 3))
    codes = np.c_[z @ rng.standard_normal((3, 3)), rng.standard_normal(1200)]
    perm = codes[:, [3, 1, 0, 2]]
    a, b = information_report(z, codes, seed=4), information_report(z, perm, seed=4)
    for key in ("mig", "sap", "modularity"):
        assert a[key] == pytest.approx(b[key], abs=1e-12)
    assert a["explicitness"] == pytest.approx(b["explicitness"], abs=1e-4)   # the same convex fit, features reordered
    s1, s2 = sap(z, codes, seed=4), sap(z, perm, seed=4)
    np.testing.assert_allclose(s1.scores[[3, 1, 0, 2]], s2.scores, atol=1e-12)


def test_same_seed_same_numbers_and_torch_input():
    rng = np.random.default_rng(2)
    z = rng.integers(0, 4, (600, 3)).astype(float)
    codes = z + rng.standard_normal((600, 3))
    a = information_report(z, codes, seed=5)
    assert a == information_report(z, codes, seed=5)
    assert a == information_report(torch.as_tensor(z), torch.as_tensor(codes), seed=5)
    assert sap(z, codes, seed=5).sap != sap(z, codes, seed=6).sap          # the split follows the seed
    small = information_report(z, codes, seed=5, max_samples=300)
    assert set(small) == {"mig", "sap", "modularity", "explicitness"} and small != a


def test_bad_input_is_one_clear_error():
    z = _grid()
    codes = z.copy()
    flat = z.copy()
    flat[:, 1] = 3.0
    for fn in (mig, sap, explicitness):
        with pytest.raises(ValueError, match="factor 1") as e:
            fn(flat, codes)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="same number of samples"):
        mig(z, codes[:-1])
    with pytest.raises(ValueError, match="2-D"):
        sap(z[:, 0], codes)
    with pytest.raises(ValueError, match="at least 2 codes"):
        mig(z, codes[:, :1])
    with pytest.raises(ValueError, match="at least 2 codes"):
        sap(z, codes[:, :1])
    with pytest.raises(ValueError, match="at least 2 factors"):
        modularity(z[:, :1], codes)
    with pytest.raises(ValueError, match="n_bins"):
        mig(z, codes, n_bins=1)
    with pytest.raises(ValueError, match="discrete_factors"):
        mig(z, codes, discrete_factors=[True, False])
    with pytest.raises(ValueError, match="too few samples"):
        sap(z[:3], codes[:3])
    with pytest.raises(ValueError, match="test_fraction"):
        explicitness(z, codes, test_fraction=0.0)
    with pytest.raises(ValueError, match="NaN"):
        mig(z, codes * np.nan)
    with pytest.raises(ValueError, match="at least 2 codes"):
        mig_from_mi(np.ones((1, 3)), np.ones(3))
    assert modularity_from_mi(np.array([[0.0, 0.0], [1.0, 0.0]])).tolist() == [0.0, 1.0]


def test_mean_t_ci_is_scipys_t_interval():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 12):
        x = rng.normal(0.6, 0.1, n)
        lo, hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
        assert mean_t_ci(x) == pytest.approx((hi - lo) / 2, rel=1e-12)
        lo, hi = stats.t.interval(0.9, n - 1, loc=x.mean(), scale=stats.sem(x))
        assert mean_t_ci(list(x), level=0.9) == pytest.approx((hi - lo) / 2, rel=1e-12)
    assert mean_t_ci([0.7]) is None                     # no spread from one seed
    assert mean_t_ci([0.5, 0.5, 0.5]) == 0.0
    with pytest.raises(ValueError, match="no values"):
        mean_t_ci([])
    with pytest.raises(ValueError, match="level"):
        mean_t_ci([1.0, 2.0], level=95)

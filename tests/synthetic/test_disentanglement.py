"""MCC, linear R^2 and DCI against hand-computed values and their defining invariances."""
import numpy as np
import pytest
import torch

from metasparse.metrics import (correlation_matrix, dci, disentanglement_report, linear_r2, match_factors,
                                mean_corr_coef)
from metasparse.metrics.disentanglement import dci_from_importance


def _latents(n=3000, m=5, seed=0):
    return np.random.default_rng(seed).standard_normal((n, m))


def _white(n=400, m=2, seed=0):
    """Columns exactly centred, uncorrelated, unit variance (so correlations are exact)."""
    a = np.random.default_rng(seed).standard_normal((n, m))
    a -= a.mean(0)
    q, _ = np.linalg.qr(a)
    return q * np.sqrt(n)


def test_identity_and_permutation_scaling_are_perfect():
    z = _latents()
    perm = z[:, [2, 0, 4, 1, 3]] * np.array([3.0, -0.5, 2.0, -7.0, 0.1]) + 5.0
    for codes in (z, perm):
        r = disentanglement_report(z, codes)
        assert r["mcc"] == pytest.approx(1.0, abs=1e-12)
        assert r["mcc_spearman"] == pytest.approx(1.0, abs=1e-12)
        assert r["linear_r2"] == pytest.approx(1.0, abs=1e-9)
        assert r["dci_disentanglement"] == pytest.approx(1.0, abs=1e-9)
        assert r["dci_completeness"] == pytest.approx(1.0, abs=1e-9)
    m = match_factors(z, perm)
    np.testing.assert_array_equal(m.code_index[np.argsort(m.factor_index)], [1, 3, 0, 4, 2])


def test_rotation_is_informative_but_entangled():
    z = _latents()
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((5, 5)))
    codes = z @ q.T
    assert mean_corr_coef(z, codes) < 0.9
    assert linear_r2(z, codes) == pytest.approx(1.0, abs=1e-9)
    d = dci(z, codes)
    assert d.disentanglement < 0.5 and d.informativeness > 0.99


def test_mcc_hand_case():
    # codes (z1, z1 + z2): |corr| = [[1, 1/sqrt2], [0, 1/sqrt2]]; best matching 1 + 1/sqrt2
    z = _white()
    codes = np.c_[z[:, 0], z[:, 0] + z[:, 1]]
    np.testing.assert_allclose(correlation_matrix(z, codes), [[1, 2 ** -0.5], [0, 2 ** -0.5]], atol=1e-12)
    assert mean_corr_coef(z, codes) == pytest.approx((1 + 2 ** -0.5) / 2, abs=1e-12)
    # swapped codes: the matching follows
    assert mean_corr_coef(z, codes[:, ::-1]) == pytest.approx((1 + 2 ** -0.5) / 2, abs=1e-12)


def test_spearman_sees_through_monotone_maps():
    z = _latents(m=3)
    codes = np.exp(z[:, [1, 2, 0]])
    assert mean_corr_coef(z, codes, "spearman") == pytest.approx(1.0, abs=1e-12)
    assert mean_corr_coef(z, codes, "pearson") < 0.9


def test_mcc_accepts_torch_and_more_codes_than_factors():
    z = _latents(m=3)
    codes = torch.as_tensor(np.c_[z, np.random.default_rng(5).standard_normal((len(z), 2))])
    assert mean_corr_coef(torch.as_tensor(z), codes) == pytest.approx(1.0, abs=1e-12)
    assert correlation_matrix(z, np.c_[z, np.ones(len(z))])[:, -1].tolist() == [0.0, 0.0, 0.0]


def test_dci_from_importance_hand_cases():
    assert dci_from_importance(np.eye(2)) == pytest.approx((1.0, 1.0))
    assert dci_from_importance(np.ones((2, 2))) == pytest.approx((0.0, 0.0))
    # both codes capture factor 0 only: each code is disentangled, factor 0 is split in two
    assert dci_from_importance(np.array([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx((1.0, 0.0))
    # R = [[2, 0], [1, 1]]: D = 0.5 * 1 + 0.5 * 0; C = mean(1 - H2(2/3, 1/3), 1)
    h = -(2 / 3 * np.log2(2 / 3) + 1 / 3 * np.log2(1 / 3))
    d, c = dci_from_importance(np.array([[2.0, 0.0], [1.0, 1.0]]))
    assert d == pytest.approx(0.5) and c == pytest.approx((1 - h + 1) / 2)


def test_dci_with_trees_and_noise():
    z = _latents(n=1500, m=3)
    assert dci(z, z[:, [2, 0, 1]] * 4, importance="random_forest", n_estimators=20).disentanglement > 0.9
    noise = np.random.default_rng(9).standard_normal(z.shape)
    assert dci(z, noise).informativeness < 0.05
    assert linear_r2(z, noise) < 0.05


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same number of samples"):
        mean_corr_coef(np.zeros((10, 2)), np.zeros((9, 2)))
    with pytest.raises(ValueError, match="2-D"):
        linear_r2(np.zeros(10), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="NaN"):
        mean_corr_coef(np.full((10, 2), np.nan), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="importance must be"):
        dci(_latents(n=50), _latents(n=50), importance="xgboost")
    with pytest.raises(ValueError, match="method"):
        mean_corr_coef(_latents(n=50), _latents(n=50), method="kendall")


def test_mcc_interval_brackets_the_score_and_is_exact_for_a_permuted_code():
    import numpy as np
    from metasparse.metrics.disentanglement import mcc_interval, mean_corr_coef
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 5))
    lo, hi = mcc_interval(z, 3.0 * z[:, [2, 0, 4, 1, 3]])
    assert abs(lo - 1) < 1e-12 and abs(hi - 1) < 1e-12
    mixed = z @ np.linalg.qr(rng.normal(size=(5, 5)))[0]
    score = mean_corr_coef(z, mixed)
    lo, hi = mcc_interval(z, mixed, n_boot=100)
    assert lo <= score <= hi and hi - lo < 0.2 and hi < 0.99

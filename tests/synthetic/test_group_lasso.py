"""Batched group-Lasso / ridge regression: values vs sklearn and cvxpy, gradients vs finite differences."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso, MultiTaskLasso, Ridge

from metasparse.solvers.group_lasso import (block_soft_threshold, group_lasso_lambda_max, ridge_regression,
                                            solve_group_lasso)


def _problem(b=3, n=30, d=8, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    w = torch.zeros(b, d, k, dtype=torch.float64)
    w[:, :3] = torch.randn(b, 3, k, generator=g, dtype=torch.float64)
    y = f @ w + 1.5 + 0.3 * torch.randn(b, n, k, generator=g, dtype=torch.float64)
    return f, y


@pytest.mark.parametrize("lam", [0.02, 0.2, 0.6])
def test_matches_sklearn_multitask_lasso(lam):
    f, y = _problem()
    sol = solve_group_lasso(f, y, lam, tol=1e-12, max_iter=20000)
    for b in range(f.shape[0]):
        ref = MultiTaskLasso(alpha=lam, tol=1e-12, max_iter=100000).fit(f[b].numpy(), y[b].numpy())
        np.testing.assert_allclose(sol.weights[b].numpy(), ref.coef_.T, atol=1e-7)
        np.testing.assert_allclose(sol.intercept[b].numpy(), ref.intercept_, atol=1e-7)
        np.testing.assert_array_equal(sol.active[b].numpy(), np.abs(ref.coef_).sum(0) > 0)


def test_k1_is_the_lasso_and_no_intercept_path():
    f, y = _problem(k=1)
    sol = solve_group_lasso(f, y[..., 0], 0.1, tol=1e-12, max_iter=20000, fit_intercept=False)
    assert sol.weights.shape == (3, 8, 1)
    for b in range(3):
        ref = Lasso(alpha=0.1, tol=1e-12, max_iter=100000, fit_intercept=False).fit(f[b].numpy(), y[b, :, 0].numpy())
        np.testing.assert_allclose(sol.weights[b, :, 0].numpy(), ref.coef_, atol=1e-7)
    assert (sol.intercept == 0).all()


def test_matches_cvxpy_with_ridge_term():
    cp = pytest.importorskip("cvxpy")
    f, y = _problem(b=1, n=20, d=6, k=3)
    lam, ridge = 0.15, 0.3
    sol = solve_group_lasso(f, y, lam, ridge=ridge, tol=1e-12, max_iter=20000)
    fc, yc = (f[0] - f[0].mean(0)).numpy(), (y[0] - y[0].mean(0)).numpy()
    w = cp.Variable((6, 3))
    obj = cp.sum_squares(yc - fc @ w) / (2 * 20) + lam * cp.sum(cp.norm(w, 2, axis=1)) + ridge / 2 * cp.sum_squares(w)
    cp.Problem(cp.Minimize(obj)).solve(solver=cp.CLARABEL)
    np.testing.assert_allclose(sol.weights[0].numpy(), w.value, atol=1e-5)


def test_lambda_max_is_the_zero_threshold_and_ratio_uses_it():
    f, y = _problem()
    lmax = group_lasso_lambda_max(f, y)
    assert (solve_group_lasso(f, y, lmax * 1.0001).weights == 0).all()
    assert solve_group_lasso(f, y, lmax * 0.99).active.any(1).all()
    a = solve_group_lasso(f, y, lambda_ratio=0.3, tol=1e-10)
    b = solve_group_lasso(f, y, 0.3 * lmax, tol=1e-10)
    torch.testing.assert_close(a.weights, b.weights)
    # a larger ratio uses fewer features
    assert (solve_group_lasso(f, y, lambda_ratio=0.8).used_fraction <= a.used_fraction).all()


def test_block_soft_threshold():
    v = torch.tensor([[[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]]])
    out = block_soft_threshold(v, torch.tensor(1.0))
    torch.testing.assert_close(out, torch.tensor([[[2.4, 3.2], [0.0, 0.0], [0.0, 0.0]]]))


def test_implicit_gradients_match_finite_differences():
    f, y = _problem(b=2, n=25, d=6, k=2, seed=1)
    q = torch.randn(2, 7, 6, dtype=torch.float64)
    lam = torch.tensor([0.1, 0.25], dtype=torch.float64)
    f.requires_grad_(True), y.requires_grad_(True), lam.requires_grad_(True)

    def loss(f, y, lam):
        s = solve_group_lasso(f, y, lam, tol=1e-13, max_iter=20000)
        return (s.predict(q) ** 2).sum() + (s.weights ** 3).sum()

    assert torch.autograd.gradcheck(loss, (f, y, lam), eps=1e-6, atol=1e-5, fast_mode=True)
    sol = solve_group_lasso(f, y, lam, tol=1e-13, max_iter=20000)
    assert (~sol.active).any()             # the check covered inactive rows too


def test_implicit_gradients_with_ridge_and_ratio():
    f, y = _problem(b=2, n=25, d=6, k=1, seed=2)
    f.requires_grad_(True)
    q = torch.randn(2, 5, 6, dtype=torch.float64)
    lam = 0.2 * group_lasso_lambda_max(f, y).detach()

    def loss(f, lam=lam):
        return solve_group_lasso(f, y, lam, ridge=0.1, tol=1e-13, max_iter=20000).predict(q).sum()

    assert torch.autograd.gradcheck(loss, (f,), eps=1e-6, atol=1e-5, fast_mode=True)
    # lambda_ratio treats lambda_max as a constant: same gradient as the fixed lam it resolves to
    g_fixed, = torch.autograd.grad(loss(f), f)
    g_ratio, = torch.autograd.grad(
        solve_group_lasso(f, y, lambda_ratio=0.2, ridge=0.1, tol=1e-13, max_iter=20000).predict(q).sum(), f)
    torch.testing.assert_close(g_ratio, g_fixed)


def test_ridge_matches_sklearn_and_is_differentiable():
    f, y = _problem()
    lam = 0.4
    sol = ridge_regression(f, y, lam)
    n = f.shape[1]
    for b in range(3):
        ref = Ridge(alpha=n * lam).fit(f[b].numpy(), y[b].numpy())
        np.testing.assert_allclose(sol.weights[b].numpy(), ref.coef_.T, atol=1e-10)
        np.testing.assert_allclose(sol.intercept[b].numpy(), ref.intercept_, atol=1e-10)
    f.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: ridge_regression(f, y, lam).weights.sum(), (f,))


def test_bad_inputs():
    f, y = _problem()
    with pytest.raises(ValueError, match="exactly one"):
        solve_group_lasso(f, y)
    with pytest.raises(ValueError, match="features must be"):
        solve_group_lasso(f[0], y, 0.1)
    with pytest.raises(ValueError, match="targets must be"):
        solve_group_lasso(f, y[:, :5], 0.1)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        solve_group_lasso(f, y, -1.0)

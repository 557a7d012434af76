import pytest
import torch

from metasparse.solvers import GroupSparseSVMDual, lambda_max
from metasparse.solvers.cvxpy_reference import lambda_max_reference
from metasparse.solvers.objectives import row_norms

from solver_problems import make_problem


def test_rho0_lambda_max_is_certified_against_cvxpy():
    X, labels, Y = make_problem(B=2, n=12, d=15, k=4, seed=20)
    lmax, Lam0 = lambda_max(X, Y, 1.0, 0.0, rtol=5e-3)
    for b in range(2):
        ref = lambda_max_reference(X[b].numpy(), labels[b].numpy(), 4)
        assert ref - 1e-7 <= float(lmax[b]) <= ref * (1 + 5e-3)
    assert torch.all(Lam0[Y > 0] == 0) and torch.allclose(Lam0.sum(-1), torch.ones(2, 12, dtype=torch.float64))


@pytest.mark.parametrize("rho", [0.0, 1.0])
def test_weights_zero_at_ratio_one_and_active_below(rho):
    X, labels, Y = make_problem(B=2, n=12, d=15, k=4, seed=21)
    lmax, Lam0 = lambda_max(X, Y, 1.0, rho)
    solver = GroupSparseSVMDual(tol=1e-10, max_iter=20000)
    at = solver.run(X, Y, lmax, 1.0, rho, init=Lam0)
    # at the boundary itself the solver's W is zero up to rounding (a Newton step that moves
    # Lam by 1e-16 can lift a row norm one ulp above lambda1; the head sets W = 0 exactly
    # for lambda1 >= lambda_max, tests/heads), and exactly zero a hair above it
    assert float(at.weights.abs().max()) <= 1e-12 * float(X.abs().max()) and torch.all(at.gap.abs() <= 1e-10)
    above = solver.run(X, Y, lmax * (1 + 1e-12), 1.0, rho, init=Lam0)
    assert torch.all(above.weights == 0) and torch.all(above.gap.abs() <= 1e-10)
    below = solver.run(X, Y, 0.99 * lmax, 1.0, rho, init=Lam0)
    assert torch.all((row_norms(below.weights) > 0).sum(-1) >= 1)


def test_rho_positive_closed_form_matches_dual_solution_at_zero():
    X, labels, Y = make_problem(B=2, seed=22)
    lmax, Lam0 = lambda_max(X, Y, 2.0, 0.5)
    sol = GroupSparseSVMDual(tol=1e-12, max_iter=20000).run(X, Y, 1.01 * lmax, 2.0, 0.5)
    assert torch.allclose(sol.dual, Lam0, atol=1e-6)

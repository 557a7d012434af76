import numpy as np
import torch
from scipy.optimize import minimize

from metasparse.solvers.simplex import project_simplex, project_l1_ball


def _reference_projection(v):
    """Euclidean projection by a generic constrained QP solve (independent of sorting)."""
    k = len(v)
    res = minimize(lambda x: 0.5 * np.sum((x - v) ** 2), np.full(k, 1.0 / k), jac=lambda x: x - v,
                   constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1.0, "jac": lambda x: np.ones(k)}],
                   bounds=[(0, None)] * k, method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    return res.x


def test_projection_matches_qp_and_is_feasible():
    g = torch.Generator().manual_seed(0)
    V = torch.randn(4, 7, 5, generator=g, dtype=torch.float64) * 2
    P = project_simplex(V)
    assert torch.all(P >= 0)
    assert torch.allclose(P.sum(-1), torch.ones(4, 7, dtype=torch.float64), atol=1e-12)
    for row, prow in zip(V.reshape(-1, 5)[:10], P.reshape(-1, 5)[:10]):
        assert np.allclose(prow.numpy(), _reference_projection(row.numpy()), atol=1e-6)


def test_projection_fixed_points_ties_and_exact_zeros():
    x = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [5.0, 5.0, -3.0]], dtype=torch.float64)
    P = project_simplex(x)
    assert torch.allclose(P[:2], x[:2])
    assert torch.allclose(P[2], torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    assert P[2, 2] == 0.0   # exactly zero, the active set is read from it


def test_l1_ball():
    v = torch.tensor([[0.1, 0.2], [3.0, 1.0]])
    P = project_l1_ball(v)
    assert torch.allclose(P[0], v[0]) and torch.allclose(P[1], torch.tensor([1.0, 0.0]))

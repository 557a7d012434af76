"""The face geometry shared by the Newton solvers and the implicit backward
(metasparse.solvers.face), against dense linear algebra written out independently."""
import pytest
import torch

from metasparse.solvers.face import DualHessian, Face, dual_hessian, on_face
from metasparse.solvers.linalg import spd_solve
from metasparse.solvers.objectives import column_norms, dual_features, zero_weight_dual
from metasparse.solvers.simplex import project_simplex

from solver_problems import make_problem


def _point(B, n, k, seed, sparsity=0.4):
    """Random simplex rows with some exact zeros (a face that is not the whole simplex)."""
    g = torch.Generator().manual_seed(seed)
    P = torch.rand(B, n, k, generator=g, dtype=torch.float64)
    P = torch.where(torch.rand(B, n, k, generator=g, dtype=torch.float64) < sparsity, 0.0, P)
    P[..., 0] += 0.1
    return P / P.sum(-1, keepdim=True)


def _dense_basis(face: Face):
    """Q (B, n*k, n*(k-1)) as a dense matrix, from its definition: column (i, l) is
    e_{i, cls_il} - e_{i, ref_i}."""
    B, n, km = face.cls.shape
    k = km + 1
    Q = torch.zeros(B, n * k, n * km, dtype=torch.float64)
    for b in range(B):
        for i in range(n):
            for l in range(km):
                Q[b, i * k + int(face.cls[b, i, l]), i * km + l] += 1.0
                Q[b, i * k + int(face.ref[b, i, 0]), i * km + l] -= 1.0
    return Q


def test_expand_and_reduce_are_q_and_its_transpose():
    B, n, k = 2, 4, 5
    face = Face.of(_point(B, n, k, 0))
    Q = _dense_basis(face)
    z = torch.randn(B, n, k - 1, dtype=torch.float64)
    r = torch.randn(B, n, k, dtype=torch.float64)
    u = face.expand(z)
    assert torch.allclose(u.reshape(B, -1), (Q @ z.reshape(B, -1, 1))[..., 0], atol=1e-14)
    assert torch.allclose(u.sum(-1), torch.zeros(B, n, dtype=torch.float64), atol=1e-14)   # tangent
    assert torch.allclose(face.reduce(r).reshape(B, -1), (Q.transpose(1, 2) @ r.reshape(B, -1, 1))[..., 0],
                          atol=1e-14)


@pytest.mark.parametrize("lambda1", [0.0, 0.3])
def test_dual_hessian_operator_matches_dense(lambda1):
    X, _, Y = make_problem(B=2, n=6, d=9, k=3, seed=1)
    B, n, k = Y.shape
    l1 = torch.full((B,), lambda1, dtype=torch.float64)
    l2 = torch.full((B,), 0.7, dtype=torch.float64)
    rho = torch.full((B,), 0.5, dtype=torch.float64)
    Lam = project_simplex(zero_weight_dual(Y, l2, rho) + 0.3 * torch.randn(B, n, k, dtype=torch.float64))
    dense = dual_hessian(Lam, X, Y, l1, l2, rho)                         # (B, nk, nk)
    if lambda1 > 0:
        Vt = dual_features(X, Y, Lam).transpose(1, 2)
        M = DualHessian.at(X, Vt, column_norms(Vt), l1, l2, rho, solve_dtype=torch.float64)
    else:
        M = DualHessian.gram(X @ X.transpose(1, 2), l2, rho, solve_dtype=torch.float64)
    D = torch.randn(B, n, k, dtype=torch.float64)
    assert torch.allclose(M.apply(D).reshape(B, -1), (dense @ D.reshape(B, -1, 1))[..., 0], atol=1e-10)
    face = Face.of(Lam)
    Q = _dense_basis(face)
    assert torch.allclose(M.reduced(face), Q.transpose(1, 2) @ dense @ Q, atol=1e-10)


def test_face_solve_is_the_newton_step_on_the_face():
    """u in T (zero off the face, rows summing to 0) with Pi_T (M u - rhs) = 0: checked
    against the orthogonal projector onto T built densely."""
    X, _, Y = make_problem(B=2, n=5, d=7, k=4, seed=2)
    B, n, k = Y.shape
    l2 = torch.full((B,), 1.3, dtype=torch.float64)
    rho = torch.full((B,), 0.8, dtype=torch.float64)
    Lam = _point(B, n, k, 3)
    M = DualHessian.gram(X @ X.transpose(1, 2), l2, rho, solve_dtype=torch.float64)
    face = Face.of(Lam, on_face(Lam))
    rhs = torch.randn(B, n, k, dtype=torch.float64)
    u = face.solve(M.reduced(face), rhs)
    support = on_face(Lam)
    assert torch.all(u[~support] == 0)
    assert torch.allclose(u.sum(-1), torch.zeros(B, n, dtype=torch.float64), atol=1e-12)
    s = support.to(torch.float64)
    P = torch.diag_embed(s) - s[..., :, None] * s[..., None, :] / s.sum(-1)[..., None, None]   # (B, n, k, k)
    resid = M.apply(u) - rhs
    assert torch.allclose((P @ resid[..., None])[..., 0], torch.zeros_like(rhs), atol=1e-9)


def test_spd_solve_zero_fallback_needs_no_host_sync():
    from metasparse.profiling import count_ops
    H = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    H[1] = -H[1]                                    # not positive definite: Cholesky fails
    b = torch.ones(2, 3, dtype=torch.float64)
    with count_ops() as c:
        x = spd_solve(H, b, on_failure="zero")
    assert c.host_syncs == 0
    assert torch.allclose(x[0], b[0]) and torch.all(x[1] == 0)
    assert torch.allclose(spd_solve(H[:1], b[:1]), b[:1])
    with pytest.raises(ValueError, match="on_failure"):
        spd_solve(H, b, on_failure="ignore")

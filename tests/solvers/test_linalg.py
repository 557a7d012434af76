"""spd_solve: Cholesky with a float64 and a pseudo-inverse fallback, against numpy."""
import numpy as np
import torch

from metasparse.solvers.group_lasso import solve_group_lasso
from metasparse.solvers.linalg import spd_solve


def test_spd_solve_falls_back_where_float32_cholesky_fails():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 6, 6, generator=g, dtype=torch.float64)
    H = A @ A.transpose(1, 2) + 0.5 * torch.eye(6, dtype=torch.float64)
    # episode 1: positive definite in float64 (det 1e-10 in its leading 2x2 block) but
    # exactly singular once rounded to float32 (1 + 1e-10 -> 1): float32 Cholesky fails
    H[1] = torch.eye(6, dtype=torch.float64)
    H[1, :2, :2] = torch.tensor([[1.0, 1.0], [1.0, 1.0 + 1e-10]], dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    b = torch.randn(2, 6, generator=g, dtype=torch.float64)
    assert torch.linalg.cholesky_ex(H.float())[1].tolist()[1] != 0
    x = spd_solve(H.float(), b.float()).double()
    assert np.allclose(x[0].numpy(), np.linalg.solve(H[0].numpy(), b[0].numpy()), rtol=1e-4, atol=1e-5)
    # redone in float64 on the float32 matrix: small residual despite the 1e9 condition number
    H1 = H[1].float().double().numpy()     # exactly singular: a least-squares solution
    assert np.isfinite(x[1].numpy()).all()
    assert np.linalg.norm(H1 @ x[1].numpy() - b[1].float().double().numpy()) <= np.linalg.norm(b[1].numpy())
    # singular in float64 too (rank 5, consistent right-hand side): the minimum-norm solution
    S = (Q @ torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0, 1.0, -1e-3], dtype=torch.float64)) @ Q.T)[None]
    rhs = (S[0] @ torch.randn(6, generator=g, dtype=torch.float64))[None]
    xs = spd_solve(S, rhs)
    assert torch.isfinite(xs).all()


def test_group_lasso_gradient_with_nearly_collinear_features_in_float32():
    """Nearly collinear feature columns in float32: the implicit Hessian is positive definite
    but too ill-conditioned for a float32 Cholesky, which used to raise; now the solve is
    redone in float64 and the gradient is finite (it cannot agree with the float64 run's:
    at a condition number ~1e8 the float32 problem is a different problem)."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 30, 5, generator=g, dtype=torch.float64)
    feats64 = torch.cat([base, base[:, :, :1] + 1e-4 * torch.randn(4, 30, 1, generator=g, dtype=torch.float64)], 2)
    targets = base[:, :, 0:1] + base[:, :, 5 - 1:5] + 0.01 * torch.randn(4, 30, 1, generator=g, dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        feats = feats64.to(dtype).requires_grad_()
        sol = solve_group_lasso(feats, targets.to(dtype), lambda_ratio=0.01, ridge=0.0, tol=1e-9, max_iter=20000)
        (sol.weights ** 2).sum().backward()
        assert torch.isfinite(feats.grad).all()

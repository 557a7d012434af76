r"""lambda_max: the smallest lambda1 for which the group-sparse SVM has ``W* = 0``.

``W = 0`` is optimal iff some dual point ``Lam0`` optimal at ``W = 0`` has every row
``||(X^T (Y - Lam0))_j|| <= lambda1`` (optimality of the primal at 0: the loss
subgradient ``X^T(Lam0 - Y)`` must lie in the ``lambda1`` group ball).  Hence

    lambda_max = min_{Lam0 in A} max_j ||(X^T (Y - Lam0))_j||,

with ``A`` the dual optima at ``W = 0``:

* ``rho > 0``: ``A = {proj_simplex_rows(Y + (lambda2/rho) Delta)}`` (a single point,
  paper.md), so lambda_max is in closed form;
* ``rho = 0``: ``A = {rows in the simplex, Lam_{i, y_i} = 0}`` (every wrong class is
  tied in the hinge at W = 0).  The min-max problem is the bilinear saddle point

      min_{Lam in A} max_{||U||_{2,1} <= 1} <U, X^T (Y - Lam)>,

  solved by restarted primal-dual hybrid gradient (Chambolle-Pock) with *certified*
  bounds: every ``Lam`` in A gives an upper bound ``max_j ||V_j(Lam)||`` and every
  ``U`` in the group-l1 ball a lower bound
  ``<U, X^T Y> - max_{Lam in A} <X U, Lam> = sum_i [(XU)_{i y_i} - max_{l != y_i} (XU)_{il}]``.
  It stops when ``(upper - lower) <= rtol * upper`` and returns the *upper* bound with
  its ``Lam0`` (so ``lambda1 >= lambda_max`` provably gives ``W* = 0``, with ``Lam0`` a
  zero-gap dual certificate, and ``lambda1 < (1 - rtol) lambda_max`` provably gives a
  non-zero ``W*``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .objectives import as_episode_vector, dual_features, row_norms, zero_weight_dual
from .simplex import project_simplex
from .threads import solver_threads

__all__ = ["lambda_max", "project_wrong_classes", "project_group_l1_ball"]


def project_wrong_classes(V: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Project rows onto ``{simplex, entry at the label = 0}`` (the set A for rho = 0)."""
    off_max = torch.where(Y > 0, torch.full_like(V, -torch.inf), V).amax(-1, keepdim=True)
    masked = torch.where(Y > 0, off_max - 2.0, V)   # below any threshold: projects to 0
    return project_simplex(masked) * (1.0 - Y)


def project_group_l1_ball(U: torch.Tensor) -> torch.Tensor:
    r"""Project ``U`` (B, d, k) onto ``{sum_j ||U_j|| <= 1}`` (rows shrunk by the l1-ball
    projection of their norms)."""
    r = row_norms(U)
    inside = r.sum(-1, keepdim=True) <= 1.0
    r_new = torch.where(inside, r, project_simplex(r))
    scale = torch.where(r > 0, r_new / torch.where(r > 0, r, torch.ones_like(r)), torch.zeros_like(r))
    return U * scale.unsqueeze(-1)


def _norms_like_solver(X, Y, Lam):
    """||(X^T (Y - Lam))_j|| computed exactly as the solver's gap check does (class-major)."""
    Vt = (Y - Lam).transpose(1, 2) @ X
    return (Vt * Vt).sum(-2).sqrt()


def _lower_bound(S: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """sum_i [S_{i,y_i} - max_{l != y_i} S_il] for S = X U, (B,)."""
    s_y = (S * Y).sum(-1)
    s_off = torch.where(Y > 0, torch.full_like(S, -torch.inf), S).amax(-1)
    return (s_y - s_off).sum(-1)


@torch.no_grad()
def _lambda_max_hinge(X, Y, rtol: float, max_iter: int, working_set: int = 256):
    r"""Certified (upper, Lam, lower) for rho = 0 by PDHG on a working set of features.

    The min-max is solved on the ``m`` features with the largest ``||V_j||`` (a lower
    bound from a ``U`` supported there is valid for the full problem); the upper bound
    is re-evaluated on all features, and the working set doubles until both agree.
    """
    B, n, d = X.shape
    Lam = (1.0 - Y) / max(Y.shape[-1] - 1, 1)
    m = min(d, max(working_set, 2 * n))
    while True:
        V = dual_features(X, Y, Lam)
        idx = row_norms(V).topk(m, dim=-1).indices                          # (B, m)
        Xj = X.gather(2, idx[:, None, :].expand(B, n, m))
        up_j, Lam, lo = _pdhg(Xj, Y, rtol, max_iter, Lam)
        up = row_norms(dual_features(X, Y, Lam)).amax(-1)
        if m == d or bool((up <= up_j * (1.0 + 0.5 * rtol)).all()):
            return up, Lam, lo
        m = min(d, 2 * m)


def _pdhg(X, Y, rtol: float, max_iter: int, Lam_init, check_every: int = 10):
    B, n, d = X.shape
    dtype = X.dtype
    k = Y.shape[-1]
    XtY = X.transpose(1, 2) @ Y
    sig = torch.linalg.eigvalsh(X @ X.transpose(1, 2))[..., -1].clamp(min=0.0).sqrt()
    sig = torch.where(sig > 0, sig, torch.ones_like(sig))
    # balance the primal (Lam: entries O(1), n rows) and dual (U: unit group-l1) scales
    omega = torch.full_like(sig, float(n) ** 0.5)
    tau = (0.95 / sig * omega)[:, None, None]
    sigma = (0.95 / sig / omega)[:, None, None]

    Lam = Lam_init
    U = torch.zeros(B, d, k, dtype=dtype, device=X.device)
    V = XtY - X.transpose(1, 2) @ Lam
    best_up = row_norms(V).amax(-1)
    best_lam = Lam.clone()
    best_lo = torch.full_like(best_up, -torch.inf)
    sum_lam, sum_u, cnt = torch.zeros_like(Lam), torch.zeros_like(U), 0
    last_restart_gap = best_up.clone()
    for it in range(1, max_iter + 1):
        XU = X @ U
        Lam_new = project_wrong_classes(Lam + tau * XU, Y)
        Lam_bar = 2.0 * Lam_new - Lam
        U = project_group_l1_ball(U + sigma * (XtY - X.transpose(1, 2) @ Lam_bar))
        Lam = Lam_new
        sum_lam, sum_u, cnt = sum_lam + Lam, sum_u + U, cnt + 1
        if it % check_every == 0 or it == max_iter:
            avg_lam, avg_u = sum_lam / cnt, sum_u / cnt
            for L_c, U_c in ((Lam, U), (avg_lam, avg_u)):
                up = row_norms(XtY - X.transpose(1, 2) @ L_c).amax(-1)
                better = up < best_up
                best_up = torch.where(better, up, best_up)
                best_lam = torch.where(better[:, None, None], L_c, best_lam)
                best_lo = torch.maximum(best_lo, _lower_bound(X @ U_c, Y))
            gap = best_up - best_lo
            if bool((gap <= rtol * best_up).all()):
                break
            # adaptive restart to the average when the certified gap has halved
            if bool((gap <= 0.5 * last_restart_gap).any()):
                Lam, U = avg_lam, avg_u
                sum_lam, sum_u, cnt = torch.zeros_like(Lam), torch.zeros_like(U), 0
                last_restart_gap = gap
    return best_up, best_lam, best_lo


def lambda_max(X: torch.Tensor, Y: torch.Tensor, lambda2, dual_reg, rtol: float = 5e-3,
               max_iter: int = 5000, cpu_threads: Optional[int] = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Per-episode ``lambda_max`` (B,) and a dual point ``Lam0`` (B, n, k) achieving it.

    ``rho > 0``: closed form.  ``rho = 0``: certified upper bound within ``rtol`` of the
    exact value (see the module docstring; a warning-free fallback returns the best
    bound found after ``max_iter`` iterations).  Not differentiated (a per-episode
    constant for the backward pass).  ``cpu_threads``: intra-op threads on CPU (see
    :mod:`metasparse.solvers.threads`; ``None`` keeps torch's setting).
    """
    with torch.no_grad(), solver_threads(X.device, cpu_threads):
        X = X.detach()
        B, n, _ = X.shape
        Y = Y.to(X.dtype)
        l2 = as_episode_vector(lambda2, B, X, "lambda2").detach()
        rho = as_episode_vector(dual_reg, B, X, "dual_reg").detach()
        pos = rho > 0
        Lam0 = zero_weight_dual(Y, l2, rho)
        lmax = _norms_like_solver(X, Y, Lam0).amax(-1)
        if not bool(pos.all()):
            zero = ~pos
            up, lam, _ = _lambda_max_hinge(X[zero], Y[zero], rtol, max_iter)
            lmax = lmax.clone()
            lmax[zero] = up
            Lam0 = Lam0.clone()
            Lam0[zero] = lam
            # recompute with the exact code path used by the solver (bitwise consistent)
            lmax = _norms_like_solver(X, Y, Lam0).amax(-1)
        return lmax, Lam0

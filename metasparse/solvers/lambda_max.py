r"""lambda_max: the smallest lambda1 for which the group-sparse SVM has ``W* = 0``.

``W = 0`` is optimal iff some dual point ``Lam0`` optimal at ``W = 0`` has every row
``||(X^T (Y - Lam0))_j|| <= lambda1`` (optimality of the primal at 0: the loss
subgradient ``X^T(Lam0 - Y)`` must lie in the ``lambda1`` group ball).  Hence

    lambda_max = min_{Lam0 in A} max_j ||(X^T (Y - Lam0))_j||,

with ``A`` the dual optima at ``W = 0``:

* ``rho > 0``: ``A = {proj_simplex_rows(Y + (lambda2/rho) Delta)}`` (a single point,
  docs/maths.md section 3), so lambda_max is in closed form;
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

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from . import engine, linalg
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
    U = torch.zeros(B, d, Y.shape[-1], dtype=X.dtype, device=X.device)   # warm start of the dual iterate
    while True:
        V = dual_features(X, Y, Lam)
        idx = row_norms(V).topk(m, dim=-1).indices                          # (B, m)
        Xj = X.gather(2, idx[:, None, :].expand(B, n, m))
        gidx = idx[..., None].expand(B, m, Y.shape[-1])
        up_j, Lam, lo, Uj = _pdhg(Xj, Y, rtol, max_iter, Lam, U.gather(1, gidx))
        U = torch.zeros_like(U).scatter_(1, gidx, Uj)
        up = row_norms(dual_features(X, Y, Lam)).amax(-1)
        if m == d or bool((up <= up_j * (1.0 + 0.5 * rtol)).all()):
            return up, Lam, lo
        m = min(d, 2 * m)


@dataclass
class _PDHGState:
    Lam: torch.Tensor         # (B, n, k) primal iterate (rows in A)
    U: torch.Tensor           # (B, d, k) dual iterate (group-l1 ball)
    sum_lam: torch.Tensor     # running sums since the last restart (ergodic averages)
    sum_u: torch.Tensor
    cnt: torch.Tensor         # (B,) iterations since the last restart
    best_up: torch.Tensor     # (B,) best certified upper bound and its Lam
    best_lam: torch.Tensor
    best_lo: torch.Tensor     # (B,) best certified lower bound
    restart_gap: torch.Tensor  # (B,) certified gap at the last restart


class _HingePDHG:
    r"""Primal-dual hybrid gradient (Chambolle-Pock) on the bilinear saddle point of the
    module docstring, as an engine solver: ``update`` is one PDHG step, ``check``
    evaluates the certified bounds at the iterate and at the ergodic average, and
    restarts an episode at its average when its certified gap has halved."""

    def __init__(self, X, Y):
        B, n, d = X.shape
        self.X, self.Y = X, Y
        self.XtY = X.transpose(1, 2) @ Y
        sig = linalg.top_eigenvalue(X @ X.transpose(1, 2)).clamp(min=0.0).sqrt()
        sig = torch.where(sig > 0, sig, torch.ones_like(sig))
        # balance the primal (Lam: entries O(1), n rows) and dual (U: unit group-l1) scales
        omega = float(n) ** 0.5
        self.tau = (0.95 / sig * omega)[:, None, None]
        self.sigma = (0.95 / sig / omega)[:, None, None]

    def init_state(self, Lam, U=None) -> _PDHGState:
        B, n, d = self.X.shape
        if U is None:
            U = torch.zeros(B, d, self.Y.shape[-1], dtype=self.X.dtype, device=self.X.device)
        up = row_norms(self.XtY - self.X.transpose(1, 2) @ Lam).amax(-1)
        return _PDHGState(Lam=Lam, U=U, sum_lam=torch.zeros_like(Lam), sum_u=torch.zeros_like(U),
                          cnt=torch.zeros_like(up), best_up=up, best_lam=Lam.clone(),
                          best_lo=torch.full_like(up, -torch.inf), restart_gap=up.clone())

    def update(self, s: _PDHGState) -> _PDHGState:
        X = self.X
        Lam = project_wrong_classes(s.Lam + self.tau * (X @ s.U), self.Y)
        U = project_group_l1_ball(s.U + self.sigma * (self.XtY - X.transpose(1, 2) @ (2.0 * Lam - s.Lam)))
        return _PDHGState(Lam=Lam, U=U, sum_lam=s.sum_lam + Lam, sum_u=s.sum_u + U, cnt=s.cnt + 1,
                          best_up=s.best_up, best_lam=s.best_lam, best_lo=s.best_lo, restart_gap=s.restart_gap)

    def check(self, s: _PDHGState, active=None):
        X, Y = self.X, self.Y
        cnt = torch.clamp(s.cnt, min=1.0)[:, None, None]
        avg_lam, avg_u = s.sum_lam / cnt, s.sum_u / cnt
        best_up, best_lam, best_lo = s.best_up, s.best_lam, s.best_lo
        started = s.cnt > 0
        for L_c, U_c in ((s.Lam, s.U), (avg_lam, avg_u)):
            up = row_norms(self.XtY - X.transpose(1, 2) @ L_c).amax(-1)
            better = started & (up < best_up)
            best_up = torch.where(better, up, best_up)
            best_lam = torch.where(better[:, None, None], L_c, best_lam)
            best_lo = torch.where(started, torch.maximum(best_lo, _lower_bound(X @ U_c, Y)), best_lo)
        gap = best_up - best_lo
        # adaptive restart to the average where the certified gap has halved
        rs = started & (gap <= 0.5 * s.restart_gap)
        r3 = rs[:, None, None]
        s = _PDHGState(Lam=torch.where(r3, avg_lam, s.Lam), U=torch.where(r3, avg_u, s.U),
                       sum_lam=torch.where(r3, torch.zeros_like(s.sum_lam), s.sum_lam),
                       sum_u=torch.where(r3, torch.zeros_like(s.sum_u), s.sum_u),
                       cnt=torch.where(rs, torch.zeros_like(s.cnt), s.cnt), best_up=best_up, best_lam=best_lam,
                       best_lo=best_lo, restart_gap=torch.where(rs, gap, s.restart_gap))
        return s, best_up, gap


def _pdhg(X, Y, rtol: float, max_iter: int, Lam_init, U_init=None, check_every: int = 10):
    """Certified (upper, Lam, lower, last dual iterate U) on the features X by :class:`_HingePDHG`."""
    solver = _HingePDHG(X, Y)
    res = engine.run(solver, solver.init_state(Lam_init, U_init), tol=rtol, max_iter=max_iter, check_every=check_every,
                     patience=max_iter + 1, floor=torch.finfo(X.dtype).tiny)
    return res.state.best_up, res.state.best_lam, res.state.best_lo, res.state.U


def lambda_max(X: torch.Tensor, Y: torch.Tensor, lambda2, dual_reg, rtol: float = 5e-3,
               max_iter: int = 5000, cpu_threads: Optional[int] = 1,
               smooth: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Per-episode ``lambda_max`` (B,) and a dual point ``Lam0`` (B, n, k) achieving it.

    ``rho > 0``: closed form.  ``rho = 0``: certified upper bound within ``rtol`` of the
    exact value (see the module docstring; a warning-free fallback returns the best
    bound found after ``max_iter`` iterations).  Not differentiated (a per-episode
    constant for the backward pass).  ``cpu_threads``: intra-op threads on CPU (see
    :mod:`metasparse.solvers.threads`; ``None`` keeps torch's setting).  ``smooth``: True
    when the caller knows on the host that every ``dual_reg > 0`` (no device read).
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
        if not (bool(pos.all()) if smooth is None else smooth):
            zero = ~pos
            up, lam, _ = _lambda_max_hinge(X[zero], Y[zero], rtol, max_iter)
            lmax = lmax.clone()
            lmax[zero] = up
            Lam0 = Lam0.clone()
            Lam0[zero] = lam
            # recompute with the exact code path used by the solver (bitwise consistent)
            lmax = _norms_like_solver(X, Y, Lam0).amax(-1)
        return lmax, Lam0

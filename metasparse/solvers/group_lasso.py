"""Batched multi-task group-Lasso (and Lasso, k = 1) regression with implicit gradients.

The inner problem of the paper's Problem 4, one per task ``t`` (batched over ``B`` tasks):

    W_t = argmin_W  1/(2n) ||Yc - Fc W||_F^2 + lam_t * ||W||_{2,1} + (ridge/2) ||W||_F^2

with ``F`` (n, d) the shared features of the task's training examples, ``Y`` (n, k)
its targets, ``Fc, Yc`` their centred versions (``fit_intercept``; the intercept is
then ``b = mean(Y) - mean(F) W``) and ``||W||_{2,1} = sum_j ||W[j, :]||_2`` (a group is
one feature across the k outputs; k = 1 is the Lasso).  This is sklearn's
``MultiTaskLasso`` / ``Lasso`` objective with ``alpha = lam``.

Solver: FISTA with gradient-based adaptive restart on the Gram form
``grad = G W - c + ridge W``, ``G = Fc^T Fc / n``, ``c = Fc^T Yc / n``, step ``1/L``
with ``L = lambda_max(G) + ridge``, proximal step = row-wise block soft-thresholding
``BST(v, t) = max(0, 1 - t/||v||) v``, run by the engine of
:mod:`metasparse.solvers.engine` (per-task freezing).  Runs without autograd.  A task
stops when its relative duality gap is below ``tol``: with ``Z = c - G W`` and
``h(W) = lam ||W||_{2,1} + (ridge/2) ||W||^2``, the gap of ``W`` is the Fenchel-Young gap

    P(W) - D = h(W) + h*(Z) - <W, Z>,   h*(Z) = sum_j max(0, ||Z_j|| - lam)^2 / (2 ridge)

for ``ridge > 0``; for ``ridge = 0`` the dual point ``theta = s (Yc - Fc W)/n`` is scaled
into the feasible set (``s = min(1, lam / max_j ||Z_j||)``) and
``gap = P(W) - [s (y2 - <c, W>) - s^2/2 (y2 - 2 <c, W> + <W, G W>)]``, ``y2 = ||Yc||^2/n``.

Gradients (implicit function theorem on the active set ``A = {j : W[j,:] != 0}``):
the solution satisfies ``r(W; G, c, lam) = G W - c + ridge W + lam W_j/||W_j|| = 0`` on
the rows of ``A``, so ``dW_A = -H^{-1} dr`` with ``H = dr/dW_A =
kron(G_AA, I_k) + ridge I + lam blockdiag_j (I_k - u_j u_j^T)/||W_j||``,
``u_j = W_j/||W_j||`` (inactive rows stay 0: their gradient is 0 under strict
complementarity).  It is realised as one Newton step with a constant ``H``:
``W_out = W* - H^{-1} r(W*; G, c, lam)`` where ``W*`` and ``H`` are detached and ``r``
is differentiable in (F, Y, lam); its value is ``W*`` (r = 0 at the solution) and its
Jacobian is exactly ``-H^{-1} dr/d(F, Y, lam)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from . import engine
from .linalg import spd_solve
from .objectives import bst_factor

__all__ = ["GroupLassoSolution", "group_lasso_lambda_max", "solve_group_lasso", "ridge_regression",
           "block_soft_threshold"]


@dataclass
class GroupLassoSolution:
    """weights (B, d, k); intercept (B, k); active (B, d) bool rows != 0; lam (B,);
    n_iter: FISTA iterations of the slowest task; rel_gap (B,) relative duality gap of
    the returned weights; converged (B,) bool ``rel_gap <= tol`` (None: closed form)."""

    weights: torch.Tensor
    intercept: torch.Tensor
    active: torch.Tensor
    lam: torch.Tensor
    n_iter: int = 0
    rel_gap: Optional[torch.Tensor] = None
    converged: Optional[torch.Tensor] = None

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """``features @ W + b``: (B, n, d) -> (B, n, k)."""
        return features @ self.weights + self.intercept[:, None, :]

    @property
    def used_fraction(self) -> torch.Tensor:
        """(B,) fraction of features with a nonzero row."""
        return self.active.float().mean(1)


def _check(features: torch.Tensor, targets: torch.Tensor):
    if features.dim() != 3:
        raise ValueError(f"features must be (B, n, d), got shape {tuple(features.shape)}")
    if targets.dim() == 2:
        targets = targets.unsqueeze(-1)
    if targets.dim() != 3 or targets.shape[:2] != features.shape[:2]:
        raise ValueError(f"targets must be (B, n) or (B, n, k) matching features {tuple(features.shape[:2])}, "
                         f"got shape {tuple(targets.shape)}")
    if not torch.is_floating_point(targets):
        targets = targets.to(features.dtype)
    return features, targets


def _moments(features, targets, fit_intercept: bool):
    n = features.shape[1]
    if fit_intercept:
        f_mean, y_mean = features.mean(1, keepdim=True), targets.mean(1, keepdim=True)
        fc, yc = features - f_mean, targets - y_mean
    else:
        f_mean = features.new_zeros(features.shape[0], 1, features.shape[2])
        y_mean = targets.new_zeros(targets.shape[0], 1, targets.shape[2])
        fc, yc = features, targets
    gram = fc.transpose(1, 2) @ fc / n
    corr = fc.transpose(1, 2) @ yc / n
    return gram, corr, f_mean, y_mean, (yc * yc).sum((1, 2)) / n


def group_lasso_lambda_max(features: torch.Tensor, targets: torch.Tensor, fit_intercept: bool = True
                           ) -> torch.Tensor:
    """(B,) smallest ``lam`` with ``W = 0``: ``max_j ||(Fc^T Yc)[j, :]||_2 / n``."""
    features, targets = _check(features, targets)
    _, corr, _, _, _ = _moments(features, targets, fit_intercept)
    return corr.norm(dim=2).amax(1)


def block_soft_threshold(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Row-wise ``BST(v, t) = max(0, 1 - t/||v||) v`` for v (B, d, k), t broadcastable to (B, 1, 1)."""
    t = torch.as_tensor(t, dtype=v.dtype, device=v.device).reshape(-1)
    factor = bst_factor(v.norm(dim=-1), t.expand(v.shape[0]) if t.numel() == 1 else t)
    return v * factor.unsqueeze(-1)


def _resolve_lam(lam, lambda_ratio, features, targets, fit_intercept) -> torch.Tensor:
    if (lam is None) == (lambda_ratio is None):
        raise ValueError("give exactly one of lam or lambda_ratio")
    b = features.shape[0]
    if lambda_ratio is not None:
        if torch.is_tensor(lambda_ratio):
            ratio = lambda_ratio.to(features.dtype)
        else:
            ratio = torch.tensor(float(lambda_ratio), dtype=features.dtype, device=features.device)
        if (ratio < 0).any():
            raise ValueError(f"lambda_ratio must be >= 0, got {lambda_ratio}")
        return ratio * group_lasso_lambda_max(features.detach(), targets.detach(), fit_intercept)
    lam_t = lam if torch.is_tensor(lam) else torch.tensor(float(lam), dtype=features.dtype, device=features.device)
    if (lam_t < 0).any():
        raise ValueError(f"lam must be >= 0, got {lam}")
    return lam_t.to(features.dtype).expand(b) if lam_t.dim() == 0 else lam_t.to(features.dtype)


@dataclass
class _FISTAState:
    W: torch.Tensor      # (B, d, k) current point
    V: torch.Tensor      # (B, d, k) extrapolated point
    t: torch.Tensor      # (B, 1, 1) momentum


class GroupLassoFISTA:
    """FISTA with adaptive restart on the Gram form, as an engine solver (module doc)."""

    def __init__(self, gram, corr, y2, lam, ridge: float):
        self.G, self.c, self.y2, self.lam, self.ridge = gram, corr, y2, lam, ridge
        lip = torch.linalg.eigvalsh(gram)[:, -1] + ridge                           # (B,)
        self.lip = lip.clamp_min(torch.finfo(gram.dtype).eps)[:, None, None]
        self.thr = lam[:, None, None] / self.lip

    def init_state(self, init=None) -> _FISTAState:
        W = torch.zeros_like(self.c) if init is None else init.detach().clone()
        return _FISTAState(W=W, V=W.clone(), t=torch.ones(W.shape[0], 1, 1, dtype=W.dtype, device=W.device))

    def update(self, s: _FISTAState) -> _FISTAState:
        grad = self.G @ s.V - self.c + self.ridge * s.V
        W_new = block_soft_threshold(s.V - grad / self.lip, self.thr)
        # adaptive restart (O'Donoghue & Candes): reset momentum when it points uphill
        restart = ((s.V - W_new) * (W_new - s.W)).sum((1, 2), keepdim=True) > 0
        t = torch.where(restart, torch.ones_like(s.t), s.t)
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        return _FISTAState(W=W_new, V=W_new + ((t - 1) / t_new) * (W_new - s.W), t=t_new)

    def check(self, s: _FISTAState, active=None):
        """(P(W), P - D) per task (module doc)."""
        W = s.W
        GW = self.G @ W
        Z = self.c - GW
        norms_w, norms_z = W.norm(dim=2), Z.norm(dim=2)
        h = self.lam * norms_w.sum(1) + 0.5 * self.ridge * (W * W).sum((1, 2))
        wgw, q = (W * GW).sum((1, 2)), (W * self.c).sum((1, 2))
        P = 0.5 * wgw - q + 0.5 * self.y2 + h
        if self.ridge > 0:
            hstar = (torch.clamp(norms_z - self.lam[:, None], min=0.0) ** 2).sum(1) / (2 * self.ridge)
            gap = h + hstar - (W * Z).sum((1, 2))
        else:
            zmax = norms_z.amax(1)
            sc = torch.where(zmax > self.lam, self.lam / torch.clamp(zmax, min=torch.finfo(W.dtype).tiny),
                             torch.ones_like(zmax))
            D = sc * (self.y2 - q) - 0.5 * sc * sc * (self.y2 - 2 * q + wgw)
            gap = P - D
        return s, P, torch.clamp(gap, min=0.0)


def _implicit_hessian(gram, w, lam, ridge, active):
    """Dense ``H`` (B, d*k, d*k) of the active-set optimality system (identity on inactive rows)."""
    b, d, k = w.shape
    eye_k = torch.eye(k, dtype=w.dtype, device=w.device)
    eye_d = torch.eye(d, dtype=w.dtype, device=w.device)
    h = gram[:, :, None, :, None] * eye_k[None, None, :, None, :]                  # kron(G, I_k)
    norm = w.norm(dim=2, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)        # (B, d, 1)
    u = w / norm
    blocks = lam[:, None, None, None] * (eye_k - u[..., :, None] * u[..., None, :]) / norm[..., None]
    h = h + (blocks + ridge * eye_k)[:, :, :, None, :] * eye_d[None, :, None, :, None]
    mask = active[:, :, None].expand(b, d, k).reshape(b, d * k)
    h = h.reshape(b, d * k, d * k)
    keep = mask[:, :, None] & mask[:, None, :]
    h = torch.where(keep, h, torch.zeros_like(h))
    h = h + torch.diag_embed((~mask).to(w.dtype))
    # tiny jitter keeps the solve defined when the active Gram is singular
    jitter = 1e-10 * h.diagonal(dim1=1, dim2=2).abs().mean(1).clamp_min(1.0)
    return h + jitter[:, None, None] * torch.eye(d * k, dtype=w.dtype, device=w.device), mask


def solve_group_lasso(features: torch.Tensor, targets: torch.Tensor, lam: Union[float, torch.Tensor, None] = None,
                      *, lambda_ratio: Union[float, torch.Tensor, None] = None, ridge: float = 0.0,
                      fit_intercept: bool = True, max_iter: int = 1000, tol: float = 1e-6,
                      init: Optional[torch.Tensor] = None, check_every: int = 10,
                      patience: int = 20) -> GroupLassoSolution:
    """Solve the batched group-Lasso (module doc); differentiable in ``features``,
    ``targets`` and ``lam`` when they require grad.

    features (B, n, d); targets (B, n) or (B, n, k); ``lam`` a float or (B,) tensor, or
    ``lambda_ratio`` = lam / lambda_max(task) (lambda_max treated as a constant).
    A task stops at relative duality gap ``tol`` (checked every ``check_every``
    iterations), after ``max_iter`` iterations, or when its gap has not improved by 1%
    in ``patience`` checks; ``converged`` says which.
    """
    features, targets = _check(features, targets)
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    lam_t = _resolve_lam(lam, lambda_ratio, features, targets, fit_intercept)
    gram, corr, f_mean, y_mean, y2 = _moments(features, targets, fit_intercept)
    with torch.no_grad():
        solver = GroupLassoFISTA(gram.detach(), corr.detach(), y2.detach(), lam_t.detach(), ridge)
        res = engine.run(solver, solver.init_state(init), tol=tol, max_iter=max_iter, check_every=check_every,
                         patience=patience, floor=torch.finfo(gram.dtype).tiny)
    w_star = res.state.W
    active = w_star.norm(dim=2) > 0
    needs_grad = torch.is_grad_enabled() and (gram.requires_grad or corr.requires_grad or lam_t.requires_grad)
    if needs_grad:
        b, d, k = w_star.shape
        h, mask = _implicit_hessian(gram.detach(), w_star, lam_t.detach(), ridge, active)
        norm = w_star.norm(dim=2, keepdim=True).clamp_min(torch.finfo(w_star.dtype).tiny)
        resid = gram @ w_star - corr + ridge * w_star + lam_t[:, None, None] * w_star / norm
        resid = torch.where(mask.reshape(b, d, k), resid, torch.zeros_like(resid)).reshape(b, d * k, 1)
        # h is symmetric positive (semi)definite: Cholesky, redone in float64 (then a
        # pseudo-inverse) for the episodes where float32 rounding makes it fail (batched
        # LU in torch 2.14.1 returns corrupt pivots on CPU with several threads for
        # systems of ~200 and more)
        step = spd_solve(h, resid[..., 0]).reshape(b, d, k)
        weights = torch.where(active[:, :, None], w_star - step, torch.zeros_like(step))
    else:
        weights = w_star
    intercept = (y_mean - f_mean @ weights)[:, 0, :]
    return GroupLassoSolution(weights, intercept, active, lam_t.detach(), int(res.n_iter.max()), res.rel_gap,
                              res.converged)


def ridge_regression(features: torch.Tensor, targets: torch.Tensor, lam: Union[float, torch.Tensor],
                     fit_intercept: bool = True) -> GroupLassoSolution:
    """Closed-form ridge ``W = (G + lam I)^{-1} c`` (same scaling as the group-Lasso:
    ``1/(2n)||Yc - Fc W||^2 + (lam/2)||W||^2``); differentiable by autograd."""
    features, targets = _check(features, targets)
    lam_t = lam if torch.is_tensor(lam) else torch.tensor(float(lam), dtype=features.dtype, device=features.device)
    if (lam_t < 0).any():
        raise ValueError(f"ridge lam must be >= 0, got {lam}")
    lam_t = lam_t.to(features.dtype).expand(features.shape[0]) if lam_t.dim() == 0 else lam_t.to(features.dtype)
    gram, corr, f_mean, y_mean, _ = _moments(features, targets, fit_intercept)
    d = gram.shape[-1]
    eye = torch.eye(d, dtype=gram.dtype, device=gram.device)
    weights = torch.cholesky_solve(corr, torch.linalg.cholesky(gram + lam_t[:, None, None] * eye))
    intercept = (y_mean - f_mean @ weights)[:, 0, :]
    active = torch.ones(weights.shape[:2], dtype=torch.bool, device=weights.device)
    return GroupLassoSolution(weights, intercept, active, lam_t.detach(), 0)

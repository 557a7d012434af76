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
``BST(v, t) = max(0, 1 - t/||v||) v``.  Runs without autograd.

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

from .objectives import bst_factor

__all__ = ["GroupLassoSolution", "group_lasso_lambda_max", "solve_group_lasso", "ridge_regression",
           "block_soft_threshold"]


@dataclass
class GroupLassoSolution:
    """weights (B, d, k); intercept (B, k); active (B, d) bool rows != 0; lam (B,);
    n_iter: FISTA iterations run; max_change: last max |W_{i+1} - W_i| / max(1, |W|)."""

    weights: torch.Tensor
    intercept: torch.Tensor
    active: torch.Tensor
    lam: torch.Tensor
    n_iter: int = 0
    max_change: float = 0.0

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
    return gram, corr, f_mean, y_mean


def group_lasso_lambda_max(features: torch.Tensor, targets: torch.Tensor, fit_intercept: bool = True
                           ) -> torch.Tensor:
    """(B,) smallest ``lam`` with ``W = 0``: ``max_j ||(Fc^T Yc)[j, :]||_2 / n``."""
    features, targets = _check(features, targets)
    _, corr, _, _ = _moments(features, targets, fit_intercept)
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


@torch.no_grad()
def _fista(gram, corr, lam, ridge, max_iter, tol, init):
    b, d, k = corr.shape
    lip = torch.linalg.eigvalsh(gram)[:, -1] + ridge                   # (B,)
    lip = lip.clamp_min(torch.finfo(gram.dtype).eps)[:, None, None]
    thr = lam[:, None, None] / lip
    w = torch.zeros_like(corr) if init is None else init.detach().clone()
    v, t = w.clone(), torch.ones(b, 1, 1, dtype=gram.dtype, device=gram.device)
    change, it = float("inf"), 0
    for it in range(1, max_iter + 1):
        grad = gram @ v - corr + ridge * v
        w_new = block_soft_threshold(v - grad / lip, thr)
        # adaptive restart (O'Donoghue & Candes): reset momentum when it points uphill
        restart = ((v - w_new) * (w_new - w)).sum((1, 2), keepdim=True) > 0
        t = torch.where(restart, torch.ones_like(t), t)
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        v = w_new + ((t - 1) / t_new) * (w_new - w)
        change = float(((w_new - w).abs().amax((1, 2)) / w_new.abs().amax((1, 2)).clamp_min(1.0)).max())
        w, t = w_new, t_new
        if change < tol:
            break
    return w, it, change


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
                      fit_intercept: bool = True, max_iter: int = 1000, tol: float = 1e-7,
                      init: Optional[torch.Tensor] = None) -> GroupLassoSolution:
    """Solve the batched group-Lasso (module doc); differentiable in ``features``,
    ``targets`` and ``lam`` when they require grad.

    features (B, n, d); targets (B, n) or (B, n, k); ``lam`` a float or (B,) tensor, or
    ``lambda_ratio`` = lam / lambda_max(task) (lambda_max treated as a constant).
    """
    features, targets = _check(features, targets)
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    lam_t = _resolve_lam(lam, lambda_ratio, features, targets, fit_intercept)
    gram, corr, f_mean, y_mean = _moments(features, targets, fit_intercept)
    w_star, n_iter, change = _fista(gram.detach(), corr.detach(), lam_t.detach(), ridge, max_iter, tol, init)
    active = w_star.norm(dim=2) > 0
    needs_grad = torch.is_grad_enabled() and (gram.requires_grad or corr.requires_grad or lam_t.requires_grad)
    if needs_grad:
        b, d, k = w_star.shape
        h, mask = _implicit_hessian(gram.detach(), w_star, lam_t.detach(), ridge, active)
        norm = w_star.norm(dim=2, keepdim=True).clamp_min(torch.finfo(w_star.dtype).tiny)
        resid = gram @ w_star - corr + ridge * w_star + lam_t[:, None, None] * w_star / norm
        resid = torch.where(mask.reshape(b, d, k), resid, torch.zeros_like(resid)).reshape(b, d * k, 1)
        step = torch.linalg.solve(h, resid).reshape(b, d, k)
        weights = torch.where(active[:, :, None], w_star - step, torch.zeros_like(step))
    else:
        weights = w_star
    intercept = (y_mean - f_mean @ weights)[:, 0, :]
    return GroupLassoSolution(weights, intercept, active, lam_t.detach(), n_iter, change)


def ridge_regression(features: torch.Tensor, targets: torch.Tensor, lam: Union[float, torch.Tensor],
                     fit_intercept: bool = True) -> GroupLassoSolution:
    """Closed-form ridge ``W = (G + lam I)^{-1} c`` (same scaling as the group-Lasso:
    ``1/(2n)||Yc - Fc W||^2 + (lam/2)||W||^2``); differentiable by autograd."""
    features, targets = _check(features, targets)
    lam_t = lam if torch.is_tensor(lam) else torch.tensor(float(lam), dtype=features.dtype, device=features.device)
    if (lam_t < 0).any():
        raise ValueError(f"ridge lam must be >= 0, got {lam}")
    lam_t = lam_t.to(features.dtype).expand(features.shape[0]) if lam_t.dim() == 0 else lam_t.to(features.dtype)
    gram, corr, f_mean, y_mean = _moments(features, targets, fit_intercept)
    d = gram.shape[-1]
    eye = torch.eye(d, dtype=gram.dtype, device=gram.device)
    weights = torch.linalg.solve(gram + lam_t[:, None, None] * eye, corr)
    intercept = (y_mean - f_mean @ weights)[:, 0, :]
    active = torch.ones(weights.shape[:2], dtype=torch.bool, device=weights.device)
    return GroupLassoSolution(weights, intercept, active, lam_t.detach(), 0, 0.0)

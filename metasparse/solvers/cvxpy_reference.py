r"""Exact references built with cvxpy (slow; one episode at a time; for tests and benchmarks).

* :func:`solve_primal` -- the primal ``P(W)`` of docs/maths.md section 3 with the plain
  Crammer-Singer hinge (``rho = 0``), solved directly in ``W`` (never via the dual).
* :func:`solve_dual` -- the (smoothed, ``rho >= 0``) dual in ``Lam``; ``W`` follows
  from the primal-dual link.
* :func:`lambda_max_reference` -- ``min_{Lam feasible at W=0} max_j ||(X^T(Y-Lam))_j||``.
* :class:`CvxpyLayerDual` -- the smoothed dual as a cvxpylayers layer, batched over
  episodes, differentiable w.r.t. ``X``, ``lambda1``, ``lambda2`` (the exact but slow
  reference the custom solver is compared against).

The dual is written DPP-compliant by scaling: with ``Xs = X / sqrt(lambda2)`` and
``t = lambda1 / sqrt(lambda2)``,
``1/(2 lambda2) max(0, ||X_j^T(Y-Lam)|| - lambda1)^2 = 1/2 max(0, ||Xs_j^T(Y-Lam)|| - t)^2``.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["solve_primal", "solve_dual", "lambda_max_reference", "CvxpyLayerDual"]


def _cp():
    import cvxpy as cp  # imported lazily: only tests and benchmarks need it
    return cp


def _clarabel_args(tight: bool):
    if not tight:
        return {}
    return dict(tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11, tol_ktratio=1e-9,
                max_iter=500)


def solve_primal(X: np.ndarray, labels: np.ndarray, n_way: int, lambda1: float, lambda2: float,
                 tight: bool = True) -> np.ndarray:
    r"""argmin_W sum_i max_l (Delta_il + x_i^T W_l - x_i^T W_{y_i}) + lambda1 ||W||_{2,1}
    + lambda2/2 ||W||_F^2 for one episode; returns W (d, n_way)."""
    cp = _cp()
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    Y = np.eye(n_way)[np.asarray(labels)]
    W = cp.Variable((d, n_way))
    S = X @ W
    s_y = cp.sum(cp.multiply(Y, S), axis=1, keepdims=True)
    hinge = cp.max((1.0 - Y) + S - s_y @ np.ones((1, n_way)), axis=1)
    obj = cp.sum(hinge) + lambda1 * cp.sum(cp.norm(W, 2, axis=1)) + 0.5 * lambda2 * cp.sum_squares(W)
    prob = cp.Problem(cp.Minimize(obj))
    prob.solve(solver="CLARABEL", **_clarabel_args(tight))
    return W.value


def _dual_problem(n: int, d: int, k: int, rho: float):
    """Parametrised (DPP) dual: parameters Xs (n, d), Y (n, k), t, c; variable G = Y - Lam.

    In ``G``: ``<Lam, Delta> = -<G, 1 - Y>``, ``V = Xs^T G``, ``Lam >= 0 <=> G <= Y``,
    rows of Lam sum to one <=> rows of G sum to zero (every product is
    parameter x variable, hence DPP).
    """
    cp = _cp()
    G = cp.Variable((n, k))
    Xs = cp.Parameter((n, d))
    Y = cp.Parameter((n, k))
    t = cp.Parameter(nonneg=True)
    excess = cp.pos(cp.norm(Xs.T @ G, 2, axis=1) - t)
    obj = -cp.sum(cp.multiply(G, 1.0 - Y)) - 0.5 * cp.sum_squares(excess)
    params = [Xs, Y, t]
    if rho > 0:
        c = cp.Parameter(nonneg=True)   # rho / lambda2
        obj = obj - 0.5 * c * cp.sum_squares(G)
        params.append(c)
    cons = [G <= Y, cp.sum(G, axis=1) == 0]
    prob = cp.Problem(cp.Maximize(obj), cons)
    return prob, G, params


def solve_dual(X: np.ndarray, labels: np.ndarray, n_way: int, lambda1: float, lambda2: float,
               rho: float, tight: bool = True):
    """Maximiser Lam* of the (smoothed) dual for one episode and ``W = BST(X^T(Y-Lam*))/lambda2``."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    Yv = np.eye(n_way)[np.asarray(labels)]
    prob, G, params = _dual_problem(n, d, n_way, rho)
    params[0].value = X / np.sqrt(lambda2)
    params[1].value = Yv
    params[2].value = lambda1 / np.sqrt(lambda2)
    if rho > 0:
        params[3].value = rho / lambda2
    prob.solve(solver="CLARABEL", **_clarabel_args(tight))
    L = Yv - G.value
    V = X.T @ (Yv - L)
    nrm = np.linalg.norm(V, axis=1, keepdims=True)
    fac = np.where(nrm > 0, np.maximum(0.0, 1.0 - lambda1 / np.where(nrm > 0, nrm, 1.0)), 0.0)
    return L, V * fac / lambda2


def lambda_max_reference(X: np.ndarray, labels: np.ndarray, n_way: int) -> float:
    r"""rho = 0: ``min max_j ||(X^T (Y - Lam))_j||`` over rows of Lam in the simplex with
    ``Lam_{i, y_i} = 0`` (the dual optima at W = 0), solved as an SOCP."""
    cp = _cp()
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    Yv = np.eye(n_way)[np.asarray(labels)]
    Lam = cp.Variable((n, n_way))
    V = X.T @ (Yv - Lam)
    prob = cp.Problem(cp.Minimize(cp.max(cp.norm(V, 2, axis=1))),
                      [Lam >= 0, cp.sum(Lam, axis=1) == 1, cp.multiply(Yv, Lam) == 0])
    prob.solve(solver="CLARABEL", **_clarabel_args(True))
    return float(prob.value)


class CvxpyLayerDual(torch.nn.Module):
    r"""The smoothed dual as a cvxpylayers layer: ``forward(X, Y, lambda1, lambda2)`` -> ``(Lam*, W*)``.

    ``X`` (B, n, d), ``Y`` (B, n, k) one-hot, ``lambda1``/``lambda2`` (B,) tensors;
    gradients flow to ``X``, ``lambda1`` and ``lambda2`` (through cvxpylayers for
    ``Lam*`` and through the primal-dual link for ``W*``).  One layer per shape.
    """

    def __init__(self, dual_reg: float = 1.0, solver_args: dict | None = None):
        super().__init__()
        self.dual_reg = float(dual_reg)
        self.solver_args = dict(solver_args or {"eps": 1e-9, "max_iters": 20000})
        self._layers = {}

    def _layer(self, n, d, k):
        key = (n, d, k)
        if key not in self._layers:
            from cvxpylayers.torch import CvxpyLayer
            prob, G, params = _dual_problem(n, d, k, self.dual_reg)
            if not prob.is_dpp():  # pragma: no cover - construction guarantees it
                raise RuntimeError("cvxpy dual problem is not DPP")
            self._layers[key] = CvxpyLayer(prob, parameters=params, variables=[G])
        return self._layers[key]

    def forward(self, X, Y, lambda1, lambda2):
        B, n, d = X.shape
        k = Y.shape[-1]
        layer = self._layer(n, d, k)
        s = torch.sqrt(lambda2)
        args = [X / s[:, None, None], Y.to(X.dtype), lambda1 / s]
        if self.dual_reg > 0:
            args.append(self.dual_reg / lambda2)
        G, = layer(*args, solver_args=self.solver_args)
        Lam = Y.to(X.dtype) - G.to(X.dtype)
        from .objectives import group_soft_threshold, dual_features
        W = group_soft_threshold(dual_features(X, Y.to(X.dtype), Lam), lambda1) / lambda2[:, None, None]
        return Lam, W

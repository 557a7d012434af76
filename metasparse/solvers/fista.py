r"""FISTA for the group-sparse SVM dual, as engine solvers (:mod:`metasparse.solvers.engine`).

Projected accelerated gradient ascent on the simplex-constrained dual with the
gradient-based adaptive restart of O'Donoghue & Candes (2015), step ``1/L`` with the
exact Lipschitz constant ``L = (||X||_2^2 + rho) / lambda2``:

    Z = Lam + beta (Lam - Lam_prev),   Lam+ = proj(Z + (1/L) grad D(Z)),
    restart (t = 1) when <Z - Lam+, Lam+ - Lam> > 0.

Two solvers, each an object with ``update`` (one step) and ``check`` (certificate and
named refresh steps):

* :class:`GramFISTA`, lambda1 = 0 everywhere (MetaOptNet's SVM-CS): the step is affine
  in Gram space, ``Lam+ = proj(C0 + M' Z)``; ``check`` evaluates the gap and tries the
  exact Newton step on a stable face (:func:`newton_step_gram`).
* :class:`FeatureFISTA`, lambda1 > 0 (or the unrolled backward): iterations on a
  working set of features (:meth:`FeatureFISTA.working_set_step`), float64 state with
  float32 increments for float32 features, and Newton tries when the face and the
  active rows are stable (:func:`newton_step_features`).  The gap at every check uses
  all features, so convergence is certified on the full problem.

``V = X^T (Y - Lam)`` is kept class-major (``(Y - Lam)^T X``, (B, k, d)): both products
of an iteration are ~2x faster in that layout.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from . import linalg
from .face import DualHessian, Face, on_face
from .objectives import (bst_factor, column_norms, crammer_singer_loss, fenchel_young_gap, row_norms,
                         zero_weight_dual)
from .simplex import project_simplex

__all__ = ["lipschitz_constant", "Oracle", "FISTAState", "GramFISTA", "FeatureFISTA",
           "newton_step_gram", "newton_step_features"]


def lipschitz_constant(X: Optional[torch.Tensor], lambda2: torch.Tensor, dual_reg: torch.Tensor,
                       K: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""``L = (sigma_max(X)^2 + rho) / lambda2`` per episode (exact: the top eigenvalue of
    X X^T, :func:`~metasparse.solvers.linalg.top_eigenvalue`).

    Slightly inflated (relative 1e-5 of ``sigma_max^2``) so rounding in the
    eigenvalue never gives a step above ``1/L``; floored so all-zero features with
    ``rho = 0`` still give a finite step.
    """
    with torch.no_grad():
        K = X @ X.transpose(1, 2) if K is None else K
        sig2 = linalg.top_eigenvalue(K).clamp(min=0.0)
        L = (sig2 * (1.0 + 1e-5) + dual_reg) / lambda2
        return torch.maximum(L, 1e-12 / lambda2)


class Oracle:
    r"""Affine state of a dual point and everything computed from it.

    ``lin(Lam)`` is ``V^T = (Y - Lam)^T X`` (feature mode, (B, k, d)) or ``K (Y - Lam)``
    (Gram mode, only when lambda1 = 0); scores ``S = X W(Lam)`` and objectives follow.
    """

    def __init__(self, X, Y, lambda1, lambda2, dual_reg, gram: bool, K=None, smooth: Optional[bool] = None):
        self.X, self.Y, self.l1, self.l2, self.rho = X, Y, lambda1, lambda2, dual_reg
        self.smooth = smooth      # every dual_reg > 0 (None: not known on the host)
        self.c = dual_reg / lambda2
        self.inv_l2 = 1.0 / lambda2
        self.gram = gram
        self.Delta = 1.0 - Y
        if gram:
            self.K = X @ X.transpose(1, 2) if K is None else K

    def lin(self, Lam):
        if self.gram:
            return self.K @ (self.Y - Lam)
        return ((self.Y - Lam).to(self.X.dtype).transpose(1, 2) @ self.X).to(Lam.dtype)

    def lin_step(self, lin, Lam, Lam_new):
        """``lin(Lam_new)``; with float32 X and a float64 state it is the increment
        ``lin + (Lam - Lam_new)^T X`` (the small step survives the float32 matmul)."""
        if self.gram or self.X.dtype == Lam.dtype:
            return self.lin(Lam_new)
        return lin + ((Lam - Lam_new).to(self.X.dtype).transpose(1, 2) @ self.X).to(lin.dtype)

    def scores(self, lin):
        """(S = X W, W (B, d, k) or None)."""
        if self.gram:
            return lin / self.l2[:, None, None], None
        factor = bst_factor((lin * lin).sum(-2).sqrt(), self.l1)                     # (B, d)
        Wt = lin * (factor * self.inv_l2[:, None]).unsqueeze(-2)                     # (B, k, d)
        S = (self.X @ Wt.to(self.X.dtype).transpose(1, 2)).to(Wt.dtype)
        return S, Wt.transpose(1, 2)

    def gradient(self, Lam, S):
        return self.Delta + S + self.c[:, None, None] * (self.Y - Lam)

    def objectives(self, Lam, lin, S, W):
        """(P(W(Lam)), P - D) per episode; the gap in the cancellation-free Fenchel-Young form."""
        gap = fenchel_young_gap(S, self.Y, Lam, self.c, smooth=self.smooth)
        loss = crammer_singer_loss(S, self.Y, self.c, smooth=self.smooth)
        if self.gram:
            G = self.Y - Lam
            return loss + 0.5 * (G * S).sum((-1, -2)), gap   # lambda2/2 ||W||^2 = <G, S>/2
        P = loss + self.l1 * row_norms(W).sum(-1) + 0.5 * self.l2 * (W * W).sum((-1, -2))
        return P, gap


@dataclass
class FISTAState:
    """FISTA state: point, previous point, momentum ``t`` (per episode); feature mode also
    keeps ``lin = V^T`` of both points (on the current working set).  What the checks
    refresh lives here too, not in the solver: the Newton tries made so far, the face (and
    active rows) at the previous check, and in feature mode the working set ``ws_idx``
    (B, m) (None: all features) with its :class:`Oracle` and the weights ``W_last`` of the
    last check."""

    Lam: torch.Tensor
    Lam_prev: torch.Tensor
    t: torch.Tensor
    lin: Optional[torch.Tensor] = None
    lin_prev: Optional[torch.Tensor] = None
    n_newton: int = 0
    face_prev: Optional[torch.Tensor] = None
    feat_prev: Optional[torch.Tensor] = None
    ws_idx: Optional[torch.Tensor] = None
    ora: Optional["Oracle"] = None
    W_last: Optional[torch.Tensor] = None


def _momentum(t):
    t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
    return t_next, ((t - 1.0) / t_next)


def _restart(Z, Lam_new, Lam, t_next):
    """Adaptive restart: momentum pointing against the gradient mapping resets t."""
    restart = ((Z - Lam_new) * (Lam_new - Lam)).sum((-1, -2)) > 0
    return torch.where(restart, torch.ones_like(t_next), t_next)


# ------------------------------------------------------------------ Gram mode
def _face_newton_point(M: DualHessian, g, Lam):
    r"""``proj(Lam + delta)`` with ``delta`` in the tangent space T of the face of ``Lam`` and
    ``Pi_T M delta = Pi_T g`` (the Newton step of a dual with Hessian ``-M`` and gradient
    ``g``, :meth:`~metasparse.solvers.face.Face.solve`), projected back onto the simplices."""
    face = Face.of(Lam, on_face(Lam))
    return project_simplex(Lam + face.solve(M.reduced(face), g))


def newton_step_gram(K, Y, l2, rho, Lam, S, ora):
    r"""Newton step on the current face (lambda1 = 0, rho > 0): maximise the quadratic
    dual on ``Lam + T``: ``(P M P) delta = P grad D(Lam)``, ``M = (K (x) I + rho I)/lambda2``;
    the result is projected back onto the simplices and returned with its (P, gap)."""
    M = DualHessian.gram(K, l2, rho, solve_dtype=K.dtype)
    Lam_try = _face_newton_point(M, ora.gradient(Lam, S), Lam)
    lin = ora.lin(Lam_try)
    S_try, _ = ora.scores(lin)
    P, gap = ora.objectives(Lam_try, lin, S_try, None)
    return Lam_try, P, gap


class GramFISTA:
    r"""lambda1 = 0 everywhere, no autograd: the FISTA step in Gram space is affine,

        Lam+ = proj(Z + eta grad D(Z)) = proj(C0 + M' Z),
        M' = (1 - eta rho/lambda2) I - (eta/lambda2) K,
        C0 = eta (Delta + (rho/lambda2) Y) + (eta/lambda2) K Y,

    one batched matmul-add per iteration (plus the projection and the restart test).
    ``check`` tries (at most ``max_newton`` times, rho > 0) the Newton step on the face
    when it is unchanged since the previous check.
    """

    def __init__(self, K, Y, l2, rho, tol: float, newton: bool = True, max_newton: int = 3,
                 smooth: Optional[bool] = None):
        B, n, k = Y.shape
        self.K, self.Y, self.l2, self.rho, self.tol = K, Y, l2, rho, tol
        eta = 1.0 / lipschitz_constant(None, l2, rho, K=K)
        c = rho / l2
        Kp = (eta / l2)[:, None, None] * K
        eye = torch.eye(n, dtype=K.dtype, device=K.device)
        self.Mp = (1.0 - eta * c)[:, None, None] * eye - Kp
        self.C0 = eta[:, None, None] * ((1.0 - Y) + c[:, None, None] * Y) + Kp @ Y
        self.smooth = bool((rho > 0).all()) if smooth is None else bool(smooth)   # every rho > 0
        self.ora = Oracle(None, Y, torch.zeros_like(l2), l2, rho, gram=True, K=K, smooth=self.smooth)
        self.newton = newton and self.smooth
        self.max_newton = max_newton
        self.floor = 1e-12 * n

    def init_state(self, init=None) -> FISTAState:
        Lam = zero_weight_dual(self.Y, self.l2, self.rho) if init is None else init
        return FISTAState(Lam=Lam, Lam_prev=Lam, t=torch.ones(Lam.shape[0], dtype=Lam.dtype, device=Lam.device))

    def update(self, s: FISTAState) -> FISTAState:
        t_next, beta = _momentum(s.t)
        Z = torch.lerp(s.Lam_prev, s.Lam, 1.0 + beta[:, None, None])     # Lam + beta (Lam - Lam_prev)
        Lam_new = project_simplex(torch.baddbmm(self.C0, self.Mp, Z))
        return replace(s, Lam=Lam_new, Lam_prev=s.Lam, t=_restart(Z, Lam_new, s.Lam, t_next))

    def finalize(self, s: FISTAState, P, gap):
        """One projected-gradient step from the returned point (a fixed point at the
        optimum: it sets entries a Newton step left at ~1e-17 to exactly 0), kept for the
        episodes where it does not raise the gap.  Returns (state, P, gap)."""
        Lam = project_simplex(torch.baddbmm(self.C0, self.Mp, s.Lam))   # Lam + eta grad D(Lam), projected
        lin = self.ora.lin(Lam)
        S, _ = self.ora.scores(lin)
        P_new, gap_new = self.ora.objectives(Lam, lin, S, None)
        keep = gap_new <= gap
        Lam = torch.where(keep[:, None, None], Lam, s.Lam)
        return replace(s, Lam=Lam, Lam_prev=Lam), torch.where(keep, P_new, P), torch.where(keep, gap_new, gap)

    def check(self, s: FISTAState, active=None):
        lin = self.ora.lin(s.Lam)
        S, _ = self.ora.scores(lin)
        P, gap = self.ora.objectives(s.Lam, lin, S, None)
        face = s.Lam > 0
        active = torch.ones_like(face[:, 0, 0]) if active is None else active
        pending = active & (gap > self.tol * torch.clamp(P.abs(), min=self.floor))
        if (self.newton and s.n_newton < self.max_newton and s.face_prev is not None
                and bool(pending.any()) and bool((face == s.face_prev).all())):
            # the face is stable: one Newton step on it solves the QP there (kept for
            # every running episode whose gap it lowers)
            Lam_try, P_try, gap_try = newton_step_gram(self.K, self.Y, self.l2, self.rho, s.Lam, S, self.ora)
            acc = active & (gap_try < gap)
            a3 = acc[:, None, None]
            Lam = torch.where(a3, Lam_try, s.Lam)
            s = replace(s, Lam=Lam, Lam_prev=torch.where(a3, Lam, s.Lam_prev),
                        t=torch.where(acc, torch.ones_like(s.t), s.t), n_newton=s.n_newton + 1)
            P, gap = torch.where(acc, P_try, P), torch.where(acc, gap_try, gap)
            face = Lam > 0
        return replace(s, face_prev=face), P, gap


# --------------------------------------------------------------- feature mode
def newton_step_features(full, Lam, S):
    r"""Newton step of the dual on the current face with the active rows of W fixed
    (where D is smooth): ``(P M P) delta = P grad D(Lam)`` with ``M`` the dual Hessian
    (:class:`~metasparse.solvers.face.DualHessian`), projected back onto the
    simplices; returns the new point with its V, S, W, P, gap."""
    Vt = full.lin(Lam)
    M = DualHessian.at(full.X, Vt, column_norms(Vt), full.l1, full.l2, full.rho, solve_dtype=full.X.dtype)
    Lam_t = _face_newton_point(M, full.gradient(Lam, S), Lam)
    V_t = full.lin(Lam_t)
    S_t, W_t = full.scores(V_t)
    P_t, gap_t = full.objectives(Lam_t, V_t, S_t, W_t)
    return Lam_t, V_t, S_t, W_t, P_t, gap_t


class FeatureFISTA:
    r"""FISTA in feature space (some lambda1 > 0, or the unrolled backward).

    ``X`` (B, n, d) the features the iterations multiply by (float32 features keep a
    float64 state: ``mixed``), ``X_check`` the features of the full gap checks (float64
    copy in mixed mode).  The working set (``working_set=True``, no autograd) is
    rebuilt at a check when a feature outside it crossed ``(1 - ws_margin) lambda1`` or
    when it can shrink by 20%; the check's full ``V`` re-anchors the iteration state.
    The state's ``W_last`` holds the weights of the last check (float64 in mixed mode).
    """

    def __init__(self, X, X_check, Y, l1, l2, rho, K, tol: float, working_set: bool, ws_margin: float,
                 newton: bool, max_newton: int = 3):
        B, n, d = X.shape
        self.X, self.tol = X, tol
        self.l1, self.ws_margin = l1, ws_margin
        grad = torch.is_grad_enabled()
        self.mixed = X.dtype != X_check.dtype
        self.use_ws = working_set and not grad
        self.full = Oracle(X_check, Y, l1, l2, rho, gram=False)
        self.eta = (1.0 / lipschitz_constant(None, l2.detach(), rho, K=K))[:, None, None]
        self.Y, self.l2, self.rho = Y, l2, rho
        self.refresh = self.use_ws or self.mixed         # checks re-anchor on the full V
        self.newton = self.refresh and newton and bool((rho > 0).all())
        self.max_newton = max_newton
        self.floor = 1e-12 * n

    def init_state(self, init=None) -> FISTAState:
        Lam = zero_weight_dual(self.Y, self.l2.detach(), self.rho) if init is None else init
        ora = self.full if not self.mixed else Oracle(self.X, self.Y, self.l1, self.l2, self.rho, gram=False)
        lin = ora.lin(Lam)
        return FISTAState(Lam=Lam, Lam_prev=Lam, t=torch.ones(Lam.shape[0], dtype=Lam.dtype, device=Lam.device),
                          lin=lin, lin_prev=lin, ora=ora)

    def update(self, s: FISTAState) -> FISTAState:
        t_next, beta = _momentum(s.t)
        b3 = beta[:, None, None]
        Z = s.Lam + b3 * (s.Lam - s.Lam_prev)
        linZ = s.lin + b3 * (s.lin - s.lin_prev)
        SZ, _ = s.ora.scores(linZ)
        Lam_new = project_simplex(Z + self.eta * s.ora.gradient(Z, SZ))
        lin_new = s.ora.lin_step(s.lin, s.Lam, Lam_new)
        return replace(s, Lam=Lam_new, Lam_prev=s.Lam, t=_restart(Z, Lam_new, s.Lam, t_next).detach(),
                       lin=lin_new, lin_prev=s.lin)

    @staticmethod
    def _gather(s: FISTAState, V):
        B, k = V.shape[:2]
        idx = s.ws_idx
        return V if idx is None else V.gather(2, idx[:, None, :].expand(B, k, idx.shape[1]))

    def working_set_step(self, s: FISTAState, V: torch.Tensor) -> FISTAState:
        """Rebuild the working set from the full ``V`` when needed; re-anchor ``lin``."""
        B, n, d = self.X.shape
        if self.use_ws:
            nrm = (V * V).sum(-2).sqrt()                                          # (B, d)
            need = nrm > (1.0 - self.ws_margin) * self.l1[:, None]
            m_need = max(int(need.sum(-1).max()), 1)
            ws_size = d if s.ws_idx is None else s.ws_idx.shape[1]
            outside = s.ws_idx is not None and bool(
                (need.sum(-1) > need.gather(1, s.ws_idx).sum(-1)).any())
            if outside or m_need < 0.8 * ws_size:
                ws_size = min(d, max(m_need + m_need // 8, 1))
                idx = nrm.topk(ws_size, dim=-1).indices                          # (B, m)
                Xw = self.X.gather(2, idx[:, None, :].expand(B, n, ws_size))
                s = replace(s, ws_idx=idx, ora=Oracle(Xw, self.Y, self.l1, self.l2, self.rho, gram=False))
                lin = self._gather(s, V)
                return replace(s, lin=lin, lin_prev=s.ora.lin_step(lin, s.Lam, s.Lam_prev))
        return replace(s, lin=self._gather(s, V))

    def check(self, s: FISTAState, active=None):
        with torch.no_grad():
            if not self.refresh:
                S, W = s.ora.scores(s.lin.detach())
                P, gap = s.ora.objectives(s.Lam.detach(), s.lin.detach(), S, W)
                return s, P, gap
            # the full V (float64 in mixed mode) re-anchors the iteration state
            V = s.lin if (s.ws_idx is None and not self.mixed) else self.full.lin(s.Lam)
            s = self.working_set_step(s, V)
            S, W = self.full.scores(V)
            P, gap = self.full.objectives(s.Lam, V, S, W)
            if self.newton:
                s, V, S, W, P, gap = self._newton_try(s, V, S, W, P, gap, active)
            return replace(s, W_last=W), P, gap

    def _newton_try(self, s, V, S, W, P, gap, active):
        """Up to ``max_newton`` Newton steps while the face and the active rows are stable."""
        l1 = self.l1
        face = s.Lam > 0
        feat = (V * V).sum(-2) > (l1 * l1)[:, None]
        pending = gap > self.tol * torch.clamp(P.abs(), min=self.floor)
        pending = pending if active is None else pending & active
        if (s.n_newton < self.max_newton and s.face_prev is not None and bool(pending.any())
                and bool((face == s.face_prev).all()) and bool((feat == s.feat_prev).all())):
            Lam_t, V_t, S_t, W_t, P_t, gap_t = newton_step_features(self.full, s.Lam, S)
            acc = pending & (gap_t < gap)
            a3 = acc[:, None, None]
            Lam = torch.where(a3, Lam_t, s.Lam)
            V, S, W = torch.where(a3, V_t, V), torch.where(a3, S_t, S), torch.where(a3, W_t, W)
            P, gap = torch.where(acc, P_t, P), torch.where(acc, gap_t, gap)
            lin = self._gather(s, V)
            s = replace(s, Lam=Lam, Lam_prev=torch.where(a3, Lam, s.Lam_prev),
                        t=torch.where(acc, torch.ones_like(s.t), s.t), lin=lin,
                        lin_prev=torch.where(a3, lin, s.lin_prev), n_newton=s.n_newton + 1)
            face = Lam > 0
            feat = (V * V).sum(-2) > (l1 * l1)[:, None]
        return replace(s, face_prev=face, feat_prev=feat), V, S, W, P, gap

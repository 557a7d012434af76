r"""Batched accelerated solver for the (smoothed) dual of the group-sparse SVM.

Maximises (paper.md section 3; notation in :mod:`metasparse.solvers.objectives`)

    D(Lam) = <Lam, Delta> - 1/(2 lambda2) sum_j max(0, ||(X^T (Y - Lam))_j|| - lambda1)^2
             - rho/(2 lambda2) ||Lam - Y||^2      s.t. every row of Lam in the simplex

by FISTA (projected accelerated gradient) with the gradient-based adaptive restart
of O'Donoghue & Candes (2015), step ``1/L`` with the exact Lipschitz constant
``L = (||X||_2^2 + rho) / lambda2`` (``||X||_2^2`` = largest eigenvalue of the n x n
Gram matrix ``K = X X^T``).  All episodes of a batch advance in the same tensor
operations; an episode whose relative duality gap is below ``tol`` is frozen
(masked) while the others continue.

Cost per iteration: with ``lambda1 = 0`` everywhere the solver works in Gram space
(``X W = K (Y - Lam) / lambda2``; O(n^2 k) per episode); with ``lambda1 > 0`` the
block soft-thresholding needs the d rows of ``X^T (Y - Lam)`` (two n x d x k matmuls
per iteration; the extrapolated point reuses them because ``Lam -> X^T(Y - Lam)`` is
affine).

Gradients: ``backward="implicit"`` (default) differentiates the optimality
conditions at the returned point (:func:`metasparse.solvers.implicit.implicit_dual_vjp`),
``backward="unrolled"`` backpropagates through the iterations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from . import engine
from .implicit import GramSVMWeights, GroupSparseWeights, ImplicitDual
from .newton import WorkingSetNewton
from .objectives import (
    as_episode_vector, bst_factor, zero_weight_dual, crammer_singer_loss, dual_features, fenchel_young_gap, row_norms,
    weights_from_features,
)
from .simplex import project_simplex
from .threads import solver_threads

__all__ = ["DualSolution", "GroupSparseSVMDual", "lipschitz_constant"]


@dataclass
class DualSolution:
    """Result of :meth:`GroupSparseSVMDual.run` (per-episode tensors, leading dim B)."""

    dual: torch.Tensor      # Lam* (B, n, k)
    weights: torch.Tensor   # W* = BST(X^T (Y - Lam*), lambda1) / lambda2, (B, d, k)
    gap: torch.Tensor       # P(W*) - D(Lam*), (B,)
    rel_gap: torch.Tensor   # gap / max(P(W*), 1e-12 n), (B,)
    n_iter: torch.Tensor    # iterations used per episode, (B,) int64
    primal: torch.Tensor    # P(W*), (B,)
    converged: torch.Tensor = None  # (B,) bool: rel_gap <= tol (False: the solve stopped short)


def lipschitz_constant(X: torch.Tensor, lambda2: torch.Tensor, dual_reg: torch.Tensor,
                       K: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""``L = (sigma_max(X)^2 + rho) / lambda2`` per episode (exact, via eigvalsh of X X^T).

    Slightly inflated (relative 1e-5 of ``sigma_max^2``) so rounding in the
    eigenvalue never gives a step above ``1/L``; floored so all-zero features with
    ``rho = 0`` still give a finite step.
    """
    with torch.no_grad():
        K = X @ X.transpose(1, 2) if K is None else K
        sig2 = torch.linalg.eigvalsh(K)[..., -1].clamp(min=0.0)
        L = (sig2 * (1.0 + 1e-5) + dual_reg) / lambda2
        floor = 1e-12 / lambda2
        return torch.maximum(L, floor)


class _Oracle:
    r"""Affine state of a dual point and everything computed from it.

    ``lin(Lam)`` is ``V = X^T (Y - Lam)`` (feature mode) or ``K (Y - Lam)`` (Gram mode,
    only when lambda1 = 0); scores ``S = X W(Lam)`` and objectives follow from it.
    """

    def __init__(self, X, Y, lambda1, lambda2, dual_reg, gram: bool, K=None):
        self.X, self.Y, self.l1, self.l2, self.rho = X, Y, lambda1, lambda2, dual_reg
        self.c = dual_reg / lambda2
        self.inv_l2 = 1.0 / lambda2
        self.gram = gram
        self.Delta = 1.0 - Y
        if gram:
            self.K = X @ X.transpose(1, 2) if K is None else K

    def lin(self, Lam):
        """Gram mode ``K (Y - Lam)`` (B, n, k); feature mode ``V^T = (Y - Lam)^T X`` (B, k, d)
        (class-major: both products of an iteration are ~2x faster in this layout)."""
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
        factor = bst_factor((lin * lin).sum(-2).sqrt(), self.l1)             # (B, d)
        Wt = lin * (factor * self.inv_l2[:, None]).unsqueeze(-2)         # (B, k, d)
        S = (self.X @ Wt.to(self.X.dtype).transpose(1, 2)).to(Wt.dtype)
        return S, Wt.transpose(1, 2)

    def gradient(self, Lam, S):
        return self.Delta + S + self.c[:, None, None] * (self.Y - Lam)

    def objectives(self, Lam, lin, S, W):
        """(P(W(Lam)), P - D) per episode; the gap in the cancellation-free Fenchel-Young form."""
        gap = fenchel_young_gap(S, self.Y, Lam, self.c)
        loss = crammer_singer_loss(S, self.Y, self.c)
        if self.gram:
            G = self.Y - Lam
            return loss + 0.5 * (G * S).sum((-1, -2)), gap   # lambda2/2 ||W||^2 = <G, S>/2
        P = loss + self.l1 * row_norms(W).sum(-1) + 0.5 * self.l2 * (W * W).sum((-1, -2))
        return P, gap


class _StoppingRule:
    r"""Per-episode stopping of the batched iterations.

    An episode stops when its relative duality gap ``(P - D) / max(|P|, floor) <= tol``,
    or when its best gap has not improved by 1% in ``patience`` checks (a rounding
    floor, e.g. float32 on badly conditioned X). Stopped episodes are frozen: the
    objective values reported for them are those of their returned point.
    """

    def __init__(self, B: int, tol: float, patience: int, dtype, device):
        self.tol, self.patience = tol, patience
        self.active = torch.ones(B, dtype=torch.bool, device=device)
        self.best = torch.full((B,), torch.inf, dtype=dtype, device=device)
        self.since = torch.zeros(B, dtype=torch.int64, device=device)
        self.P = self.gap = None

    def update(self, rel: torch.Tensor, P: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        """Record a check; returns the new ``active`` mask."""
        done = ~self.active
        improved = rel < 0.99 * self.best
        self.best = torch.where(improved, rel, self.best)
        self.since = torch.where(improved, torch.zeros_like(self.since), self.since + 1)
        self.active = self.active & ~(rel <= self.tol) & (self.since < self.patience)
        if self.P is None:
            self.P, self.gap = P, gap
        else:
            self.P = torch.where(done, self.P, P)
            self.gap = torch.where(done, self.gap, gap)
        return self.active


class GroupSparseSVMDual:
    r"""Batched FISTA-with-restart solver of the group-sparse SVM dual.

    Parameters
    ----------
    tol: stop an episode when ``(P - D) / max(P, 1e-12 n) <= tol`` (relative duality gap).
    max_iter: iteration cap (per batch).
    check_every: the gap is evaluated every this many iterations (costs one extra
        n x d x k matmul in feature mode).
    backward: ``"implicit"`` (exact at the solution) or ``"unrolled"``.
    patience: stop an episode whose relative gap has not improved by 1% in this many
        gap checks (the rounding floor of the working precision was reached; the
        returned ``rel_gap`` then tells how far it got).
    working_set, ws_margin: iterate on the features with ``||V_j|| > (1 - ws_margin)
        lambda1`` at the last gap check (feature mode; see :meth:`_iterate`).
    newton: FISTA paths: when the active face of the simplices (and, lambda1 > 0, the
        active rows) is unchanged between two gap checks, try (at most 3 times) the exact
        Newton step on that face; kept only if the gap drops.
    method: ``"auto"`` (default): episodes with lambda1 > 0 and the implicit backward are
        solved by the working-set semismooth Newton method of
        :mod:`metasparse.solvers.newton` (5-10 iterations on ResNet-12 features where
        FISTA needs 300-1500), lambda1 = 0 batches by FISTA in Gram space with Newton
        steps; ``"fista"``: FISTA everywhere (the unrolled backward always uses it).
        ``max_iter`` counts iterations of the method used.
    """

    def __init__(self, tol: float = 1e-5, max_iter: int = 2000, check_every: int = 10,
                 backward: str = "implicit", patience: int = 20, working_set: bool = True,
                 ws_margin: float = 0.2, newton: bool = True, cpu_threads: Optional[int] = 1,
                 method: str = "auto"):
        if backward not in ("implicit", "unrolled"):
            raise ValueError(f"backward: expected 'implicit' or 'unrolled', got {backward!r}")
        if method not in ("auto", "fista"):
            raise ValueError(f"method: expected 'auto' or 'fista', got {method!r}")
        self.method = method
        if not tol > 0:
            raise ValueError(f"tol: expected a positive float, got {tol}")
        if int(max_iter) < 0 or int(check_every) < 1:
            raise ValueError("max_iter must be >= 0 and check_every >= 1")
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.check_every = int(check_every)
        self.backward = backward
        self.patience = int(patience)
        self.working_set = bool(working_set)
        self.ws_margin = float(ws_margin)
        self.newton = bool(newton)
        self.max_newton = 3
        if cpu_threads is not None and int(cpu_threads) < 1:
            raise ValueError(f"cpu_threads: expected None or an int >= 1, got {cpu_threads}")
        self.cpu_threads = None if cpu_threads is None else int(cpu_threads)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _check(X, Y):
        if X.dim() != 3 or Y.dim() != 3 or X.shape[:2] != Y.shape[:2]:
            raise ValueError(f"solver: expected X (B, n, d) and one-hot Y (B, n, k), got "
                             f"{tuple(X.shape)} and {tuple(Y.shape)}")
        if not X.is_floating_point():
            raise ValueError(f"solver: X must be a floating tensor, got {X.dtype}")
        with torch.no_grad():
            finite = bool(torch.isfinite(X.sum())) or bool(torch.isfinite(X).all())
        if not finite:
            raise ValueError("solver: support features contain NaN or Inf")

    # --------------------------------------------------------------------- run
    def run(self, X: torch.Tensor, Y: torch.Tensor, lambda1, lambda2, dual_reg,
            init: Optional[torch.Tensor] = None) -> DualSolution:
        """Solve every episode of the batch; differentiable w.r.t. X, lambda1, lambda2.

        ``X`` (B, n, d), ``Y`` (B, n, k) one-hot, ``lambda1 >= 0``, ``lambda2 > 0``,
        ``dual_reg >= 0`` (floats or (B,) tensors), ``init`` (B, n, k) warm start (any
        point; it is projected onto the simplex rows).
        """
        with solver_threads(X.device, self.cpu_threads):
            return self._run(X, Y, lambda1, lambda2, dual_reg, init)

    def _run(self, X, Y, lambda1, lambda2, dual_reg, init):
        self._check(X, Y)
        B = X.shape[0]
        Y = Y.to(X.dtype)
        l1 = as_episode_vector(lambda1, B, X, "lambda1")
        l2 = as_episode_vector(lambda2, B, X, "lambda2")
        rho = as_episode_vector(dual_reg, B, X, "dual_reg").detach()
        if bool((l1 < 0).any()) or not bool(torch.isfinite(l1).all()):
            raise ValueError("lambda1: expected finite values >= 0")
        if not bool((l2 > 0).all()) or not bool(torch.isfinite(l2).all()):
            raise ValueError("lambda2: expected finite values > 0")
        if bool((rho < 0).any()):
            raise ValueError("dual_reg: expected values >= 0")
        if init is not None:
            if init.shape != Y.shape:
                raise ValueError(f"init: expected shape {tuple(Y.shape)}, got {tuple(init.shape)}")
            init = init.detach().to(X.dtype)
            tol_sum = 10 * init.shape[-1] * torch.finfo(init.dtype).eps
            if not (bool((init >= 0).all()) and bool(((init.sum(-1) - 1).abs() <= tol_sum).all())):
                init = project_simplex(init)   # a feasible init is kept bit-exact

        if self.method == "auto" and self.backward == "implicit" and bool((l1 > 0).any()):
            return self._run_newton(X, Y, l1, l2, rho, init)
        K = None
        if not bool((l1 > 0).any()):
            with torch.no_grad():
                K = X.detach() @ X.detach().transpose(1, 2)     # shared by forward and backward
        if self.backward == "unrolled":
            with torch.enable_grad():
                Lam, n_iter, P, gap, W_val = self._iterate(X, Y, l1, l2, rho, init, K)
        else:
            with torch.no_grad():
                Lam, n_iter, P, gap, W_val = self._iterate(X.detach(), Y, l1.detach(), l2.detach(), rho,
                                                           init, K)
            needs_grad = torch.is_grad_enabled() and (X.requires_grad or l1.requires_grad or l2.requires_grad)
            if needs_grad and K is not None and not l1.requires_grad:
                # lambda1 = 0: W and its implicit backward in one function (one fused
                # gradient for X instead of three rank-k outer products)
                W = GramSVMWeights.apply(X, l2, Lam, K, Y, rho, self.cpu_threads)
                with torch.no_grad():
                    rel = gap / torch.clamp(P.abs(), min=1e-12 * X.shape[1])
                return DualSolution(dual=Lam, weights=W, gap=gap.detach(), rel_gap=rel,
                                    n_iter=n_iter, primal=P.detach(), converged=rel <= self.tol)
            if needs_grad:
                Lam = ImplicitDual.apply(Lam, X, l1, l2, Y, rho, K, self.cpu_threads)

        W = weights_from_features(dual_features(X, Y, Lam), l1, l2)
        if W_val is not None and self.backward != "unrolled":
            # value of the (float64) check at the returned point, gradient of the graph
            W = W + (W_val - W).detach()
        P, gap = P.detach(), gap.detach()      # evaluated at the returned Lam by _iterate
        rel = gap / torch.clamp(P.abs(), min=1e-12 * X.shape[1])
        return DualSolution(dual=Lam, weights=W, gap=gap, rel_gap=rel, n_iter=n_iter, primal=P,
                            converged=rel <= self.tol)

    # ---------------------------------------------------------------- Newton
    def _run_newton(self, X, Y, l1, l2, rho, init) -> DualSolution:
        """Working-set semismooth Newton (:mod:`metasparse.solvers.newton`), then the
        weights with their implicit backward (:class:`GroupSparseWeights`)."""
        n = X.shape[1]
        with torch.no_grad():
            Lam0 = zero_weight_dual(Y, l2.detach(), rho) if init is None else init
            solver = WorkingSetNewton(X.detach(), Y, l1.detach(), l2.detach(), rho)
            res = engine.run(solver, solver.init_state(Lam0), tol=self.tol, max_iter=self.max_iter,
                             check_every=1, patience=self.patience, floor=1e-12 * n)
            state, P, gap = solver.finalize(res.state)
            # the certificate of the finalized point (a projected-gradient step from the
            # returned one: never worse in D, equal at the optimum up to rounding)
            gap = torch.where(torch.isfinite(res.gap), gap, res.gap)
            rel = gap / torch.clamp(P.abs(), min=1e-12 * n)
        Lam64, rows = state.Lam, state.prob.idx
        Lam = Lam64.to(X.dtype)
        needs_grad = torch.is_grad_enabled() and (X.requires_grad or l1.requires_grad or l2.requires_grad)
        if needs_grad and not bool((rho > 0).all()):
            # rho = 0: the dual optimum need not be unique; the generic backward takes the
            # minimum-norm solution of the face system in orthonormal coordinates
            Lam = ImplicitDual.apply(Lam, X, l1, l2, Y, rho, None, self.cpu_threads)
            W = weights_from_features(dual_features(X, Y, Lam), l1, l2)
            W = W + (GroupSparseWeights.apply(X.detach(), l1.detach(), l2.detach(), Lam64, Y, rho, rows) - W).detach()
        else:
            W = GroupSparseWeights.apply(X, l1, l2, Lam64, Y, rho, rows, self.cpu_threads)
            if needs_grad:
                Lam = ImplicitDual.apply(Lam, X, l1, l2, Y, rho, None, self.cpu_threads)
        return DualSolution(dual=Lam, weights=W, gap=gap.to(X.dtype), rel_gap=rel.to(X.dtype), n_iter=res.n_iter,
                            primal=P.to(X.dtype), converged=rel <= self.tol)

    # ----------------------------------------------------------------- FISTA
    def _iterate(self, X, Y, l1, l2, rho, init, K=None):
        r"""FISTA with restart; returns (Lam, n_iter, P, gap) at the returned point.

        Feature mode (some lambda1 > 0) iterates on a *working set* of features: at
        every gap check the full ``V = X^T (Y - Lam)`` is formed, the gap is the exact
        gap of the full problem, and the working set is rebuilt as the features with
        ``||V_j|| > (1 - margin) lambda1`` whenever one outside it has crossed or it can
        shrink by 20%.  Features outside have ``W_j = 0`` at the check, so the
        iterations between checks are (in practice) exact; correctness never rests on
        it because convergence is only declared on the full gap.
        """
        B, n, d = X.shape
        gram = not bool((l1 > 0).any())
        out_dtype = X.dtype
        if K is None:
            K = X.detach() @ X.detach().transpose(1, 2)
        if gram and X.dtype != torch.float64 and not torch.is_grad_enabled():
            # Gram mode costs O(n^2 k) per iteration: iterate in float64 on the
            # float32 Gram matrix (float32 accumulation of K (Y - Lam) otherwise
            # limits the attainable relative gap to ~1e-4 on 16000-d features).
            K = K.double()
            Y, l1, l2, rho = Y.double(), l1.double(), l2.double(), rho.double()
            init = None if init is None else init.double()
        if gram and not torch.is_grad_enabled():
            Lam, n_iter, P, gap = self._iterate_gram(K, Y, l2, rho, init)
            return Lam.to(out_dtype), n_iter, P.to(out_dtype), gap.to(out_dtype), None
        use_ws = (not gram) and not torch.is_grad_enabled() and self.working_set
        mixed = (not gram) and X.dtype != torch.float64 and not torch.is_grad_enabled()
        Xit = X                                  # the features the iterations multiply by
        if mixed:
            # float32 features: iterate with a float64 state (Lam, V) and incremental
            # float32 matmuls; gap checks in float64.  Otherwise steps of size 1/L on
            # badly conditioned X fall below float32 resolution and the gap stalls
            # around 1e-4.
            Y, l1, l2, rho = Y.double(), l1.double(), l2.double(), rho.double()
            init = None if init is None else init.double()
            K = K.double()
            X = X.double()
        full = _Oracle(X, Y, l1, l2, rho, gram=gram, K=K)
        ora = full if not mixed else _Oracle(Xit, Y, l1, l2, rho, gram=False)
        eta = (1.0 / lipschitz_constant(None, l2.detach(), rho, K=K))[:, None, None]
        Lam = zero_weight_dual(Y, l2.detach(), rho) if init is None else init
        lin = ora.lin(Lam)
        Lam_prev, lin_prev = Lam, lin
        t = torch.ones(B, dtype=Lam.dtype, device=X.device)
        stop = _StoppingRule(B, self.tol, self.patience, Lam.dtype, X.device)
        active = stop.active
        n_iter = torch.zeros(B, dtype=torch.int64, device=X.device)
        floor = 1e-12 * n
        ws_idx, ws_size = None, d            # None: all features
        W_last = None
        newton_f = (use_ws or mixed) and self.newton and bool((rho > 0).all())
        face_prev, feat_prev, n_newton = None, None, 0
        all_active = True
        for it in range(self.max_iter + 1):
            if it % self.check_every == 0 or it == self.max_iter:
                with torch.no_grad():
                    if use_ws or mixed:
                        # the full V (float64 in mixed mode) re-anchors the iteration state
                        V = lin if (ws_idx is None and not mixed) else full.lin(Lam)
                        if use_ws:
                            nrm = (V * V).sum(-2).sqrt()                          # (B, d)
                            need = nrm > (1.0 - self.ws_margin) * l1[:, None]
                            m_need = max(int(need.sum(-1).max()), 1)
                            outside = ws_idx is not None and bool(
                                (need.sum(-1) > need.gather(1, ws_idx).sum(-1)).any())
                            if outside or m_need < 0.8 * ws_size:
                                ws_size = min(d, max(m_need + m_need // 8, 1))
                                ws_idx = nrm.topk(ws_size, dim=-1).indices      # (B, m)
                                Xw = Xit.gather(2, ws_idx[:, None, :].expand(B, n, ws_size))
                                ora = _Oracle(Xw, Y, l1, l2, rho, gram=False)
                                lin = V.gather(2, ws_idx[:, None, :].expand(B, V.shape[1], ws_size))
                                lin_prev = ora.lin_step(lin, Lam, Lam_prev)
                        if ws_idx is None:
                            lin = V
                        else:
                            lin = V.gather(2, ws_idx[:, None, :].expand(B, V.shape[1], ws_size))
                        S, W = full.scores(V)
                        P, gap = full.objectives(Lam, V, S, W)
                        if newton_f:
                            face = Lam > 0
                            feat = (V * V).sum(-2) > (l1 * l1)[:, None]
                            pending = active & (gap > self.tol * torch.clamp(P.abs(), min=floor))
                            if (n_newton < self.max_newton and face_prev is not None and bool(pending.any())
                                    and bool((face == face_prev).all()) and bool((feat == feat_prev).all())):
                                # stable face and active rows: D is smooth there, try Newton
                                n_newton += 1
                                Lam_t, V_t, S_t, W_t, P_t, gap_t = self._newton_features(full, Lam, S)
                                acc = pending & (gap_t < gap)
                                a3 = acc[:, None, None]
                                Lam = torch.where(a3, Lam_t, Lam)
                                Lam_prev = torch.where(a3, Lam, Lam_prev)
                                t = torch.where(acc, torch.ones_like(t), t)
                                V, S, W = torch.where(a3, V_t, V), torch.where(a3, S_t, S), torch.where(a3, W_t, W)
                                P, gap = torch.where(acc, P_t, P), torch.where(acc, gap_t, gap)
                                lin = V if ws_idx is None else V.gather(
                                    2, ws_idx[:, None, :].expand(B, V.shape[1], ws_size))
                                lin_prev = torch.where(a3, lin, lin_prev)
                                face = Lam > 0
                                feat = (V * V).sum(-2) > (l1 * l1)[:, None]
                            face_prev, feat_prev = face, feat
                        W_last = W
                    else:
                        S, W = ora.scores(lin.detach())
                        P, gap = ora.objectives(Lam.detach(), lin.detach(), S, W)
                    active = stop.update(gap / torch.clamp(P.abs(), min=floor), P, gap)
                n_active = int(active.sum())
                all_active = n_active == B
                if it == self.max_iter or n_active == 0:
                    break
            t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
            beta = ((t - 1.0) / t_next)[:, None, None]
            Z = Lam + beta * (Lam - Lam_prev)
            linZ = lin + beta.reshape(-1, *([1] * (lin.dim() - 1))) * (lin - lin_prev)
            SZ, _ = ora.scores(linZ)
            Lam_new = project_simplex(Z + eta * ora.gradient(Z, SZ))
            lin_new = ora.lin_step(lin, Lam, Lam_new)
            # adaptive restart: momentum pointing against the gradient mapping
            restart = ((Z - Lam_new) * (Lam_new - Lam)).sum((-1, -2)) > 0
            t = torch.where(restart, torch.ones_like(t), t_next).detach()
            if all_active:   # common case: plain updates (restart only zeroes the momentum)
                Lam_prev, lin_prev, Lam, lin = Lam, lin, Lam_new, lin_new
            else:            # frozen (converged) episodes keep their point
                m3 = active[:, None, None]
                mlin = active.reshape(-1, *([1] * (lin.dim() - 1)))
                Lam_prev = torch.where(m3, Lam, Lam_prev)
                lin_prev = torch.where(mlin, lin, lin_prev)
                Lam = torch.where(m3, Lam_new, Lam)
                lin = torch.where(mlin, lin_new, lin)
            n_iter = n_iter + active.to(torch.int64)
        W_last = None if W_last is None else W_last.to(out_dtype).contiguous()
        return Lam.to(out_dtype), n_iter, stop.P.to(out_dtype), stop.gap.to(out_dtype), W_last

    def _iterate_gram(self, K, Y, l2, rho, init):
        r"""lambda1 = 0 everywhere, no autograd: the FISTA step in Gram space is affine,

            Lam+ = proj(Z + eta grad D(Z)) = proj(C0 + M' Z),
            M' = (1 - eta rho/lambda2) I - (eta/lambda2) K,
            C0 = eta (Delta + (rho/lambda2) Y) + (eta/lambda2) K Y,

        one batched matmul-add per iteration (plus the projection and the restart test).
        """
        B, n, k = Y.shape
        dt = K.dtype
        eta = 1.0 / lipschitz_constant(None, l2, rho, K=K)                       # (B,)
        c = rho / l2
        Kp = (eta / l2)[:, None, None] * K
        eye = torch.eye(n, dtype=dt, device=K.device)
        Mp = (1.0 - eta * c)[:, None, None] * eye - Kp
        C0 = eta[:, None, None] * ((1.0 - Y) + c[:, None, None] * Y) + Kp @ Y
        ora = _Oracle(None, Y, torch.zeros_like(l2), l2, rho, gram=True, K=K)
        Lam = zero_weight_dual(Y, l2, rho) if init is None else init
        Lam_prev = Lam
        t = torch.ones(B, dtype=dt, device=K.device)
        stop = _StoppingRule(B, self.tol, self.patience, dt, K.device)
        active = stop.active
        n_iter = torch.zeros(B, dtype=torch.int64, device=K.device)
        floor = 1e-12 * n
        all_active = True
        newton = self.newton and bool((rho > 0).all())
        face_prev, n_newton = None, 0
        for it in range(self.max_iter + 1):
            if it % self.check_every == 0 or it == self.max_iter:
                lin = ora.lin(Lam)
                S, _ = ora.scores(lin)
                P, gap = ora.objectives(Lam, lin, S, None)
                rel = gap / torch.clamp(P.abs(), min=floor)
                face = Lam > 0
                if (newton and n_newton < 3 and face_prev is not None and it > 0
                        and bool(((rel > self.tol) & active).any())
                        and bool((face == face_prev).all())):
                    # the face is stable: one Newton step on it solves the QP there
                    n_newton += 1
                    Lam_try, P_try, gap_try = self._newton_gram(K, Y, l2, rho, Lam, S, ora)
                    acc = active & (gap_try < gap)
                    a3 = acc[:, None, None]
                    Lam = torch.where(a3, Lam_try, Lam)
                    Lam_prev = torch.where(a3, Lam, Lam_prev)
                    t = torch.where(acc, torch.ones_like(t), t)
                    P, gap = torch.where(acc, P_try, P), torch.where(acc, gap_try, gap)
                    rel = gap / torch.clamp(P.abs(), min=floor)
                    face = Lam > 0
                face_prev = face
                active = stop.update(rel, P, gap)
                n_active = int(active.sum())
                all_active = n_active == B
                if it == self.max_iter or n_active == 0:
                    break
            t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
            beta = ((t - 1.0) / t_next)[:, None, None]
            Z = torch.lerp(Lam_prev, Lam, 1.0 + beta)          # Lam + beta (Lam - Lam_prev)
            Lam_new = project_simplex(torch.baddbmm(C0, Mp, Z))
            restart = ((Z - Lam_new) * (Lam_new - Lam)).sum((-1, -2)) > 0
            t = torch.where(restart, torch.ones_like(t), t_next)
            if all_active:
                Lam_prev, Lam = Lam, Lam_new
            else:
                m3 = active[:, None, None]
                Lam_prev = torch.where(m3, Lam, Lam_prev)
                Lam = torch.where(m3, Lam_new, Lam)
            n_iter = n_iter + active.to(torch.int64)
        return Lam, n_iter, stop.P, stop.gap

    @staticmethod
    def _newton_gram(K, Y, l2, rho, Lam, S, ora):
        r"""Newton step on the current face (lambda1 = 0, rho > 0): maximise the quadratic
        dual on ``Lam + T``: ``(P M P) delta = P grad D(Lam)``, ``M = (K (x) I + rho I)/lambda2``;
        the result is projected back onto the simplices and returned with its (P, gap)."""
        from .implicit import _face_blocks, _solve_on_face
        B, n, k = Lam.shape
        eye_k = torch.eye(k, dtype=K.dtype, device=K.device)
        M = (K[:, :, None, :, None] * eye_k[None, None, :, None, :]).reshape(B, n * k, n * k)
        M = (M + rho[:, None, None] * torch.eye(n * k, dtype=K.dtype, device=K.device)) / l2[:, None, None]
        g = ora.gradient(Lam, S)
        delta = _solve_on_face(M, _face_blocks(Lam), g.reshape(B, n * k), True).reshape(B, n, k)
        Lam_try = project_simplex(Lam + delta)
        lin = ora.lin(Lam_try)
        S_try, _ = ora.scores(lin)
        P, gap = ora.objectives(Lam_try, lin, S_try, None)
        return Lam_try, P, gap

    @staticmethod
    def _newton_features(full, Lam, S):
        r"""Newton step of the dual on the current face with the active rows of W fixed
        (where D is smooth): ``(P M P) delta = P grad D(Lam)`` with ``M`` the dual Hessian
        (:func:`metasparse.solvers.implicit.dual_hessian`), projected back onto the
        simplices; returns the new point with its V, S, W, P, gap."""
        from .implicit import _face_blocks, _solve_on_face, dual_hessian
        B, n, k = Lam.shape
        M = dual_hessian(Lam, full.X, full.Y, full.l1, full.l2, full.rho)
        g = full.gradient(Lam, S)
        delta = _solve_on_face(M, _face_blocks(Lam), g.reshape(B, n * k), True).reshape(B, n, k)
        Lam_t = project_simplex(Lam + delta)
        V_t = full.lin(Lam_t)
        S_t, W_t = full.scores(V_t)
        P_t, gap_t = full.objectives(Lam_t, V_t, S_t, W_t)
        return Lam_t, V_t, S_t, W_t, P_t, gap_t

r"""Batched solver for the (smoothed) dual of the group-sparse SVM.

Maximises (notation in :mod:`metasparse.solvers.objectives`)

    D(Lam) = <Lam, Delta> - 1/(2 lambda2) sum_j max(0, ||(X^T (Y - Lam))_j|| - lambda1)^2
             - rho/(2 lambda2) ||Lam - Y||^2      s.t. every row of Lam in the simplex

for every episode of a batch, and returns ``W* = BST(X^T (Y - Lam*), lambda1)/lambda2``
with the per-episode duality gap and a ``converged`` flag.  Methods (one run loop,
:mod:`metasparse.solvers.engine`):

* lambda1 > 0, implicit backward: working-set semismooth Newton
  (:mod:`metasparse.solvers.newton`), weights and backward by
  :class:`~metasparse.solvers.implicit.GroupSparseWeights`;
* lambda1 = 0 everywhere: FISTA in Gram space with Newton steps on a stable face
  (:class:`~metasparse.solvers.fista.GramFISTA`), backward by
  :class:`~metasparse.solvers.implicit.GramSVMWeights`;
* ``method="fista"`` or ``backward="unrolled"``: FISTA in feature space
  (:class:`~metasparse.solvers.fista.FeatureFISTA`), implicit backward by
  :func:`~metasparse.solvers.implicit.implicit_dual_vjp` or autograd through the
  iterations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from . import engine
from .fista import FeatureFISTA, GramFISTA
from .implicit import GramSVMWeights, GroupSparseWeights, ImplicitDual
from .newton import GramNewton, WorkingSetNewton
from .objectives import (
    as_episode_vector, zero_weight_dual, dual_features, weights_from_features,
)
from .simplex import project_simplex
from .threads import solver_threads

__all__ = ["DualSolution", "GroupSparseSVMDual", "NonFiniteInputError"]


class NonFiniteInputError(ValueError):
    """Features or regularisation weights that are NaN or Inf (e.g. ``lambda1 = ratio *
    lambda_max`` overflowing on features of huge magnitude)."""


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
    def _check_shapes(X, Y):
        if X.dim() != 3 or Y.dim() != 3 or X.shape[:2] != Y.shape[:2]:
            raise ValueError(f"solver: expected X (B, n, d) and one-hot Y (B, n, k), got "
                             f"{tuple(X.shape)} and {tuple(Y.shape)}")
        if not X.is_floating_point():
            raise ValueError(f"solver: X must be a floating tensor, got {X.dtype}")

    @staticmethod
    def _host_flags(X, l1, l2, rho, init):
        """Everything the host must know about the inputs, read in one transfer (one host
        sync on a GPU): validity of X, lambda1, lambda2, dual_reg and init, whether some
        lambda1 > 0 and whether every dual_reg > 0."""
        with torch.no_grad():
            checks = [torch.isfinite(X.sum()),
                      ((l1 >= 0) & torch.isfinite(l1)).all(), ((l2 > 0) & torch.isfinite(l2)).all(),
                      (rho >= 0).all(), (l1 > 0).any(), (rho > 0).all()]
            if init is not None:
                tol_sum = 10 * init.shape[-1] * torch.finfo(init.dtype).eps
                checks.append((init >= 0).all() & ((init.sum(-1) - 1).abs() <= tol_sum).all())
            flags = [bool(v) for v in torch.stack(checks).tolist()]
        if not flags[0] and not bool(torch.isfinite(X).all()):
            raise NonFiniteInputError("solver: support features contain NaN or Inf")
        if not flags[1]:
            if bool(torch.isfinite(l1).all()):
                raise ValueError("lambda1: expected finite values >= 0")
            raise NonFiniteInputError("lambda1: expected finite values >= 0, got NaN or Inf")
        if not flags[2]:
            if bool(torch.isfinite(l2).all()):
                raise ValueError("lambda2: expected finite values > 0")
            raise NonFiniteInputError("lambda2: expected finite values > 0, got NaN or Inf")
        if not flags[3]:
            raise ValueError("dual_reg: expected values >= 0")
        sparse, smooth = flags[4], flags[5]
        feasible = flags[6] if init is not None else True
        return sparse, smooth, feasible

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
        self._check_shapes(X, Y)
        B = X.shape[0]
        Y = Y.to(X.dtype)
        l1 = as_episode_vector(lambda1, B, X, "lambda1")
        l2 = as_episode_vector(lambda2, B, X, "lambda2")
        rho = as_episode_vector(dual_reg, B, X, "dual_reg").detach()
        if init is not None:
            if init.shape != Y.shape:
                raise ValueError(f"init: expected shape {tuple(Y.shape)}, got {tuple(init.shape)}")
            init = init.detach().to(X.dtype)
        sparse, smooth, feasible = self._host_flags(X, l1, l2, rho, init)
        if not feasible:
            init = project_simplex(init)   # a feasible init is kept bit-exact

        if self.method == "auto" and self.backward == "implicit" and sparse:
            return self._run_newton(X, Y, l1, l2, rho, init, smooth)
        K = None
        if not sparse:
            with torch.no_grad():
                K = X.detach() @ X.detach().transpose(1, 2)     # shared by forward and backward
        if self.backward == "unrolled":
            with torch.enable_grad():
                Lam, n_iter, P, gap, W_val = self._iterate(X, Y, l1, l2, rho, init, K, sparse, smooth)
        else:
            with torch.no_grad():
                Lam, n_iter, P, gap, W_val = self._iterate(X.detach(), Y, l1.detach(), l2.detach(), rho,
                                                           init, K, sparse, smooth)
            needs_grad = torch.is_grad_enabled() and (X.requires_grad or l1.requires_grad or l2.requires_grad)
            if needs_grad and K is not None and not l1.requires_grad:
                # lambda1 = 0: W and its implicit backward in one function (one fused
                # gradient for X instead of three rank-k outer products)
                W = GramSVMWeights.apply(X, l2, Lam, K, Y, rho, self.cpu_threads, smooth)
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
    def _run_newton(self, X, Y, l1, l2, rho, init, smooth: bool) -> DualSolution:
        """Working-set semismooth Newton (:mod:`metasparse.solvers.newton`), then the
        weights with their implicit backward (:class:`GroupSparseWeights`)."""
        n = X.shape[1]
        with torch.no_grad():
            Lam0 = zero_weight_dual(Y, l2.detach(), rho) if init is None else init
            solver = WorkingSetNewton(X.detach(), Y, l1.detach(), l2.detach(), rho, smooth=smooth)
            res = engine.run(solver, solver.init_state(Lam0), tol=self.tol, max_iter=self.max_iter,
                             check_every=1, patience=self.patience, floor=1e-12 * n)
            finite = torch.isfinite(res.gap)
            state, P, gap = solver.finalize(res.state, res.objective, torch.where(finite, res.gap,
                                                                                   torch.full_like(res.gap, -1.0)))
            gap = torch.where(finite, gap, res.gap)     # an uncertified point stays uncertified
            rel = gap / torch.clamp(P.abs(), min=1e-12 * n)
        Lam64, rows, XF = state.Lam, state.prob.idx, state.prob.XF
        Lam = Lam64.to(X.dtype)
        needs_grad = torch.is_grad_enabled() and (X.requires_grad or l1.requires_grad or l2.requires_grad)
        if needs_grad and not smooth:
            # rho = 0: the dual optimum need not be unique; the generic backward takes the
            # minimum-norm solution of the face system in orthonormal coordinates
            Lam = ImplicitDual.apply(Lam, X, l1, l2, Y, rho, None, self.cpu_threads)
            W = weights_from_features(dual_features(X, Y, Lam), l1, l2)
            W = W + (GroupSparseWeights.apply(X.detach(), l1.detach(), l2.detach(), Lam64, Y, rho, rows, None,
                                                XF) - W).detach()
        else:
            W = GroupSparseWeights.apply(X, l1, l2, Lam64, Y, rho, rows, self.cpu_threads, XF)
            if needs_grad:
                Lam = ImplicitDual.apply(Lam, X, l1, l2, Y, rho, None, self.cpu_threads)
        return DualSolution(dual=Lam, weights=W, gap=gap.to(X.dtype), rel_gap=rel.to(X.dtype), n_iter=res.n_iter,
                            primal=P.to(X.dtype), converged=rel <= self.tol)

    # ----------------------------------------------------------------- FISTA
    def _iterate(self, X, Y, l1, l2, rho, init, K=None, sparse=None, smooth=None):
        r"""FISTA (:mod:`metasparse.solvers.fista`) through the engine's run loop; returns
        (Lam, n_iter, P, gap, W at the last check or None) at the returned point."""
        B, n, d = X.shape
        gram = not (bool((l1 > 0).any()) if sparse is None else sparse)
        out_dtype = X.dtype
        if K is None:
            K = X.detach() @ X.detach().transpose(1, 2)
        grad = torch.is_grad_enabled()
        if gram and not grad:
            # Gram mode costs O(n^2 k) per iteration: iterate in float64 on the float32
            # Gram matrix (float32 accumulation of K (Y - Lam) otherwise limits the
            # attainable relative gap to ~1e-4 on 16000-d features)
            Y64, l2_64, rho64 = Y.double(), l2.double(), rho.double()
            if self.method == "auto" and smooth:
                # Newton in Gram space: iterations independent of the conditioning of K
                solver = GramNewton(K.double(), Y64, l2_64, rho64, smooth=True)
                Lam0 = zero_weight_dual(Y64, l2_64, rho64) if init is None else init.double()
                res = engine.run(solver, solver.init_state(Lam0), tol=self.tol, max_iter=self.max_iter,
                                 check_every=1, patience=self.patience, floor=1e-12 * n)
            else:
                solver = GramFISTA(K.double(), Y64, l2_64, rho64, self.tol, newton=self.newton, smooth=smooth)
                state = solver.init_state(None if init is None else init.double())
                res = engine.run(solver, state, tol=self.tol, max_iter=self.max_iter,
                                 check_every=self.check_every, patience=self.patience, floor=1e-12 * n)
            state, P, gap = solver.finalize(res.state, res.objective, res.gap)
            return state.Lam.to(out_dtype), res.n_iter, P.to(out_dtype), gap.to(out_dtype), None
        mixed = (not gram) and X.dtype != torch.float64 and not grad
        X_check = X
        if mixed:
            # float32 features: iterate with a float64 state (Lam, V) and incremental
            # float32 matmuls; gap checks in float64.  Otherwise steps of size 1/L on
            # badly conditioned X fall below float32 resolution and the gap stalls
            # around 1e-4.
            Y, l1, l2, rho = Y.double(), l1.double(), l2.double(), rho.double()
            init = None if init is None else init.double()
            K, X_check = K.double(), X.double()
        solver = FeatureFISTA(X, X_check, Y, l1, l2, rho, K, self.tol, self.working_set and not gram,
                              self.ws_margin, self.newton)
        res = engine.run(solver, solver.init_state(init), tol=self.tol, max_iter=self.max_iter,
                         check_every=self.check_every, patience=self.patience, floor=1e-12 * n)
        W_last = None if res.state.W_last is None else res.state.W_last.to(out_dtype).contiguous()
        return (res.state.Lam.to(out_dtype), res.n_iter, res.objective.to(out_dtype), res.gap.to(out_dtype),
                W_last)

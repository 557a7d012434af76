r"""The group-sparse multiclass SVM head (docs/maths.md section 3) and MetaOptNet's SVM-CS.

``GroupSparseSVMHead`` fits, per episode, ``W* = argmin_W P(W)`` with

    P(W) = sum_i max_l [Delta_il + x_i^T W_l - x_i^T W_{y_i}]  (smoothed by dual_reg)
           + lambda1 ||W||_{2,1} + lambda2/2 ||W||_F^2

and returns ``logits = scale * query @ W*``.  ``lambda1 = lambda_ratio * lambda_max``
per episode (``lambda_max`` treated as a constant in the backward pass), or an
absolute ``lambda1``.

``SVMHead`` is exactly this head at ``lambda_ratio = 0`` (MetaOptNet's SVM-CS): the two
share ``lambda2``, ``dual_reg`` and the solver defaults, so the default comparison of the
two heads changes one thing, ``lambda1``.  The shared defaults are MetaOptNet's SVM-CS:
``C = 0.1``, i.e. ``lambda2 = 1 / C = 10`` (:data:`DEFAULT_LAMBDA2`), and
``dual_reg = 1`` (:data:`DEFAULT_DUAL_REG`).  MetaOptNet's / learn2learn's QP
``min_a 1/2 a^T (K (x) I + I) a - a^T y  s.t. a <= C y, sum_l a_il = 0`` is our dual
with ``a = C (Y - Lam)``, i.e. ``lambda2 = 1 / C_reg`` and ``dual_reg = 1``
(predictions agree; see tests/heads).  ``solver="qpth"`` runs learn2learn's
``SVClassifier`` itself, one episode at a time (the faithful baseline).
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
from typing import Optional

import torch
from torch import nn

from ..solvers.lambda_max import lambda_max as compute_lambda_max
from ..solvers.objectives import as_episode_vector, dual_objective, one_hot, primal_objective, row_norms
from ..solvers.simplex import project_simplex
from ..solvers.svm_dual import GroupSparseSVMDual, NonFiniteInputError
from .base import Head, HeadFit, NonFiniteFeaturesError

__all__ = ["GroupSparseSVMHead", "SVMHead", "DEFAULT_LAMBDA2", "DEFAULT_DUAL_REG", "MissingExtraError"]

_SOLVERS = ("dual", "cvxpylayers")

#: ridge weight shared by both SVM heads: MetaOptNet's SVM-CS cost ``C = 0.1`` (``lambda2 = 1/C``)
DEFAULT_LAMBDA2 = 10.0
#: dual smoothing shared by both SVM heads (MetaOptNet's QP has ``dual_reg = 1``)
DEFAULT_DUAL_REG = 1.0


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed: an ImportError, and a ValueError so that
    :func:`metasparse.registry.build_head` reports it as a one-line configuration error."""


#: the modules ``solver="qpth"`` imports: learn2learn's SVClassifier runs on qpth
_QPTH_MODULES = ("learn2learn", "qpth")


def _require_qpth() -> None:
    """Raise :class:`MissingExtraError` naming the ``[l2l]`` extra when learn2learn or qpth
    is not installed (looked up, not imported: importing learn2learn takes seconds)."""
    missing = [m for m in _QPTH_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"solver 'qpth' needs {' and '.join(missing)}, not installed: "
                                f"pip install 'metasparse[l2l]' (the learn2learn / qpth extra; "
                                f"tools/setup_venv.sh builds learn2learn 0.2.0 on Python 3.11)")


def _positive(name, value):
    v = float(value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name}: expected a finite value > 0, got {value}")
    return v


class GroupSparseSVMHead(Head):
    r"""Group-Lasso multiclass SVM head.

    Parameters
    ----------
    lambda_ratio: lambda1 / lambda_max per episode (default 0.01 when ``lambda1`` is
        not given); ``>= 1`` gives ``W* = 0`` exactly.
    lambda1: absolute group-Lasso weight (instead of ``lambda_ratio``; exactly one).
    lambda2: ridge weight (> 0; default 10 = 1 / MetaOptNet's C = 0.1).
    dual_reg: dual smoothing rho (>= 0; default 1, MetaOptNet's QP).
    solver: ``"dual"`` (batched FISTA, implicit or unrolled backward) or
        ``"cvxpylayers"`` (exact, slow reference).
    learn_lambda1 / learn_lambda2: make ``lambda_ratio`` (or ``lambda1``) and
        ``lambda2`` learnable (stored as log-parameters, so they stay positive).
    tol, max_iter, backward, cpu_threads: passed to
        :class:`~metasparse.solvers.GroupSparseSVMDual` (``cpu_threads``, default 1: the
        intra-op threads of the solve, its backward and lambda_max on CPU; ``None``
        keeps torch's setting, see :mod:`metasparse.solvers.threads`).

    The state dict holds what was given, under its own name: ``lambda_ratio_value``
    (buffer) or ``log_lambda_ratio`` (learnable) for a ratio, ``lambda1_value`` /
    ``log_lambda1`` for an absolute ``lambda1``; ``lambda2_value`` / ``log_lambda2``.
    Checkpoints written before the ratio had its own name (a ratio stored as
    ``lambda1_value`` / ``log_lambda1``) load as before.

    ``fit.converged`` (B,) is the solver's per-episode ``rel_gap <= tol`` (episodes with
    ``lambda1 >= lambda_max``, set to ``W* = 0`` exactly, count as converged); with
    ``solver="cvxpylayers"`` it compares ``P(W) - D(proj(Lam))`` at the returned pair
    (relative) with ``tol``.
    """

    def __init__(self, lambda_ratio: Optional[float] = None, lambda2: float = DEFAULT_LAMBDA2,
                 dual_reg: float = DEFAULT_DUAL_REG, solver: str = "dual", *, lambda1: Optional[float] = None,
                 learn_lambda1: bool = False, learn_lambda2: bool = False, tol: float = 1e-5,
                 max_iter: int = 2000, backward: str = "implicit", init_scale: float = 1.0,
                 learn_scale: bool = True, lambda_max_rtol: float = 5e-3,
                 cpu_threads: Optional[int] = 1):
        super().__init__(init_scale, learn_scale)
        if lambda_ratio is not None and lambda1 is not None:
            raise ValueError("GroupSparseSVMHead: give exactly one of lambda_ratio and lambda1")
        if lambda_ratio is None and lambda1 is None:
            lambda_ratio = 0.01
        self.relative = lambda1 is None
        value = float(lambda_ratio if self.relative else lambda1)
        name = "lambda_ratio" if self.relative else "lambda1"
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name}: expected a finite value >= 0, got {value}")
        if learn_lambda1 and value == 0:
            raise ValueError(f"{name}: a learnable value must start > 0 (it is stored as a log)")
        lambda2 = _positive("lambda2", lambda2)
        dual_reg = float(dual_reg)
        if not (dual_reg >= 0 and math.isfinite(dual_reg)):
            raise ValueError(f"dual_reg: expected a finite value >= 0, got {dual_reg}")
        if solver not in _SOLVERS:
            raise ValueError(f"solver: expected one of {_SOLVERS}, got {solver!r}")
        self.solver_name = solver
        self.dual_reg = dual_reg
        self.learn_lambda1, self.learn_lambda2 = bool(learn_lambda1), bool(learn_lambda2)
        # the given value under its own name: lambda_ratio_value / log_lambda_ratio, or
        # lambda1_value / log_lambda1 for an absolute lambda1
        self._l1_name = f"log_{name}" if learn_lambda1 else f"{name}_value"
        if learn_lambda1:
            self.register_parameter(self._l1_name, nn.Parameter(torch.tensor(math.log(value), dtype=torch.float64)))
        else:
            self.register_buffer(self._l1_name, torch.tensor(value, dtype=torch.float64))
        self._lambda1_host = value     # host copy of the buffer: no device read per call
        if learn_lambda2:
            self.log_lambda2 = nn.Parameter(torch.tensor(math.log(lambda2), dtype=torch.float64))
        else:
            self.register_buffer("lambda2_value", torch.tensor(lambda2, dtype=torch.float64))
        self.solver = GroupSparseSVMDual(tol=tol, max_iter=max_iter, backward=backward,
                                         cpu_threads=cpu_threads)
        self.lambda_max_rtol = float(lambda_max_rtol)
        self._cvxpylayer = None

    # -------------------------------------------------------------- parameters
    @property
    def vanilla(self) -> bool:
        """True when ``lambda1 = 0`` for every episode (``lambda_ratio = 0`` or ``lambda1 = 0``,
        not learnable): the plain SVM-CS, for which no ``lambda_max`` is needed."""
        return not self.learn_lambda1 and self._lambda1_host == 0.0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # before the rename a ratio was stored as lambda1_value / log_lambda1 (state_dict is
        # load_state_dict's own copy: renaming a key here leaves the caller's dict alone)
        old = prefix + self._l1_name.replace("lambda_ratio", "lambda1")
        if self.relative and old in state_dict and prefix + self._l1_name not in state_dict:
            state_dict[prefix + self._l1_name] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not self.learn_lambda1:
            self._lambda1_host = float(getattr(self, self._l1_name))

    def _lambda1_param(self, like):
        """``lambda_ratio`` (relative head) or ``lambda1`` (absolute) as a tensor like ``like``."""
        v = getattr(self, self._l1_name)
        v = v.exp() if self.learn_lambda1 else v
        return v.to(dtype=like.dtype, device=like.device)

    def _lambda2(self, B, like):
        v = self.log_lambda2.exp() if self.learn_lambda2 else self.lambda2_value
        return v.to(dtype=like.dtype, device=like.device).expand(B)

    def extra_repr(self) -> str:
        kind = "lambda_ratio" if self.relative else "lambda1"
        return f"{kind}=..., dual_reg={self.dual_reg}, solver={self.solver_name!r}"

    # --------------------------------------------------------------------- fit
    def fit(self, support, support_labels, n_way) -> HeadFit:
        self.check_support(support, support_labels, n_way)
        B = support.shape[0]
        Y = one_hot(support_labels, n_way, support.dtype, check=False)   # checked by check_support
        l2 = self._lambda2(B, support)
        rho = as_episode_vector(self.dual_reg, B, support, "dual_reg")
        lmax, Lam0 = None, None
        if self.vanilla:   # lambda1 = 0: the same solve whether it was asked as a ratio or absolute
            l1 = torch.zeros(B, dtype=support.dtype, device=support.device)
        elif self.relative:
            lmax, Lam0 = compute_lambda_max(support, Y, l2, rho, rtol=self.lambda_max_rtol,
                                            cpu_threads=self.solver.cpu_threads, smooth=self.dual_reg > 0)
            # a ratio >= 1 gives W* = 0 whatever its value: capped at 1 so that a huge ratio
            # (1e308) does not overflow lambda1 to inf
            l1 = self._lambda1_param(support).clamp(max=1.0) * lmax
        else:
            l1 = self._lambda1_param(support).expand(B)
        if self.solver_name == "cvxpylayers":
            return self._fit_cvxpylayers(support, Y, l1, l2, rho, lmax)
        try:
            sol = self.solver.run(support, Y, l1, l2, rho, init=Lam0)
        except NonFiniteInputError as e:   # finite features whose lambda_max overflows, or not finite
            raise NonFiniteFeaturesError(f"head: {e} (features too large for the head's arithmetic, or not "
                                         f"finite: rescale the data)") from None
        W, dual, gap, rel, conv = sol.weights, sol.dual, sol.gap, sol.rel_gap, sol.converged
        if lmax is not None:
            # lambda1 >= lambda_max (a certified upper bound): W* = 0 exactly, and Lam0 is
            # a zero-gap dual certificate; rounding in the solver cannot leave 1e-17 rows
            # (selected on the device: no host sync)
            zero = (l1.detach() >= lmax)
            W = torch.where(zero[:, None, None], torch.zeros_like(W), W)
            dual = torch.where(zero[:, None, None], Lam0, dual)
            gap = torch.where(zero, torch.zeros_like(gap), gap)
            rel = torch.where(zero, torch.zeros_like(rel), rel)
            conv = conv | zero
        return HeadFit(weights=W, active=row_norms(W.detach()) > 0, dual=dual,
                       lambda1=l1.detach(), gap=gap, rel_gap=rel, n_iter=sol.n_iter,
                       lambda_max=lmax, converged=conv, tol=self.solver.tol)

    def _fit_cvxpylayers(self, X, Y, l1, l2, rho, lmax) -> HeadFit:
        from ..solvers.cvxpy_reference import CvxpyLayerDual
        if self._cvxpylayer is None:
            self._cvxpylayer = CvxpyLayerDual(self.dual_reg)
        Lam, W = self._cvxpylayer(X, Y, l1, l2)   # W has the exact zero rows of the primal-dual link
        return self._certified_fit(X, Y, W, Lam, l1, l2, rho, lmax)

    def _certified_fit(self, X, Y, W, Lam, l1, l2, rho, lmax) -> HeadFit:
        """The fit of an external solver's ``(W, Lam)`` with the duality gap
        ``P(W) - D(proj(Lam))`` (float64; projecting ``Lam`` onto the simplex rows keeps it an
        upper bound of ``P(W) - P*`` for a not yet feasible iterate) and ``rel_gap <= tol``."""
        with torch.no_grad():
            Xd, Yd, l1d, l2d, rhod = (v.detach().double() for v in (X, Y, l1, l2, rho))
            P = primal_objective(W.detach().double(), Xd, Yd, l1d, l2d, rhod)
            D = dual_objective(project_simplex(Lam.detach().double()), Xd, Yd, l1d, l2d, rhod)
            gap = (P - D).clamp(min=0.0)
            rel = gap / P.clamp(min=1e-12)
        return HeadFit(weights=W, active=row_norms(W.detach()) > 0, dual=Lam, lambda1=l1.detach(),
                       gap=gap.to(W.dtype), rel_gap=rel.to(W.dtype), n_iter=None, lambda_max=lmax,
                       converged=rel <= self.solver.tol, tol=self.solver.tol)


@contextlib.contextmanager
def _default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class SVMHead(GroupSparseSVMHead):
    r"""MetaOptNet's SVM-CS head: exactly :class:`GroupSparseSVMHead` at ``lambda_ratio = 0``.

    It takes the same ``lambda2`` (default 10), ``dual_reg`` (default 1) and solver options
    as the group-sparse head, so ``SVMHead(**opts)`` and
    ``GroupSparseSVMHead(lambda_ratio=0, **opts)`` give identical logits.  ``C_reg``
    (MetaOptNet's / learn2learn's cost; default 0.1) is another way to give ``lambda2 =
    1/C_reg``: pass at most one of the two.  ``solver="dual"`` (default) uses the batched
    custom solver, ``"qpth"`` learn2learn's ``SVClassifier`` (learn2learn and qpth: the
    ``[l2l]`` extra, else :class:`MissingExtraError`) with ``max_iters`` interior-point
    iterations (MetaOptNet trains with 15; its QP is the ``dual_reg = 1`` problem, so
    ``qpth`` needs ``dual_reg = 1``), ``"cvxpylayers"`` the cvxpy reference.
    With ``"qpth"`` (and ``"cvxpylayers"``) the fit's ``gap`` is ``P(W) - D(proj(Lam))``
    at the returned pair and ``converged`` is ``rel_gap <= tol``; 15 interior-point
    iterations are typically far below the default ``tol = 1e-5``, fewer may not be.
    """

    def __init__(self, C_reg: Optional[float] = None, solver: str = "dual", *, lambda2: Optional[float] = None,
                 dual_reg: float = DEFAULT_DUAL_REG, max_iters: int = 15, learn_lambda2: bool = False,
                 tol: float = 1e-5, max_iter: int = 2000, backward: str = "implicit", init_scale: float = 1.0,
                 learn_scale: bool = True, cpu_threads: Optional[int] = 1):
        if C_reg is not None and lambda2 is not None:
            raise ValueError("SVMHead: give at most one of C_reg and lambda2 (lambda2 = 1 / C_reg)")
        if C_reg is not None:
            lambda2 = 1.0 / _positive("C_reg", C_reg)
        elif lambda2 is None:
            lambda2 = DEFAULT_LAMBDA2
        lambda2 = _positive("lambda2", lambda2)
        if solver not in _SOLVERS + ("qpth",):
            raise ValueError(f"solver: expected one of {_SOLVERS + ('qpth',)}, got {solver!r}")
        if solver == "qpth" and float(dual_reg) != 1.0:
            raise ValueError(f"solver 'qpth' solves MetaOptNet's QP, whose dual_reg is 1; got dual_reg={dual_reg} "
                             f"(use solver 'dual')")
        if solver == "qpth":
            _require_qpth()
        super().__init__(lambda_ratio=0.0, lambda2=lambda2, dual_reg=dual_reg,
                         solver="dual" if solver == "qpth" else solver, learn_lambda2=learn_lambda2,
                         tol=tol, max_iter=max_iter, backward=backward, init_scale=init_scale,
                         learn_scale=learn_scale, cpu_threads=cpu_threads)
        self.solver_name = solver
        self.C_reg = 1.0 / lambda2
        self.max_iters = int(max_iters)

    def fit(self, support, support_labels, n_way) -> HeadFit:
        if self.solver_name != "qpth":
            return super().fit(support, support_labels, n_way)
        self.check_support(support, support_labels, n_way)
        _require_qpth()
        from learn2learn.nn import SVClassifier
        B = support.shape[0]
        C = 1.0 / self._lambda2(B, support)[0] if self.learn_lambda2 else self.C_reg
        duals = []
        with _default_dtype(support.dtype):
            for b in range(B):   # learn2learn's SVClassifier handles one episode
                clf = SVClassifier(C_reg=C, max_iters=self.max_iters)
                clf.fit_(support[b], support_labels[b], ways=n_way)
                duals.append(clf.qp_solution)          # alpha = C (Y - Lam), (n, k)
        alpha = torch.stack(duals).to(support.dtype)
        W = support.transpose(1, 2) @ alpha
        Y = one_hot(support_labels, n_way, support.dtype, check=False)   # checked by check_support
        Cv = torch.as_tensor(C, dtype=support.dtype, device=support.device)
        zero = torch.zeros(B, dtype=support.dtype, device=support.device)
        rho = as_episode_vector(self.dual_reg, B, support, "dual_reg")
        return self._certified_fit(support, Y, W, Y - alpha / Cv, zero, self._lambda2(B, support), rho, None)

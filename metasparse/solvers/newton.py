r"""Working-set semismooth Newton solver of the group-sparse SVM dual.

The dual (notation of :mod:`metasparse.solvers.objectives`, ``c = rho / lambda2``)

    max_Lam  D(Lam) = <Lam, Delta> - 1/(2 lambda2) sum_j max(0, ||V_j|| - lambda1)^2
                      - (c/2) ||Lam - Y||^2,      V = X^T (Y - Lam),  rows of Lam in the simplex

has ``n*k`` unknowns per episode (at most 375 for 5-way 15-shot) but a badly
conditioned Hessian on real features (ResNet-12 features are non-negative with a
shared mean direction: the top eigenvalue of ``X X^T`` is ~60x the next and
``L / mu = 1 + sigma_max(X)^2 / rho`` reaches 1e5-1e6), where first-order methods
need thousands of iterations.  A Newton method does not care about that
conditioning, and its systems are small and dense.  Three named steps:

**Working set of features.**  At ``lambda_ratio = 0.01`` 95-98% of the rows of W* are
zero.  The iterations run on the features ``F`` (a few hundred of the d), which gives
the *restricted* dual ``D_F`` (the sum over j in F only).  A full pass
``V = X^T (Y - Lam)`` over all d features (:func:`feature_violations`) finds the
features outside F with ``||V_j|| > lambda1``; they are added (at most doubling F per
check).  When no feature outside F violates, the rows outside F of the primal-dual
link ``W(Lam)`` are zero, so the restricted duality gap *is* the gap of the full
problem: convergence is certified on the full problem.

**Semismooth Newton step on the face** (:func:`newton_direction`).  With ``g = grad D``
and the generalised Hessian ``M = -d^2 D`` on the active rows ``A = {j : ||V_j|| > lambda1}``

    M = (1/lambda2) [ (X_A diag(a) X_A^T + rho I) (x) I_k + U U^T ],
    a_j = 1 - lambda1/||V_j||,  U = [x_j (x) sqrt(c_j) V_j]_j,  c_j = lambda1/||V_j||^3,

the face of the simplices is predicted by a projected-gradient point
``Lam+ = proj(Lam + eta g)`` (``eta = 1/L``, L the Lipschitz constant of the restricted
gradient), and the quadratic model of D is maximised on the affine hull of that face:
``Lam_N = Lam+ + Q z`` with ``Q`` a basis of the face's tangent space
``T = {D : D_il = 0 off the face, sum_l D_il = 0}`` and

    (Q^T M Q) z = Q^T [ g - M (Lam+ - Lam) ]          (dense Cholesky, n(k-1) unknowns).

(This is the semismooth Newton step on the natural residual
``Lam - proj(Lam + eta g)``.)  ``Q`` keeps, per sample, the classes of the face other
than a reference class ``r_i`` (the largest entry): ``(Q z)_il = z_il`` for
``l != r_i`` and ``-sum_l z_il`` at ``r_i``.

**Projected search** (:func:`projected_search`).  The full steps ``proj(x)`` to the
Newton point ``x`` of each face tried and ``Lam+`` are evaluated together, and each
episode takes the one with the largest dual value; only where ``Lam+`` wins are the
shortened steps ``proj(Lam + t (x - Lam))``, ``t = 1/2, 1/4, ...``, tried as well.  Since
``eta <= 1/L`` makes ``Lam+`` an ascent step,
every iteration does at least as well as projected gradient (global convergence);
near the solution the face and the active rows settle and the full Newton step is
taken (fast local convergence).

All restricted quantities are float64 (the restricted features are an exact copy of
float32 inputs), so the certified gaps reach 1e-10 and below; the full pass runs in
the input dtype with a relative margin of ``1e-3`` on ``lambda1`` (features within the
margin are added to F, so float32 rounding cannot hide a violation).

**Host syncs.**  On a GPU the host must not wait for the device inside an iteration: the
shapes of an iteration are known on the host in advance (the working-set size; the
number of active rows, read with the check's one transfer), every face iteration and
shortened step is computed for all episodes and selected with ``torch.where`` (ties go to
the first candidate, so the choice is the one a data-dependent loop would make), and a
face system whose float32 Cholesky fails (numerically singular) falls back to the
projected-gradient point for that episode in that iteration, which the
Levenberg-Marquardt damping then corrects.  A check makes one device-to-host transfer,
plus one more when the working set grows.  The step size ``1/L`` comes from one
eigenvalue solve per call, a Lipschitz bound of all d features that holds for every
working set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional, Tuple

import torch

from . import linalg
from .face import DualHessian, Face
from .objectives import bst_factor, column_norms, fenchel_young_gap
from .simplex import project_simplex

__all__ = ["RestrictedProblem", "Evaluation", "evaluate", "face_newton_points", "newton_direction",
           "projected_search", "adapt_damping", "feature_violations", "initial_working_set", "grow_working_set",
           "restricted_lipschitz", "NewtonState", "WorkingSetNewton", "GramNewton"]


# ------------------------------------------------------------------ problem
@dataclass
class RestrictedProblem:
    """The dual restricted to a working set of features (float64).

    ``idx`` (B, m) feature indices into the full d; ``XF`` (B, n, m) their columns;
    ``Y`` (B, n, k); ``l1, l2, rho`` (B,); ``eta`` (B,) projected-gradient step ``1/L`` (``L``
    a Lipschitz bound valid for any working set: :func:`restricted_lipschitz` of all features);
    ``smooth``: whether every ``rho > 0`` (known on the host).
    """

    idx: torch.Tensor
    XF: torch.Tensor
    Y: torch.Tensor
    l1: torch.Tensor
    l2: torch.Tensor
    rho: torch.Tensor
    eta: torch.Tensor
    smooth: Optional[bool] = None

    @property
    def c(self) -> torch.Tensor:
        return self.rho / self.l2


@dataclass
class Evaluation:
    """Restricted quantities at one dual point: ``Vt = (Y - Lam)^T X_F`` (B, k, m) and its
    column norms ``nrm`` (B, m), scores ``S = X_F W`` (B, n, k), ascent direction
    ``g = grad D`` (B, n, k), dual value ``D``, primal ``P`` and gap ``P - D`` (B,)."""

    Vt: torch.Tensor
    nrm: torch.Tensor
    S: torch.Tensor
    g: torch.Tensor
    D: torch.Tensor
    P: torch.Tensor
    gap: torch.Tensor


def _dual_value(Lam, Y, nrm, l1, l2, c) -> torch.Tensor:
    """``D(Lam)`` from the row norms of V (B,)."""
    excess = torch.clamp(nrm - l1.unsqueeze(-1), min=0.0)
    G = Lam - Y
    # <Lam, Delta> = sum(Lam) - <Lam, Y> = n - <Lam, Y> for rows in the simplex: kept literal
    return ((Lam * (1.0 - Y)).sum((-1, -2)) - (0.5 / l2) * (excess * excess).sum(-1)
            - 0.5 * c * (G * G).sum((-1, -2)))


def evaluate(prob: RestrictedProblem, Lam: torch.Tensor) -> Evaluation:
    r"""Everything at ``Lam``: ``W = BST(V, lambda1)/lambda2`` on F, ``S = X_F W``,
    ``g = Delta + S + c (Y - Lam)``, D, and the gap in Fenchel-Young form."""
    Y, l1, l2, c = prob.Y, prob.l1, prob.l2, prob.c
    G = Y - Lam
    Vt = torch.bmm(G.transpose(1, 2), prob.XF)
    nrm = column_norms(Vt)
    Wt = Vt * (bst_factor(nrm, l1) / l2.view(-1, 1)).unsqueeze(1)
    S = torch.bmm(prob.XF, Wt.transpose(1, 2))
    g = (1.0 - Y) + S + c.view(-1, 1, 1) * G
    D = _dual_value(Lam, Y, nrm, l1, l2, c)
    gap = fenchel_young_gap(S, Y, Lam, c, smooth=prob.smooth)
    return Evaluation(Vt=Vt, nrm=nrm, S=S, g=g, D=D, P=D + gap, gap=gap)


def restricted_lipschitz(XF: torch.Tensor, l2: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    r"""``L = (sigma_max(X_F)^2 + rho) / lambda2``, an upper bound of the Lipschitz constant of
    the gradient of the dual restricted to the columns ``X_F`` (B, n, m) -- or to any subset
    of them, so the bound of the full features serves every working set and is computed
    once per solve.

    ``sigma_max^2`` is the top eigenvalue of the n x n Gram matrix ``K = X_F X_F^T`` computed
    in X_F's dtype; ``gamma_m trace(K)``, ``gamma_m = m eps / (1 - m eps)``, bounds its
    rounding error (``|fl(K) - K| <= gamma_m |X_F| |X_F|^T`` entrywise, whose norm is at
    most ``trace(K)``), and a relative 1e-6 the eigenvalue's, so rounding never gives a
    step above ``1/L`` (float32 features at d = 16000: ~0.2% smaller steps)."""
    K = torch.bmm(XF, XF.transpose(1, 2))
    m, eps = XF.shape[-1], torch.finfo(XF.dtype).eps
    gamma = m * eps / max(1.0 - m * eps, 1e-3)
    sig2 = linalg.top_eigenvalue(K).clamp(min=0.0) + gamma * K.diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.clamp((sig2 * (1.0 + 1e-6) + rho) / l2, min=1e-12 / l2)


# ------------------------------------------------------------ working set
def initial_working_set(norms: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The ``max(512, 2 n k)`` features (at most d) with the largest ``||V_j||`` (B, m)."""
    d = norms.shape[-1]
    m = min(d, max(512, 2 * n * k))
    return norms.topk(m, dim=-1).indices


def feature_violations(X: torch.Tensor, Y: torch.Tensor, Lam: torch.Tensor, prob: RestrictedProblem,
                       margin: float = 1e-3) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Full pass over the d features: ``(norms (B, d), violators (B, d) bool)``.

    A violator is a feature outside the working set with
    ``||V_j|| > (1 - margin) lambda1`` (``V = X^T (Y - Lam)`` in X's dtype).
    """
    Vt = torch.bmm((Y - Lam).to(X.dtype).transpose(1, 2), X)
    norms = column_norms(Vt).to(Lam.dtype)
    outside = torch.ones_like(norms, dtype=torch.bool).scatter_(1, prob.idx, False)
    return norms, outside & (norms > (1.0 - margin) * prob.l1.view(-1, 1))


def grow_working_set(prob: RestrictedProblem, X: torch.Tensor, norms: torch.Tensor,
                     violators: torch.Tensor, count_max: Optional[int] = None
                     ) -> Tuple[RestrictedProblem, torch.Tensor, int]:
    """Add violators (the largest ``||V_j||`` first, at most ``max(m, 256)`` per episode)
    to the working set, with a slack of ``max(64, count / 4)`` more features (the next
    largest norms: those about to cross the threshold as the point moves, each of which
    would otherwise cost a growth of its own: a host sync, an eigenvalue solve and a
    re-evaluation).  ``count_max``: the largest number of violators of an episode, if
    the caller has it on the host (else read here).  Returns the new problem, a (B,) bool
    (all of the episode's violators are now inside) and the number of features added."""
    B, n, d = X.shape
    m = prob.idx.shape[1]
    count = violators.sum(-1)
    count_max = int(count.max()) if count_max is None else int(count_max)
    add = min(d - m, count_max + max(64, count_max // 4), max(m, 256))
    # the largest norms outside F: the violators first (largest first), then, for
    # episodes with fewer violators, the next features (harmless: a larger F is
    # still a restriction of the full problem)
    inside = torch.zeros_like(violators).scatter_(1, prob.idx, True)
    outside = torch.where(inside, torch.full_like(norms, -math.inf), norms)
    idx = torch.cat([prob.idx, outside.topk(add, dim=-1).indices], 1)
    XF = X.gather(2, idx[:, None, :].expand(B, n, idx.shape[1])).to(prob.XF.dtype)
    covered = count <= add
    return replace(prob, idx=idx, XF=XF), covered, add      # eta: a bound for every working set


# ----------------------------------------------------------------- Newton
def face_newton_points(M: DualHessian, g: torch.Tensor, Lam: torch.Tensor, Lp: torch.Tensor,
                       damping: torch.Tensor, face_iters: int = 2) -> torch.Tensor:
    r"""Maximisers (face_iters + 1, B, n, k) of the quadratic model
    ``q(x) = g^T (x - Lam) - 1/2 (x - Lam)^T M (x - Lam)`` of D on faces of the simplices,
    one per face tried, starting from the face of the projected-gradient point ``Lp``.

    Each is a dense solve in the basis of :class:`~metasparse.solvers.face.Face`;
    ``face_iters`` primal-dual active-set updates then drop the entries that came out
    negative and add the zero entries whose model gradient exceeds the row's multiplier
    ``mu_i`` (the value of ``grad q`` on the face), and solve again (same Hessian, new
    mask).  An episode whose face did not change keeps its point (bit for bit); every
    episode is solved every time, so that no host sync decides which.  The reference
    class of each sample (the largest entry of ``Lp``) stays on the face.

    ``damping`` (B,) >= 0 adds ``damping * mean(diag(Q^T M Q)) ||z||^2 / 2`` to the model
    (Levenberg-Marquardt): it pulls the Newton point towards ``Lp`` when the model has
    proved too optimistic (features crossing the threshold ``||V_j|| = lambda1`` along
    the step add curvature the generalised Hessian does not see).  A face system whose
    Cholesky factorisation fails gives the anchor point (a projected-gradient point).
    """
    B = Lam.shape[0]
    support = Lp > 0
    face = Face.of(Lp, support)
    H = M.reduced(face)
    diag = H.diagonal(dim1=-2, dim2=-1)
    diag.add_((damping.to(H.dtype) * diag.mean(-1))[:, None])
    ref = face.ref                                      # (B, n, 1)
    points = []
    x, changed = None, None
    for it in range(face_iters + 1):
        # anchor on the face: mass of entries off the face moved to the reference class
        anchor = torch.where(support, Lp, 0.0)
        anchor = anchor.scatter_add(2, ref, (Lp - anchor).sum(-1, keepdim=True))
        rhs = g - M.apply(anchor - Lam)
        u = face.with_support(support).solve(H, rhs, on_failure="zero")
        x_new = anchor + u
        x = x_new if x is None else torch.where(changed[:, None, None], x_new, x)
        points.append(x)
        if it == face_iters:
            break
        r = g - M.apply(x - Lam)                        # model gradient at x
        new_support = torch.where(support, x > 0, r > r.gather(2, ref)).scatter(2, ref, True)
        changed = (new_support != support).reshape(B, -1).any(-1)
        support = new_support
    return torch.stack(points)


def newton_direction(prob: RestrictedProblem, Lam: torch.Tensor, ev: Evaluation,
                     damping: torch.Tensor, m_active: Optional[int] = None, face_iters: int = 2
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""``(Lam_N, Lam+)`` on the restricted problem: the Newton points of
    :func:`face_newton_points` with the generalised Hessian of the active rows, and the
    projected-gradient point ``Lam+ = proj(Lam + eta g)``.  ``m_active``: an upper bound on
    the number of active rows of an episode (see :meth:`DualHessian.at`)."""
    Lp = project_simplex(torch.addcmul(Lam, prob.eta.view(-1, 1, 1), ev.g))
    M = DualHessian.at(prob.XF, ev.Vt, ev.nrm, prob.l1, prob.l2, prob.rho, m_active=m_active)
    return face_newton_points(M, ev.g, Lam, Lp, damping, face_iters), Lp


def _candidate_values(prob: RestrictedProblem, cand: torch.Tensor) -> torch.Tensor:
    """``D`` (C, B) at the dual points ``cand`` (C, B, n, k), in one batched product."""
    C, B, n, k = cand.shape
    G = (prob.Y - cand).permute(1, 0, 3, 2).reshape(B, C * k, n)
    Vt = torch.bmm(G, prob.XF).reshape(B, C, k, -1)                              # (B, C, k, m)
    nrm = column_norms(Vt).transpose(0, 1)          # (C, B, m); norms before the transpose (contiguous)
    return _dual_value(cand, prob.Y, nrm, prob.l1, prob.l2, prob.c)


def projected_search(values: Callable[[torch.Tensor], torch.Tensor], Lam: torch.Tensor, Lam_N: torch.Tensor,
                     Lp: torch.Tensor, steps=(0.5, 0.25, 0.125, 0.0625)) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Choose the next point among ``Lam+`` and ``proj(Lam + t (x - Lam))`` for the Newton
    points ``x`` of ``Lam_N`` (P, B, n, k); ``values(cand)`` is D (C, B) at candidates (C,
    B, n, k).  Returns (new Lam, accepted t (B,), 0 = ``Lam+``).

    The full steps ``proj(x)`` and ``Lam+`` are evaluated, and an episode takes the best of
    them (the largest D; ties to the first face).  An episode for which ``Lam+`` wins
    takes instead the best of the shortened steps ``t`` in ``steps`` and ``Lam+`` (all
    candidates are evaluated in one product, so no host sync decides which).  Either way
    the new point is at least as good as projected gradient.
    """
    Pn = Lam_N.shape[0]
    S = len(steps)
    t = torch.tensor(steps, dtype=Lam.dtype, device=Lam.device)[None, :, None, None, None]
    moves = project_simplex(Lam + t * (Lam_N[:, None] - Lam)).reshape(Pn * S, *Lam.shape)
    cand = torch.cat([project_simplex(Lam_N), Lp[None], moves], 0)              # (P + 1 + P S, B, n, k)
    D = values(cand)
    best = D[:Pn + 1].argmax(0)                        # full Newton steps and Lam+
    back = best == Pn
    best2 = torch.cat([D[Pn + 1:], D[Pn:Pn + 1]], 0).argmax(0)     # shortened steps, then Lam+
    best2 = torch.where(best2 == Pn * S, torch.full_like(best2, Pn), best2 + Pn + 1)
    pick = torch.where(back, best2, best)
    new = cand.gather(0, pick[None, :, None, None].expand(1, *Lam.shape))[0]
    acc_t = torch.cat([torch.ones(Pn, dtype=Lam.dtype, device=Lam.device), Lam.new_zeros(1),
                       t.flatten().repeat(Pn)])
    return new, acc_t[pick]


def adapt_damping(damping: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Levenberg-Marquardt rule on the accepted step: a full Newton step divides the
    damping by 10 (to 0 below 1e-6), a shortened one multiplies it by 3 (at least
    1e-4), the projected-gradient fallback by 10 (at least 1e-3)."""
    full = damping / 10.0
    full = torch.where(full < 1e-6, torch.zeros_like(full), full)
    short = torch.clamp(damping * 3.0, min=1e-4)
    fallback = torch.clamp(damping * 10.0, min=1e-3)
    return torch.where(t >= 1.0, full, torch.where(t > 0, short, fallback))


# ----------------------------------------------------------------- driver
@dataclass
class NewtonState:
    """``Lam`` (B, n, k) float64 dual point and the working-set problem it lives in."""

    Lam: torch.Tensor
    prob: RestrictedProblem
    damping: Optional[torch.Tensor] = None   # (B,) Levenberg-Marquardt factor of newton_direction
    fresh: bool = False     # the working set was just built at Lam: no full pass needed
    ev: Optional[Evaluation] = None   # evaluation at Lam on prob (set by check, used by update)
    m_active: Optional[int] = None    # bound on the active rows at Lam (host int, set by check)


class WorkingSetNewton:
    r"""The three steps above as an engine solver (:func:`metasparse.solvers.engine.run`).

    ``X`` (B, n, d) the full features (any float dtype), ``Y`` one-hot, ``l1, l2, rho``
    (B,); the restricted problem and the dual state are float64 (or X's dtype if wider).
    ``check`` evaluates the restricted gap and runs the full pass; an episode whose
    violators could not all be added in this check reports ``gap = inf``.  ``smooth``:
    whether every ``rho > 0``, if the caller knows it on the host.
    """

    def __init__(self, X, Y, l1, l2, rho, smooth: Optional[bool] = None):
        self.X = X
        self.dtype = torch.promote_types(X.dtype, torch.float64)
        dt = self.dtype
        self.Y, self.l1, self.l2, self.rho = Y.to(dt), l1.to(dt), l2.to(dt), rho.to(dt)
        self.smooth = smooth

    def init_state(self, Lam0: torch.Tensor) -> NewtonState:
        """Working set: the features with the largest ``||V_j(Lam0)||`` (:func:`initial_working_set`)."""
        B, n, d = self.X.shape
        Lam0 = Lam0.to(self.dtype)
        Vt = (self.Y - Lam0).to(self.X.dtype).transpose(1, 2) @ self.X
        idx = initial_working_set(column_norms(Vt), n, self.Y.shape[-1])
        XF = self.X.gather(2, idx[:, None, :].expand(B, n, idx.shape[1])).to(self.dtype)
        # one step size for every working set: the Lipschitz bound of all d features
        eta = 1.0 / restricted_lipschitz(self.X, self.l2.to(self.X.dtype), self.rho.to(self.X.dtype)).to(self.dtype)
        prob = RestrictedProblem(idx=idx, XF=XF, Y=self.Y, l1=self.l1, l2=self.l2, rho=self.rho,
                                 eta=eta, smooth=self.smooth)
        return NewtonState(Lam=Lam0, prob=prob, fresh=True)

    def update(self, state: NewtonState) -> NewtonState:
        ev = state.ev if state.ev is not None else evaluate(state.prob, state.Lam)
        damping = state.damping if state.damping is not None else torch.zeros_like(ev.D)
        Lam_N, Lp = newton_direction(state.prob, state.Lam, ev, damping, m_active=state.m_active)
        Lam, t = projected_search(lambda cand: _candidate_values(state.prob, cand), state.Lam, Lam_N, Lp)
        return NewtonState(Lam=Lam, prob=state.prob, damping=adapt_damping(damping, t))

    def finalize(self, state: NewtonState, P, gap):
        """One projected-gradient step from the returned point, kept for the episodes
        where it does not raise the gap; returns (state, P, gap).

        At the optimum it is a fixed point, except that entries the Newton arithmetic
        left at ~1e-17 instead of 0 come out exactly 0.
        """
        ev = state.ev if state.ev is not None else evaluate(state.prob, state.Lam)
        Lam = project_simplex(state.Lam + state.prob.eta[:, None, None] * ev.g)
        ev = evaluate(state.prob, Lam)
        keep = ev.gap <= gap
        Lam = torch.where(keep[:, None, None], Lam, state.Lam)
        return NewtonState(Lam=Lam, prob=state.prob), torch.where(keep, ev.P, P), torch.where(keep, ev.gap, gap)

    def _active_rows(self, prob: RestrictedProblem, ev: Evaluation) -> torch.Tensor:
        """Largest number of active rows (``||V_j|| > lambda1``) of an episode, on the device."""
        return (ev.nrm > prob.l1.view(-1, 1)).sum(-1).max()

    previews_stopping = True     # check() reads the run loop's count with its own transfer

    def check(self, state: NewtonState, active=None, preview=None):
        """Restricted gap after the full pass (growing the working set where features
        outside it violate), with one device-to-host transfer: the number of violators to
        add, the active rows of the next Hessian and, from ``preview`` (the run loop's
        stopping rule), the episodes still running; a second one only when the working
        set grows (the gap then changes)."""
        prob = state.prob
        if state.fresh:      # built from this point's norms: certify from the next check on
            ev = evaluate(prob, state.Lam)
            gap = torch.full_like(ev.gap, math.inf)
            reads = [self._active_rows(prob, ev)] + ([] if preview is None else [preview(ev.P, gap).sum()])
            vals = torch.stack(reads).tolist()
            state = replace(state, fresh=False, ev=ev, m_active=int(vals[0]))
            return (state, ev.P, gap) + tuple(int(v) for v in vals[1:])
        norms, viol = feature_violations(self.X, self.Y, state.Lam, prob)
        ev = evaluate(prob, state.Lam)
        reads = [viol.sum(-1).max(), self._active_rows(prob, ev)]
        if preview is not None:      # what the loop will decide if no feature is added
            reads.append(preview(ev.P, ev.gap).sum())
        vals = [int(v) for v in torch.stack(reads).tolist()]
        count_max, m_active = vals[0], vals[1]
        if count_max == 0:
            return (replace(state, ev=ev, m_active=m_active), ev.P, ev.gap) + tuple(vals[2:])
        prob, covered, added = grow_working_set(prob, self.X, norms, viol, count_max)
        ev = evaluate(prob, state.Lam)
        gap = torch.where(covered, ev.gap, math.inf)
        if preview is None:    # the rows active before, plus at most the features added
            return replace(state, prob=prob, ev=ev, m_active=m_active + added), ev.P, gap
        # the loop's count changed with the gap: read it with the exact active rows
        m_active, n_active = (int(v) for v in
                              torch.stack([self._active_rows(prob, ev), preview(ev.P, gap).sum()]).tolist())
        return replace(state, prob=prob, ev=ev, m_active=m_active), ev.P, gap, n_active


# ------------------------------------------------------------- lambda1 = 0
@dataclass
class GramState:
    """``Lam`` (B, n, k) dual point of the lambda1 = 0 problem, the Levenberg-Marquardt
    factor and the evaluation at ``Lam`` (set by check, used by update)."""

    Lam: torch.Tensor
    damping: Optional[torch.Tensor] = None
    ev: Optional[Evaluation] = None


class GramNewton:
    r"""The same Newton method for lambda1 = 0 (MetaOptNet's SVM-CS), in Gram space.

    The dual is then the quadratic program (``G = Y - Lam``, ``K = X X^T``, ``c = rho/lambda2``)

        D(Lam) = <Lam, Delta> - 1/(2 lambda2) <G, K G> - (c/2) ||G||^2,   rows of Lam in the simplex,

    with the constant Hessian ``M = (K + rho I) (x) I_k / lambda2``
    (:meth:`DualHessian.gram`): on the right face the Newton point is the exact
    maximiser, so the method is an active-set method whose iteration count does not
    depend on the conditioning of ``K`` (first-order methods need ~sqrt(L/mu) =
    ``sqrt(1 + sigma_max(X)^2 / rho)`` iterations, hundreds to thousands on trained
    ResNet-12 features).  ``K`` (B, n, n), ``Y`` one-hot, ``l2, rho`` (B,), all float64;
    ``smooth``: every ``rho > 0`` (the host knows it).  No working set, so ``check`` makes
    no host transfer (the run loop's is the only one).
    """

    def __init__(self, K, Y, l2, rho, smooth: Optional[bool] = None):
        self.K, self.Y, self.l2, self.rho, self.smooth = K, Y, l2, rho, smooth
        self.c = rho / l2
        self.inv_l2 = (1.0 / l2)[:, None, None]
        self.Delta = 1.0 - Y
        self.M = DualHessian.gram(K, l2, rho, solve_dtype=K.dtype)
        self.eta = (1.0 / torch.clamp((linalg.top_eigenvalue(K).clamp(min=0.0) * (1.0 + 1e-6) + rho) / l2,
                                      min=1e-12 / l2))[:, None, None]

    def evaluate(self, Lam: torch.Tensor) -> Evaluation:
        """S = X W = K G / lambda2, g = grad D, D, P and the Fenchel-Young gap at ``Lam``."""
        G = self.Y - Lam
        S = torch.bmm(self.K, G) * self.inv_l2
        c3 = self.c[:, None, None]
        g = self.Delta + S + c3 * G
        D = (Lam * self.Delta).sum((-1, -2)) - 0.5 * (G * S).sum((-1, -2)) - 0.5 * self.c * (G * G).sum((-1, -2))
        gap = fenchel_young_gap(S, self.Y, Lam, self.c, smooth=self.smooth)
        return Evaluation(Vt=None, nrm=None, S=S, g=g, D=D, P=D + gap, gap=gap)

    def values(self, cand: torch.Tensor) -> torch.Tensor:
        """``D`` (C, B) at candidates (C, B, n, k), in one batched product."""
        C, B, n, k = cand.shape
        G = (self.Y - cand).permute(1, 2, 0, 3).reshape(B, n, C * k)             # (B, n, C k)
        KG = torch.bmm(self.K, G)
        quad = (G * KG).reshape(B, n, C, k).sum((1, 3)).T                          # (C, B)
        sq = (G * G).reshape(B, n, C, k).sum((1, 3)).T
        return (cand * self.Delta).sum((-1, -2)) - 0.5 * quad / self.l2 - 0.5 * self.c * sq

    def init_state(self, Lam0: torch.Tensor) -> GramState:
        return GramState(Lam=Lam0)

    def update(self, state: GramState) -> GramState:
        ev = state.ev if state.ev is not None else self.evaluate(state.Lam)
        damping = state.damping if state.damping is not None else torch.zeros_like(ev.D)
        Lp = project_simplex(state.Lam + self.eta * ev.g)
        Lam_N = face_newton_points(self.M, ev.g, state.Lam, Lp, damping)
        Lam, t = projected_search(self.values, state.Lam, Lam_N, Lp)
        return GramState(Lam=Lam, damping=adapt_damping(damping, t))

    def check(self, state: GramState, active=None):
        ev = self.evaluate(state.Lam)
        return replace(state, ev=ev), ev.P, ev.gap

    def finalize(self, state: GramState, P, gap):
        """One projected-gradient step from the returned point, kept where it does not raise
        the gap (it sets entries a Newton step left at ~1e-17 to exactly 0)."""
        ev = state.ev if state.ev is not None else self.evaluate(state.Lam)
        Lam = project_simplex(state.Lam + self.eta * ev.g)
        ev = self.evaluate(Lam)
        keep = ev.gap <= gap
        Lam = torch.where(keep[:, None, None], Lam, state.Lam)
        return GramState(Lam=Lam), torch.where(keep, ev.P, P), torch.where(keep, ev.gap, gap)

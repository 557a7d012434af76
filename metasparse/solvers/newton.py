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
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch

from . import linalg
from .objectives import bst_factor, bst_jacobian, fenchel_young_gap
from .simplex import project_simplex

__all__ = ["RestrictedProblem", "Evaluation", "DualHessian", "evaluate", "newton_direction", "projected_search",
           "feature_violations", "initial_working_set", "grow_working_set", "restricted_lipschitz",
           "NewtonState", "WorkingSetNewton"]


# ------------------------------------------------------------------ problem
@dataclass
class RestrictedProblem:
    """The dual restricted to a working set of features (float64).

    ``idx`` (B, m) feature indices into the full d; ``XF`` (B, n, m) their columns;
    ``Y`` (B, n, k); ``l1, l2, rho`` (B,); ``eta`` (B,) projected-gradient step ``1/L``.
    """

    idx: torch.Tensor
    XF: torch.Tensor
    Y: torch.Tensor
    l1: torch.Tensor
    l2: torch.Tensor
    rho: torch.Tensor
    eta: torch.Tensor

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
    excess = torch.clamp(nrm - l1[..., None], min=0.0)
    return ((Lam * (1.0 - Y)).sum((-1, -2)) - (0.5 / l2) * (excess * excess).sum(-1)
            - 0.5 * c * ((Lam - Y) ** 2).sum((-1, -2)))


def _column_norms(Vt: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((Vt * Vt).sum(-2))


def evaluate(prob: RestrictedProblem, Lam: torch.Tensor) -> Evaluation:
    r"""Everything at ``Lam``: ``W = BST(V, lambda1)/lambda2`` on F, ``S = X_F W``,
    ``g = Delta + S + c (Y - Lam)``, D, and the gap in Fenchel-Young form."""
    Y, l1, l2, c = prob.Y, prob.l1, prob.l2, prob.c
    Vt = (Y - Lam).transpose(1, 2) @ prob.XF
    nrm = _column_norms(Vt)
    Wt = Vt * (bst_factor(nrm, l1) / l2[:, None]).unsqueeze(1)
    S = prob.XF @ Wt.transpose(1, 2)
    g = (1.0 - Y) + S + c[:, None, None] * (Y - Lam)
    D = _dual_value(Lam, Y, nrm, l1, l2, c)
    gap = fenchel_young_gap(S, Y, Lam, c)
    return Evaluation(Vt=Vt, nrm=nrm, S=S, g=g, D=D, P=D + gap, gap=gap)


def restricted_lipschitz(XF: torch.Tensor, l2: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    r"""``L = (sigma_max(X_F)^2 + rho) / lambda2`` (eigvalsh of the n x n Gram of F),
    inflated by 1e-6 relative so rounding never gives a step above ``1/L``."""
    sig2 = torch.linalg.eigvalsh(XF @ XF.transpose(1, 2))[..., -1].clamp(min=0.0)
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
    Vt = (Y - Lam).to(X.dtype).transpose(1, 2) @ X
    norms = _column_norms(Vt).to(Lam.dtype)
    inside = torch.zeros_like(norms, dtype=torch.bool).scatter_(1, prob.idx, True)
    return norms, (~inside) & (norms > (1.0 - margin) * prob.l1[:, None])


def grow_working_set(prob: RestrictedProblem, X: torch.Tensor, norms: torch.Tensor,
                     violators: torch.Tensor) -> Tuple[RestrictedProblem, torch.Tensor]:
    """Add violators (the largest ``||V_j||`` first, at most ``max(m, 256)`` per episode)
    to the working set.  Returns the new problem and a (B,) bool: all of the
    episode's violators are now inside."""
    B, n, d = X.shape
    m = prob.idx.shape[1]
    count = violators.sum(-1)
    add = min(d - m, max(int(count.max()), 1), max(m, 256))
    # the largest norms outside F: the violators first (largest first), then, for
    # episodes with fewer violators, the next features (harmless: a larger F is
    # still a restriction of the full problem)
    inside = torch.zeros_like(violators).scatter_(1, prob.idx, True)
    outside = torch.where(inside, torch.full_like(norms, -math.inf), norms)
    idx = torch.cat([prob.idx, outside.topk(add, dim=-1).indices], 1)
    XF = X.gather(2, idx[:, None, :].expand(B, n, idx.shape[1])).to(prob.XF.dtype)
    eta = 1.0 / restricted_lipschitz(XF, prob.l2, prob.rho)
    covered = count <= add
    return RestrictedProblem(idx=idx, XF=XF, Y=prob.Y, l1=prob.l1, l2=prob.l2, rho=prob.rho, eta=eta), covered


# ----------------------------------------------------------------- Newton
def _face_basis(Lp: torch.Tensor):
    """Reference class per sample (the largest entry) and, for the k-1 other slots,
    their class index (B, n, k-1) (``r+1, r+2, ...`` modulo k) and whether the slot is
    on the face (B, n, k-1)."""
    k = Lp.shape[-1]
    ref = Lp.argmax(-1)                                                      # (B, n)
    cls = (ref[..., None] + torch.arange(1, k, device=Lp.device)) % k
    return ref, cls, Lp.gather(2, cls) > 0      # the model's face: exact zeros of the projection


def _expand_tangent(z: torch.Tensor, ref, cls, k: int) -> torch.Tensor:
    """``Q z``: (B, n, k-1) coordinates -> (B, n, k) tangent vector (rows sum to 0)."""
    D = torch.zeros(*z.shape[:2], k, dtype=z.dtype, device=z.device)
    D.scatter_(2, cls, z)
    return D.scatter_(2, ref[..., None], -z.sum(-1, keepdim=True))


def _reduce(r: torch.Tensor, ref, cls) -> torch.Tensor:
    """``Q^T r``: (B, n, k) -> (B, n, k-1)."""
    return r.gather(2, cls) - r.gather(2, ref[..., None])


@dataclass
class DualHessian:
    r"""The generalised Hessian ``M = -d^2 D`` on the active rows A of the working set,

        M = (1/lambda2) [ Ka (x) I_k + sum_{j in A} c_j (x_j x_j^T) (x) (v_j v_j^T) ],
        Ka = X_A diag(a) X_A^T + rho I,   a_j = 1 - lambda1/||v_j||,  c_j = lambda1/||v_j||^3,

    kept in factored form: ``XA`` (B, n, mA), ``VA`` (B, k, mA) (``v_j`` as columns),
    ``c`` (B, mA), ``Ka`` (B, n, n), ``l2`` (B,); padded slots have ``a = c = 0``.
    """

    XA: torch.Tensor
    VA: torch.Tensor
    c: torch.Tensor
    Ka: torch.Tensor
    l2: torch.Tensor
    solve_dtype: torch.dtype = torch.float32

    @classmethod
    def at(cls, XF, Vt, nrm, l1, l2, rho) -> "DualHessian":
        B, n, m = XF.shape
        on = nrm > l1[:, None]
        mA = max(int(on.sum(-1).max()), 1)
        sel = torch.where(on, nrm, torch.full_like(nrm, -1.0)).topk(mA, dim=-1).indices
        XA = XF.gather(2, sel[:, None, :].expand(B, n, mA))
        VA = Vt.gather(2, sel[:, None, :].expand(B, Vt.shape[1], mA))
        a, c, _ = bst_jacobian(nrm.gather(1, sel), l1)
        Ka = (XA * a[:, None, :]) @ XA.transpose(1, 2) + torch.diag_embed(rho[:, None].expand(B, n))
        return cls(XA=XA, VA=VA, c=c, Ka=Ka, l2=l2)

    def apply(self, D: torch.Tensor) -> torch.Tensor:
        """``M D`` for D (B, n, k): ``(Ka D + X_A (s_j v_j)_j) / lambda2``, ``s_j = c_j <v_j, (X_A^T D)_j>``."""
        s = self.c * (self.VA * (D.transpose(1, 2) @ self.XA)).sum(1)          # (B, mA)
        return (self.Ka @ D + self.XA @ (self.VA * s[:, None, :]).transpose(1, 2)) / self.l2[:, None, None]

    def reduced(self, ref, cls) -> torch.Tensor:
        r"""``Q^T M Q`` (B, n(k-1), n(k-1)) for the basis ``Q`` of :func:`_face_basis` with
        every slot free (restrict it to a face with :func:`_on_face`).

        With ``C_i`` the (k-1) x k matrix of rows ``e_l - e_{r_i}``: block (i, j) is
        ``Ka_ij C_i C_j^T + sum_j c_j x_i x_j (C_i v) (C_j v)^T``; the second part is
        ``R R^T`` with ``R[(i, l), j] = x_ij sqrt(c_j) (C_i v_j)_l``.
        """
        B, n, km = cls.shape
        k = km + 1
        dt = self.solve_dtype
        classes = torch.arange(k, device=cls.device)     # one-hot by comparison: no host sync on a GPU
        C = (cls[..., None] == classes).to(dt) - (ref[..., None, None] == classes).to(dt)
        Cf = C.reshape(B, n * km, k)
        R = (Cf @ (self.VA * self.c.sqrt()[:, None, :]).to(dt)).reshape(B, n, km, -1) * self.XA.to(dt)[:, :, None, :]
        R = R.reshape(B, n * km, -1)
        pattern = (Cf @ Cf.transpose(1, 2)).reshape(B, n, km, n, km)
        H = torch.baddbmm((self.Ka.to(dt)[:, :, None, :, None] * pattern).reshape(B, n * km, n * km), R,
                          R.transpose(1, 2))
        return H / self.l2[:, None, None].to(dt)


def _on_face(H: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """``H`` restricted to the slots ``on`` (B, n, k-1); the others get identity rows."""
    mask = on.reshape(on.shape[0], -1).to(H.dtype)
    return H * (mask[:, :, None] * mask[:, None, :]) + torch.diag_embed(1.0 - mask)


def newton_direction(prob: RestrictedProblem, Lam: torch.Tensor, ev: Evaluation,
                     damping: Optional[torch.Tensor] = None, face_iters: int = 2
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""``(Lam_N, Lam+)``: maximisers of the quadratic model of D on faces of the simplices
    (P, B, n, k), one per face tried, and the projected-gradient point ``Lam+ = proj(Lam + eta g)``.

    The model ``q(x) = g^T (x - Lam) - 1/2 (x - Lam)^T M (x - Lam)`` is maximised on the
    affine hull of a face (a dense solve in the basis of :func:`_face_basis`), starting
    from the face of ``Lam+``; ``face_iters`` primal-dual active-set updates then
    drop the entries that came out negative and add the zero entries whose model
    gradient exceeds the row's multiplier ``mu_i`` (the value of ``grad q`` on the face),
    and solve again (same Hessian, new mask; only the episodes whose face changed are
    solved again).  The reference class of each sample (the largest entry of ``Lam+``)
    stays on the face.

    ``damping`` (B,) >= 0 adds ``damping * mean(diag(Q^T M Q)) ||z||^2 / 2`` to the model
    (Levenberg-Marquardt): it pulls the Newton point towards ``Lam+`` when the model
    has proved too optimistic (features crossing the threshold ``||V_j|| = lambda1``
    along the step add curvature the generalised Hessian does not see).
    """
    B, n, k = Lam.shape
    Lp = project_simplex(Lam + prob.eta[:, None, None] * ev.g)
    M = DualHessian.at(prob.XF, ev.Vt, ev.nrm, prob.l1, prob.l2, prob.rho)
    ref, cls, _ = _face_basis(Lp)
    H = M.reduced(ref, cls)
    if damping is not None and bool((damping > 0).any()):
        scale = H.diagonal(dim1=-2, dim2=-1).mean(-1)
        H = H + torch.diag_embed((damping.to(H.dtype) * scale)[:, None].expand(B, H.shape[-1]))
    face = Lp > 0
    points = []
    x, todo = None, None          # todo: the episodes whose face changed (None: all)
    for it in range(face_iters + 1):
        # anchor on the face: mass of entries off the face moved to the reference class
        anchor = torch.where(face, Lp, torch.zeros_like(Lp))
        anchor = anchor.scatter_add(2, ref[..., None], (Lp - anchor).sum(-1, keepdim=True))
        on = face.gather(2, cls)
        rhs = ev.g - M.apply(anchor - Lam)
        b = (_reduce(rhs, ref, cls) * on).reshape(B, n * (k - 1))
        if todo is None:
            z = linalg.spd_solve(_on_face(H, on), b.to(H.dtype)).to(b.dtype).reshape(B, n, k - 1) * on
            x = anchor + _expand_tangent(z, ref, cls, k)
        else:
            z = linalg.spd_solve(_on_face(H[todo], on[todo]), b[todo].to(H.dtype)).to(b.dtype)
            z = z.reshape(-1, n, k - 1) * on[todo]
            x = x.clone()
            x[todo] = anchor[todo] + _expand_tangent(z, ref[todo], cls[todo], k)
        points.append(x)
        if it == face_iters:
            break
        r = ev.g - M.apply(x - Lam)                       # model gradient at x
        mu = r.gather(2, ref[..., None])
        new_face = torch.where(face, x > 0, r > mu)
        new_face = new_face.scatter(2, ref[..., None], True)
        changed = (new_face != face).reshape(B, -1).any(-1)
        if not bool(changed.any()):
            break
        todo = changed.nonzero()[:, 0]
        face = new_face
    return torch.stack(points), Lp


def _candidate_values(prob: RestrictedProblem, cand: torch.Tensor) -> torch.Tensor:
    """``D`` (C, B) at the dual points ``cand`` (C, B, n, k), in one batched product."""
    C, B, n, k = cand.shape
    G = (prob.Y - cand).permute(1, 0, 3, 2).reshape(B, C * k, n)
    Vt = torch.bmm(G, prob.XF).reshape(B, C, k, -1)                              # (B, C, k, m)
    nrm = _column_norms(Vt).transpose(0, 1)          # (C, B, m); norms before the transpose (contiguous)
    return _dual_value(cand, prob.Y, nrm, prob.l1, prob.l2, prob.c)


def projected_search(prob: RestrictedProblem, Lam: torch.Tensor, Lam_N: torch.Tensor, Lp: torch.Tensor,
                     steps=(0.5, 0.25, 0.125, 0.0625)) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Choose the next point among ``Lam+`` and ``proj(Lam + t (x - Lam))`` for the Newton
    points ``x`` of ``Lam_N`` (P, B, n, k).  Returns (new Lam, accepted t (B,), 0 = ``Lam+``).

    First the full steps ``proj(x)`` and ``Lam+`` are evaluated together; an episode takes
    the best of them (the largest D; ties to the first face).  Only when ``Lam+`` wins for
    some episode are the shortened steps ``t`` in ``steps`` evaluated, and such an episode
    takes the best of those and ``Lam+``.  Either way the new point is at least as good
    as projected gradient.
    """
    Pn = Lam_N.shape[0]
    cand = torch.cat([project_simplex(Lam_N), Lp[None]], 0)                      # (P + 1, B, n, k)
    D = _candidate_values(prob, cand)
    best = D.argmax(0)
    new = cand.gather(0, best[None, :, None, None].expand(1, *Lam.shape))[0]
    acc = (best < Pn).to(Lam.dtype)
    back = best == Pn
    if steps and bool(back.any()):
        t = torch.tensor(steps, dtype=Lam.dtype, device=Lam.device)[None, :, None, None, None]
        moves = project_simplex(Lam + t * (Lam_N[:, None] - Lam)).reshape(Pn * len(steps), *Lam.shape)
        cand2 = torch.cat([moves, Lp[None]], 0)
        D2 = _candidate_values(prob, cand2)
        best2 = D2.argmax(0)
        new2 = cand2.gather(0, best2[None, :, None, None].expand(1, *Lam.shape))[0]
        acc2 = torch.cat([t.flatten().repeat(Pn), t.new_zeros(1)])[best2]
        new = torch.where(back[:, None, None], new2, new)
        acc = torch.where(back, acc2, acc)
    return new, acc


# ----------------------------------------------------------------- driver
@dataclass
class NewtonState:
    """``Lam`` (B, n, k) float64 dual point and the working-set problem it lives in."""

    Lam: torch.Tensor
    prob: RestrictedProblem
    damping: Optional[torch.Tensor] = None   # (B,) Levenberg-Marquardt factor of newton_direction
    fresh: bool = False     # the working set was just built at Lam: no full pass needed
    ev: Optional[Evaluation] = None   # evaluation at Lam on prob (set by check, used by update)


class WorkingSetNewton:
    r"""The three steps above as an engine solver (:func:`metasparse.solvers.engine.run`).

    ``X`` (B, n, d) the full features (any float dtype), ``Y`` one-hot, ``l1, l2, rho``
    (B,); the restricted problem and the dual state are float64 (or X's dtype if wider).
    ``check`` evaluates the restricted gap and runs the full pass; an episode whose
    violators could not all be added in this check reports ``gap = inf``.
    """

    def __init__(self, X, Y, l1, l2, rho):
        self.X = X
        self.dtype = torch.promote_types(X.dtype, torch.float64)
        dt = self.dtype
        self.Y, self.l1, self.l2, self.rho = Y.to(dt), l1.to(dt), l2.to(dt), rho.to(dt)

    def init_state(self, Lam0: torch.Tensor) -> NewtonState:
        """Working set: the features with the largest ``||V_j(Lam0)||`` (:func:`initial_working_set`)."""
        B, n, d = self.X.shape
        Lam0 = Lam0.to(self.dtype)
        Vt = (self.Y - Lam0).to(self.X.dtype).transpose(1, 2) @ self.X
        idx = initial_working_set(_column_norms(Vt), n, self.Y.shape[-1])
        XF = self.X.gather(2, idx[:, None, :].expand(B, n, idx.shape[1])).to(self.dtype)
        prob = RestrictedProblem(idx=idx, XF=XF, Y=self.Y, l1=self.l1, l2=self.l2, rho=self.rho,
                                 eta=1.0 / restricted_lipschitz(XF, self.l2, self.rho))
        return NewtonState(Lam=Lam0, prob=prob, fresh=True)

    def update(self, state: NewtonState) -> NewtonState:
        ev = state.ev if state.ev is not None else evaluate(state.prob, state.Lam)
        damping = state.damping if state.damping is not None else torch.zeros_like(ev.D)
        Lam_N, Lp = newton_direction(state.prob, state.Lam, ev, damping)
        Lam, t = projected_search(state.prob, state.Lam, Lam_N, Lp)
        return NewtonState(Lam=Lam, prob=state.prob, damping=self.adapt_damping(damping, t))

    @staticmethod
    def adapt_damping(damping: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Levenberg-Marquardt rule on the accepted step: a full Newton step divides the
        damping by 10 (to 0 below 1e-6), a shortened one multiplies it by 3 (at least
        1e-4), the projected-gradient fallback by 10 (at least 1e-3)."""
        full = damping / 10.0
        full = torch.where(full < 1e-6, torch.zeros_like(full), full)
        short = torch.clamp(damping * 3.0, min=1e-4)
        fallback = torch.clamp(damping * 10.0, min=1e-3)
        return torch.where(t >= 1.0, full, torch.where(t > 0, short, fallback))

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

    def check(self, state: NewtonState, active=None):
        prob = state.prob
        if state.fresh:      # built from this point's norms: certify from the next check on
            ev = evaluate(prob, state.Lam)
            return replace(state, fresh=False, ev=ev), ev.P, torch.full_like(ev.gap, math.inf)
        norms, viol = feature_violations(self.X, self.Y, state.Lam, prob)
        covered = torch.ones_like(viol[:, 0])
        if bool(viol.any()):
            prob, covered = grow_working_set(prob, self.X, norms, viol)
        ev = evaluate(prob, state.Lam)
        gap = torch.where(covered, ev.gap, torch.full_like(ev.gap, math.inf))
        return replace(state, prob=prob, ev=ev), ev.P, gap

r"""Faces of the product of simplices and the dual Hessian on them: the one home of the
geometry shared by the Newton solver (:mod:`~metasparse.solvers.newton`), FISTA's Newton
tries (:mod:`~metasparse.solvers.fista`) and the implicit backward passes
(:mod:`~metasparse.solvers.implicit`).

A dual point ``Lam`` (B, n, k) has every row in the simplex.  A *face* fixes, per sample
i, a support ``s_i`` (the classes allowed to be non-zero); its tangent space is

    T = {D : D_il = 0 for l not in s_i,  sum_l D_il = 0}.

**Basis.**  Per sample a reference class ``r_i`` (the largest entry of a reference point,
so always in the support) and the ``k - 1`` other classes ``cls_i = (r_i + 1, ..., r_i + k
- 1) mod k``.  ``Q z`` puts ``z_il`` at class ``cls_il`` and ``-sum_l z_il`` at ``r_i`` (rows
sum to 0); the slots ``on`` (B, n, k-1) say which of the ``k - 1`` classes are in the
support (the others are held at 0).  Every Newton system and implicit backward of the
package is

    (Q^T M Q)_on z = (Q^T r)_on,     u = Q z  in T,                            (*)

with ``M = -d^2 D`` the dual Hessian (:class:`DualHessian`, kept factored), solved by
:func:`~metasparse.solvers.linalg.spd_solve` (:meth:`Face.solve`).  On T, ``M >= rho /
lambda2 > 0`` for ``rho > 0``, so the solution ``u`` does not depend on the basis.

**rho = 0.**  (*) can be singular (the dual optimum need not be unique); the generic
backward then takes the minimum-norm solution in orthonormal coordinates
(:func:`solve_on_face_projector`, with the projector of :func:`projector_blocks`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from . import linalg
from .objectives import column_norms, dual_features, row_norms

__all__ = ["on_face", "Face", "DualHessian", "dual_hessian", "projector_blocks", "solve_on_face_projector"]


def on_face(Lam: torch.Tensor) -> torch.Tensor:
    """The support of a dual point as the backward reads it: entries above rounding level
    (``64 eps`` of the dtype; rows sum to 1), so that an entry a Newton step left at ~1e-17
    instead of 0 does not count as on the face."""
    return Lam > 64 * torch.finfo(Lam.dtype).eps


_EYE = {}


def _eye(N: int, dtype, device) -> torch.Tensor:
    """A cached (N, N) identity (one allocation per size, not one per solve)."""
    key = (N, dtype, str(device))
    if key not in _EYE:
        _EYE[key] = torch.eye(N, dtype=dtype, device=device)
    return _EYE[key]


@dataclass
class Face:
    """A face in the basis of the module docstring: ``ref`` (B, n, 1) reference classes,
    ``cls`` (B, n, k-1) the other classes, ``on`` (B, n, k-1) bool: the slots on the face,
    and ``C`` (B, n, k-1, k) the rows ``e_cls - e_ref`` (``Q^T`` per sample) in the point's dtype.

    (Written for few device operations: on a GPU each is a kernel launch.)"""

    ref: torch.Tensor
    cls: torch.Tensor
    on: torch.Tensor
    C: torch.Tensor

    @classmethod
    def of(cls_, point: torch.Tensor, support: Optional[torch.Tensor] = None) -> "Face":
        """Basis with reference classes ``argmax`` of ``point`` (B, n, k); slots on the face
        where ``support`` (B, n, k) bool (default: ``point > 0``) is True."""
        k = point.shape[-1]
        classes = torch.arange(k, device=point.device)
        ref = point.argmax(-1, keepdim=True)
        cls = torch.remainder(ref + classes[1:], k)
        C = (cls.unsqueeze(-1) == classes).to(point.dtype) - (ref.unsqueeze(-1) == classes).to(point.dtype)
        support = point > 0 if support is None else support
        return cls_(ref=ref, cls=cls, on=support.gather(2, cls), C=C)

    def with_support(self, support: torch.Tensor) -> "Face":
        """The same basis on another support (B, n, k) (the reference class must be in it)."""
        return replace(self, on=support.gather(2, self.cls))

    def expand(self, z: torch.Tensor) -> torch.Tensor:
        """``Q z``: (B, n, k-1) coordinates -> (B, n, k) tangent vector (rows sum to 0)."""
        return (z.unsqueeze(-1) * self.C).sum(-2)

    def reduce(self, r: torch.Tensor) -> torch.Tensor:
        """``Q^T r``: (B, n, k) -> (B, n, k-1)."""
        return (self.C * r.unsqueeze(-2)).sum(-1)

    def restrict(self, H: torch.Tensor) -> torch.Tensor:
        """``H`` (B, n(k-1), n(k-1)) restricted to the slots on the face; the others get
        identity rows (their coordinate solves to 0)."""
        m = self.on.view(self.on.shape[0], -1)
        return torch.where(m.unsqueeze(2) & m.unsqueeze(1), H, _eye(H.shape[-1], H.dtype, H.device))

    def solve(self, H: torch.Tensor, rhs: torch.Tensor, on_failure: str = "refine") -> torch.Tensor:
        """The tangent ``u = Q z`` (B, n, k) solving (*) for the reduced Hessian ``H = Q^T M Q``
        (:meth:`DualHessian.reduced`, every slot free) and ``rhs`` (B, n, k);
        ``on_failure`` as in :func:`~metasparse.solvers.linalg.spd_solve`.  (The coordinates
        off the face solve to exactly 0: identity rows and a zero right-hand side.)"""
        B, n, km = self.cls.shape
        b = torch.where(self.on, self.reduce(rhs), 0.0).view(B, n * km)
        z = linalg.spd_solve(self.restrict(H), b.to(H.dtype), on_failure=on_failure)
        return self.expand(z.view(B, n, km).to(rhs.dtype))


@dataclass
class DualHessian:
    r"""The generalised Hessian ``M = -d^2 D`` of the dual on the active rows A,

        M = (1/lambda2) [ Ka (x) I_k + sum_{j in A} c_j (x_j x_j^T) (x) (v_j v_j^T) ],
        Ka = X_A diag(a) X_A^T + rho I,   a_j = 1 - lambda1/||v_j||,  c_j = lambda1/||v_j||^3,

    kept in factored form: ``Ka`` (B, n, n), ``l2`` (B,), and for lambda1 > 0 ``XA`` (B, n,
    mA), ``VA`` (B, k, mA) (``v_j`` as columns), ``c`` (B, mA) (padded slots: ``a = c = 0``)
    and ``cols`` (B, mA), the columns of the features they were taken from (the active
    ones first, by decreasing norm).
    For lambda1 = 0 (:meth:`gram`) the second part is absent: ``M = (K + rho I) (x) I_k /
    lambda2``.
    """

    Ka: torch.Tensor
    l2: torch.Tensor
    XA: Optional[torch.Tensor] = None
    VA: Optional[torch.Tensor] = None
    c: Optional[torch.Tensor] = None
    cols: Optional[torch.Tensor] = None
    solve_dtype: torch.dtype = torch.float32

    @classmethod
    def at(cls, XF, Vt, nrm, l1, l2, rho, m_active: Optional[int] = None,
           solve_dtype: torch.dtype = torch.float32) -> "DualHessian":
        """At the point whose ``Vt = (Y - Lam)^T X_F`` (B, k, m) and column norms ``nrm``
        (B, m) are given.  ``m_active``: how many columns to keep (at least the largest
        number of active rows of an episode; the caller may know it without asking the
        device); default: counted here (a host sync on a GPU)."""
        B, n, m = XF.shape
        l1c = l1.view(-1, 1)
        on = nrm > l1c
        mA = max(int(on.sum(-1).max()), 1) if m_active is None else max(min(int(m_active), m), 1)
        sel = torch.where(on, nrm, -1.0).topk(mA, dim=-1).indices
        XA = XF.gather(2, sel.unsqueeze(1).expand(B, n, mA))
        VA = Vt.gather(2, sel.unsqueeze(1).expand(B, Vt.shape[1], mA))
        nA = nrm.gather(1, sel)
        # bst_jacobian on the selected rows: a = 1 - lambda1/||v||, c = lambda1/||v||^3 (0 off A)
        onA = nA > l1c
        inv = torch.where(onA, nA, 1.0).reciprocal()
        a = torch.where(onA, 1.0 - l1c * inv, 0.0)
        c = torch.where(onA, l1c * inv * inv * inv, 0.0)
        Ka = torch.baddbmm(torch.diag_embed(rho.view(-1, 1).expand(B, n)), XA * a.unsqueeze(1), XA.transpose(1, 2))
        return cls(Ka=Ka, l2=l2, XA=XA, VA=VA, c=c, cols=sel, solve_dtype=solve_dtype)

    @classmethod
    def gram(cls, K, l2, rho, solve_dtype: torch.dtype = torch.float32) -> "DualHessian":
        """lambda1 = 0: ``M = (K + rho I) (x) I_k / lambda2`` from the Gram matrix ``K = X X^T``."""
        n = K.shape[-1]
        return cls(Ka=K + torch.diag_embed(rho[:, None].expand(K.shape[0], n).to(K.dtype)), l2=l2,
                   solve_dtype=solve_dtype)

    def apply(self, D: torch.Tensor) -> torch.Tensor:
        """``M D`` for D (B, n, k): ``(Ka D + X_A (s_j v_j)_j) / lambda2``, ``s_j = c_j <v_j, (X_A^T D)_j>``."""
        out = torch.bmm(self.Ka, D)
        if self.XA is not None:
            s = self.c * (self.VA * torch.bmm(D.transpose(1, 2), self.XA)).sum(1)   # (B, mA)
            out = torch.baddbmm(out, self.XA, (self.VA * s.unsqueeze(1)).transpose(1, 2))
        return out / self.l2.view(-1, 1, 1)

    def reduced(self, face: Face) -> torch.Tensor:
        r"""``Q^T M Q`` (B, n(k-1), n(k-1)) in the basis of ``face`` with every slot free
        (:meth:`Face.restrict` restricts it).

        With ``C_i`` the (k-1) x k matrix of rows ``e_l - e_{r_i}``: block (i, j) is
        ``Ka_ij C_i C_j^T + sum_j c_j x_i x_j (C_i v) (C_j v)^T``; the second part is
        ``R R^T`` with ``R[(i, l), j] = x_ij sqrt(c_j) (C_i v_j)_l``.
        """
        B, n, km, k = face.C.shape
        dt = self.solve_dtype
        Cf = face.C.to(dt).view(B, n * km, k)
        pattern = torch.bmm(Cf, Cf.transpose(1, 2)).view(B, n, km, n, km)
        H = (self.Ka.to(dt).view(B, n, 1, n, 1) * pattern).view(B, n * km, n * km)
        if self.XA is not None:
            R = torch.bmm(Cf, (self.VA * self.c.sqrt().unsqueeze(1)).to(dt)).view(B, n, km, -1) \
                * self.XA.to(dt).unsqueeze(2)
            R = R.view(B, n * km, -1)
            H = torch.baddbmm(H, R, R.transpose(1, 2))
        return H / self.l2.to(dt).view(-1, 1, 1)


def dual_hessian(Lam, X, Y, lambda1, lambda2, dual_reg, K=None) -> torch.Tensor:
    r"""``M = -d grad D / d Lam`` as a dense (B, n*k, n*k) matrix (index ``i*k + l``) for the
    generic backward (:func:`solve_on_face_projector`)."""
    B, n, k = Lam.shape
    eye_k = torch.eye(k, dtype=X.dtype, device=X.device)
    if bool((lambda1 > 0).any()):
        V = dual_features(X, Y, Lam)                                 # (B, d, k)
        M = DualHessian.at(X, V.transpose(1, 2), row_norms(V), lambda1, lambda2, torch.zeros_like(dual_reg),
                           solve_dtype=X.dtype)
        Mx = M.Ka[:, :, None, :, None] * eye_k[None, None, :, None, :]
        # rank-structured part: sum_j c_j (x_j x_j^T) (x) (v_j v_j^T), one n x n Gram per class pair
        XA, VA = M.XA, M.VA
        U = XA[:, :, None, :] * (VA * M.c.sqrt()[:, None, :])[:, None, :, :]      # (B, n, k, mA)
        U = U.reshape(B, n * k, -1)
        Mx = Mx.reshape(B, n * k, n * k) + U @ U.transpose(1, 2)
    else:
        K = X @ X.transpose(1, 2) if K is None else K.to(X.dtype)
        Mx = (K[:, :, None, :, None] * eye_k[None, None, :, None, :]).expand(B, n, k, n, k).reshape(B, n * k, n * k)
    Mx = Mx + dual_reg[:, None, None] * torch.eye(n * k, dtype=X.dtype, device=X.device)
    return Mx / lambda2[:, None, None]


def projector_blocks(Lam: torch.Tensor) -> torch.Tensor:
    """(B, n, k, k) diagonal blocks of the orthogonal projector onto T (one per sample):
    ``diag(s) - s s^T / |s|`` with ``s`` the support (:func:`on_face`) of the sample's row."""
    s = on_face(Lam).to(Lam.dtype)
    cnt = s.sum(-1).clamp(min=1.0)
    return torch.diag_embed(s) - s[..., :, None] * s[..., None, :] / cnt[..., None, None]


def solve_on_face_projector(A: torch.Tensor, Pb: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    r"""Minimum-norm ``u`` in range(P) with ``(P A P) u = P rhs`` (eigendecomposition
    pseudo-inverse; for a possibly singular face system, rho = 0).  ``A`` (B, n*k, n*k) the
    dense Hessian, ``Pb`` (B, n, k, k) the projector blocks, ``rhs`` (B, n*k)."""
    B, n, k, _ = Pb.shape
    N = n * k
    A5 = A.reshape(B, n, k, n, k)
    H = torch.einsum('bilp,bipjq,bjqr->biljr', Pb, A5, Pb).reshape(B, N, N)
    H = 0.5 * (H + H.transpose(-1, -2))
    b = torch.einsum('bilp,bip->bil', Pb, rhs.reshape(B, n, k)).reshape(B, N, 1)
    w, Q = torch.linalg.eigh(H)
    eps = torch.finfo(A.dtype).eps
    thr = w.abs().amax(-1, keepdim=True) * (N * eps * 10.0)
    inv = torch.where(w > thr, 1.0 / torch.where(w > thr, w, torch.ones_like(w)), torch.zeros_like(w))
    u = Q @ (inv.unsqueeze(-1) * (Q.transpose(-1, -2) @ b))
    return torch.einsum('bilp,bip->bil', Pb, u.reshape(B, n, k)).reshape(B, N)

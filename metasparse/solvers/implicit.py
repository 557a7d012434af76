r"""Implicit differentiation of the group-sparse SVM dual solution.

At an optimum ``Lam*`` of the dual (rows in the simplex) with gradient
``g(Lam, theta) = Delta + X W(Lam) + (rho/lambda2)(Y - Lam)`` and
``theta = (X, lambda1, lambda2)``, the optimality conditions restricted to the
minimal face of the product of simplices are

    Pi_T g(Lam*, theta) = 0,   Lam* on the face,

where ``T = {D : D_il = 0 where Lam*_il = 0, sum_l D_il = 0}`` and ``Pi_T`` its
orthogonal projector (this is also the fixed point ``Lam = proj(Lam + eta g)`` under
strict complementarity).  Differentiating, with ``M = -dg/dLam`` (symmetric PSD),

    (Pi_T M Pi_T) dLam = Pi_T (dg/dtheta) dtheta,   dLam in T.

The vector-Jacobian product of ``Lam*(theta)`` with a cotangent ``G`` is therefore
``theta_bar = (dg/dtheta)^T u`` with ``u`` in T solving ``(Pi_T M Pi_T) u = Pi_T G``
(a dense batched solve with n*k unknowns per episode).  ``M`` in closed form:

    M = (1/lambda2) [ (X diag(a) X^T) (x) I_k + sum_j c_j (x_j (x) v_j)(x_j (x) v_j)^T + rho I ]

with ``v_j = (X^T (Y - Lam))_j``, ``a_j = max(0, 1 - lambda1/||v_j||)``,
``c_j = lambda1 / ||v_j||^3`` on active rows (``||v_j|| > lambda1``), 0 elsewhere
(the Jacobian of block soft-thresholding is ``a_j I + c_j v_j v_j^T``).  For
``rho = 0`` the system can be singular (the dual optimum need not be unique): the
minimum-norm solution (eigendecomposition pseudo-inverse) is used; the null-space
directions leave ``W*`` unchanged, so gradients of ``W*`` are still exact.
``(dg/dtheta)^T u`` is taken by autograd through :func:`dual_gradient`.
"""
from __future__ import annotations

import torch

from .face import DualHessian, Face, dual_hessian, on_face, projector_blocks, solve_on_face_projector
from .objectives import bst_factor, bst_jacobian, column_norms, dual_gradient
from .threads import solver_threads

__all__ = ["dual_hessian", "implicit_dual_vjp", "ImplicitDual", "GramSVMWeights", "GroupSparseWeights"]


def implicit_dual_vjp(Lam, X, Y, lambda1, lambda2, dual_reg, grad_Lam, need=(True, True, True), K=None):
    r"""Vector-Jacobian product of the dual solution map ``theta -> Lam*(theta)``.

    ``Lam`` (B, n, k) the solution, ``grad_Lam`` (B, n, k) the cotangent.  Returns
    ``(grad_X, grad_lambda1, grad_lambda2)`` (``None`` for entries not in ``need``).
    Exact when ``Lam`` is the optimum and strict complementarity holds.
    """
    B, n, k = Lam.shape
    Lam = Lam.detach()
    Xd, l1d, l2d = X.detach(), lambda1.detach(), lambda2.detach()
    rho = dual_reg.detach()
    with torch.no_grad():
        M = dual_hessian(Lam, Xd, Y, l1d, l2d, rho, K=K if not bool((l1d > 0).any()) else None)
        u = solve_on_face_projector(M, projector_blocks(Lam), grad_Lam.detach().reshape(B, n * k)).reshape(B, n, k)
    with torch.enable_grad():
        Xv = Xd.clone().requires_grad_(need[0])
        l1v = l1d.clone().requires_grad_(need[1])
        l2v = l2d.clone().requires_grad_(need[2])
        g = dual_gradient(Lam, Xv, Y, l1v, l2v, rho)
        inputs = [t for t, nd in zip((Xv, l1v, l2v), need) if nd]
        grads = torch.autograd.grad(g, inputs, grad_outputs=u, allow_unused=True) if inputs else ()
    out, it = [], iter(grads)
    for t, nd in zip((Xv, l1v, l2v), need):
        if nd:
            gr = next(it)
            out.append(torch.zeros_like(t) if gr is None else gr)
        else:
            out.append(None)
    return tuple(out)


class ImplicitDual(torch.autograd.Function):
    """Identity on the (detached) solution ``Lam*`` whose backward is :func:`implicit_dual_vjp`."""

    @staticmethod
    def forward(ctx, Lam, X, lambda1, lambda2, Y, dual_reg, K=None, cpu_threads=None):
        ctx.save_for_backward(Lam, X, lambda1, lambda2, Y, dual_reg)
        ctx.K = K            # optional precomputed Gram matrix X X^T (lambda1 = 0)
        ctx.cpu_threads = cpu_threads
        return Lam.clone()

    @staticmethod
    def backward(ctx, grad_Lam):
        Lam, X, l1, l2, Y, rho = ctx.saved_tensors
        need = ctx.needs_input_grad[1:4]
        with solver_threads(X.device, ctx.cpu_threads):
            gX, g1, g2 = implicit_dual_vjp(Lam, X, Y, l1, l2, rho, grad_Lam, need=need, K=ctx.K)
        return None, gX, g1, g2, None, None, None, None


class GramSVMWeights(torch.autograd.Function):
    r"""``W* = X^T (Y - Lam*(X, lambda2)) / lambda2`` for lambda1 = 0, with its exact backward.

    With ``G = Y - Lam*``, ``u`` the face solve of :func:`implicit_dual_vjp` for the
    cotangent ``gLam = -X gW / lambda2`` and ``S = X W``, the chain rule through the
    primal-dual link and the fixed point ``g = Delta + X X^T G/lambda2 + (rho/lambda2) G``
    collapses to

        grad_X       = u W^T + G ((gW + X^T u) / lambda2)^T      (one rank-2k product)
        grad_lambda2 = -(<gW, W> + <u, S + (rho/lambda2) G>) / lambda2.
    """

    @staticmethod
    def forward(ctx, X, lambda2, Lam, K, Y, dual_reg, cpu_threads=None, smooth=None):
        """``smooth``: True when every ``dual_reg > 0`` (known on the host): the face system
        is then positive definite and solved by Cholesky in the basis of
        :class:`~metasparse.solvers.face.Face`; otherwise by the minimum-norm solve."""
        G = Y - Lam
        W = ((G.transpose(1, 2) @ X) / lambda2[:, None, None]).transpose(1, 2)
        ctx.save_for_backward(X, lambda2, Lam, K, Y, dual_reg, W)
        ctx.cpu_threads = cpu_threads
        ctx.smooth = bool((dual_reg > 0).all()) if smooth is None else bool(smooth)
        return W

    @staticmethod
    def backward(ctx, gW):
        with solver_threads(gW.device, ctx.cpu_threads):
            return GramSVMWeights._backward(ctx, gW) + (None, None)

    @staticmethod
    def _backward(ctx, gW):
        X, l2, Lam, K, Y, rho, W = ctx.saved_tensors
        B, n, k = Lam.shape
        inv = (1.0 / l2)[:, None, None]
        G = Y - Lam
        gLam = -(X @ gW) * inv
        if ctx.smooth:
            dt = torch.promote_types(X.dtype, torch.float32)
            M = DualHessian.gram(K.to(dt), l2.to(dt), rho.to(dt), solve_dtype=dt)
            face = Face.of(Lam, on_face(Lam))
            u = face.solve(M.reduced(face), gLam.to(dt)).to(X.dtype)
        else:
            M = dual_hessian(Lam, X, Y, torch.zeros_like(l2), l2, rho, K=K)
            u = solve_on_face_projector(M, projector_blocks(Lam), gLam.reshape(B, n * k)).reshape(B, n, k)
        gX = gl2 = None
        Xtu = (u.transpose(1, 2) @ X).transpose(1, 2)                     # (B, d, k)
        if ctx.needs_input_grad[0]:
            left = torch.cat([u, G], dim=-1)                               # (B, n, 2k)
            right = torch.cat([W, (gW + Xtu) * inv], dim=-1)               # (B, d, 2k)
            gX = left @ right.transpose(1, 2)
        if ctx.needs_input_grad[1]:
            S = K.to(X.dtype) @ G * inv                                    # X W
            c = (rho / l2)[:, None, None]
            gl2 = -((gW * W).sum((-1, -2)) + (u * (S + c * G)).sum((-1, -2))) / l2
        return gX, gl2, None, None, None, None


class GroupSparseWeights(torch.autograd.Function):
    r"""``W* = BST_rows(X^T (Y - Lam*), lambda1) / lambda2`` with its exact implicit backward,
    for the working-set solver (:mod:`metasparse.solvers.newton`).

    Only the active rows ``A`` (``||v_j|| > lambda1``, ``v_j = (X^T G)_j``, ``G = Y - Lam*``)
    carry a gradient.  With ``J_j = a_j I + c_j v_j v_j^T`` the Jacobian of block
    soft-thresholding on row j (``a_j = 1 - lambda1/||v_j||``, ``c_j = lambda1/||v_j||^3``),
    the cotangent ``gW`` gives ``gLam = -X_A J (gW)_A / lambda2``; ``u`` solves the face
    system ``(Pi_T M Pi_T) u = Pi_T gLam`` (module docstring; the Hessian of the active
    rows, float64, in the face basis of the Newton solver), and

        grad_X[:, A]  = u W_A^T + G (J (gW + X^T u)_A)^T / lambda2     (zero elsewhere)
        grad_lambda2  = -(<gW, W> + <u, X W + (rho/lambda2) G>) / lambda2
        grad_lambda1  = -sum_{j in A} <(gW + X^T u)_j, v_j/||v_j||> / lambda2.
    """

    @staticmethod
    def forward(ctx, X, lambda1, lambda2, Lam, Y, dual_reg, rows, cpu_threads=None, XF=None):
        """``rows`` (B, m) feature indices containing every non-zero row of W* (the
        working set); ``Lam`` the dual solution (any float dtype); ``XF`` (optional) the
        columns ``rows`` of X, already gathered (the solver's restricted problem)."""
        B, n, d = X.shape
        dt = torch.promote_types(Lam.dtype, X.dtype)
        if XF is None:
            XF = X.gather(2, rows[:, None, :].expand(B, n, rows.shape[1]))
        XF = XF.to(dt)
        Vt = (Y.to(dt) - Lam.to(dt)).transpose(1, 2) @ XF
        nrm = column_norms(Vt)
        l1, l2 = lambda1.to(dt), lambda2.to(dt)
        WF = (Vt * (bst_factor(nrm, l1) / l2[:, None]).unsqueeze(1)).transpose(1, 2)            # (B, m, k)
        W = torch.zeros(B, d, Y.shape[-1], dtype=X.dtype, device=X.device)
        W.scatter_(1, rows[..., None].expand(B, rows.shape[1], Y.shape[-1]), WF.to(X.dtype))
        ctx.save_for_backward(X, lambda1, lambda2, Lam, Y, dual_reg, rows, XF)
        ctx.cpu_threads = cpu_threads
        return W

    @staticmethod
    def backward(ctx, gW):
        with solver_threads(gW.device, ctx.cpu_threads):
            return GroupSparseWeights._backward(ctx, gW) + (None, None, None, None, None, None)

    @staticmethod
    def _backward(ctx, gW):
        X, l1, l2, Lam, Y, rho, rows, XF = ctx.saved_tensors
        B, n, d = X.shape
        k = Y.shape[-1]
        dt = torch.promote_types(Lam.dtype, torch.float64)
        Ld, Yd, l1d, l2d, rhod = Lam.to(dt), Y.to(dt), l1.to(dt), l2.to(dt), rho.to(dt)
        G = Yd - Ld
        # active rows of the working set
        XF = XF.to(dt)
        Vt = G.transpose(1, 2) @ XF
        nrm = column_norms(Vt)
        M = DualHessian.at(XF, Vt, nrm, l1d, l2d, rhod,
                           solve_dtype=torch.promote_types(X.dtype, torch.float32))   # the precision of the inputs
        sel = M.cols                                                                # (B, mA)
        mA = sel.shape[1]
        idxA = rows.gather(1, sel)
        oA = (nrm > l1d[:, None]).gather(1, sel)
        XA, VA, c = M.XA, M.VA, M.c                                                 # VA (B, k, mA)
        nA = column_norms(VA)
        a, _, _ = bst_jacobian(nA, l1d)
        safe = torch.where(oA, nA, torch.ones_like(nA))
        WA = VA * (a / l2d[:, None]).unsqueeze(1)                                   # (B, k, mA)
        gWA = gW.gather(1, idxA[..., None].expand(B, mA, k)).to(dt).transpose(1, 2)   # (B, k, mA)

        def J(Z):   # block soft-thresholding Jacobian, per column j: a_j z + c_j v_j <v_j, z>
            return a.unsqueeze(1) * Z + (c * (VA * Z).sum(1)).unsqueeze(1) * VA

        inv = (1.0 / l2d)[:, None, None]
        gLam = -(XA @ J(gWA).transpose(1, 2)) * inv                                # (B, n, k)
        face = Face.of(Ld, on_face(Ld))
        u = face.solve(M.reduced(face), gLam)                                       # (B, n, k)
        XtU = u.transpose(1, 2) @ XA                                                # (B, k, mA)
        gX = gl1 = gl2 = None
        if ctx.needs_input_grad[0]:
            gXA = u @ WA + (G @ J(gWA + XtU)) * inv                                 # (B, n, mA)
            gX = torch.zeros_like(X).scatter_(2, idxA[:, None, :].expand(B, n, mA), gXA.to(X.dtype))
        if ctx.needs_input_grad[1]:
            unit = VA / safe.unsqueeze(1) * oA.unsqueeze(1)
            gl1 = (-((gWA + XtU) * unit).sum((1, 2)) / l2d).to(l1.dtype)
        if ctx.needs_input_grad[2]:
            S = XA @ WA.transpose(1, 2)
            cc = (rhod / l2d)[:, None, None]
            gl2 = (-((gWA * WA).sum((1, 2)) + (u * (S + cc * G)).sum((1, 2))) / l2d).to(l2.dtype)
        return gX, gl1, gl2

"""Dense linear algebra shared by the solvers and their implicit backward passes."""
from __future__ import annotations

import torch

__all__ = ["spd_solve"]


def spd_solve(H: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``H x = b`` for symmetric positive (semi)definite H: Cholesky in H's dtype;
    episodes where it fails are redone in float64, then (numerically singular H, e.g.
    ``rho = 0``) with the eigendecomposition pseudo-inverse."""
    L, info = torch.linalg.cholesky_ex(H)
    x = torch.cholesky_solve(b[..., None], L)[..., 0]
    bad = info != 0
    if not bool(bad.any()):
        return x
    Hb, bb = H[bad].double(), b[bad].double()
    L, info = torch.linalg.cholesky_ex(Hb)
    xb = torch.cholesky_solve(bb[..., None], L)[..., 0]
    sing = info != 0
    if bool(sing.any()):
        w, Qm = torch.linalg.eigh(Hb[sing])
        thr = w.abs().amax(-1, keepdim=True) * (H.shape[-1] * torch.finfo(w.dtype).eps * 10.0)
        inv = torch.where(w > thr, 1.0 / torch.where(w > thr, w, torch.ones_like(w)), torch.zeros_like(w))
        xb = xb.clone()      # (not the solve's output in place: autograd needs it)
        xb[sing] = (Qm @ (inv[..., None] * (Qm.transpose(-1, -2) @ bb[sing][..., None])))[..., 0]
    x = x.clone()
    x[bad] = xb.to(x.dtype)
    return x

"""Dense linear algebra shared by the solvers and their implicit backward passes."""
from __future__ import annotations

import torch

from ..profiling import host_side

__all__ = ["spd_solve", "top_eigenvalue"]


def spd_solve(H: torch.Tensor, b: torch.Tensor, on_failure: str = "refine") -> torch.Tensor:
    """Solve ``H x = b`` for symmetric positive (semi)definite H by Cholesky in H's dtype.

    ``on_failure="refine"``: episodes where the factorisation fails are redone in float64,
    then (numerically singular H, e.g. ``rho = 0``) with the eigendecomposition
    pseudo-inverse; finding out costs one host sync.  ``"zero"``: no host sync; those
    episodes get ``x = 0`` (for iterative solvers that fall back to a safe step)."""
    L, info = torch.linalg.cholesky_ex(H)
    x = torch.cholesky_solve(b.unsqueeze(-1), L).squeeze(-1)
    bad = info != 0
    if on_failure == "zero":
        return torch.where(bad.unsqueeze(-1), 0.0, x)
    if on_failure != "refine":
        raise ValueError(f"on_failure: expected 'refine' or 'zero', got {on_failure!r}")
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


def top_eigenvalue(K: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue of each symmetric matrix of a batch (B, n, n), on K's device and dtype.

    The eigenvalues of these small matrices (n = the support size) are computed on the host
    in float64: on a GPU, cuSOLVER's batched ``syevd`` takes ~5 ms for 8 matrices of 75 x 75
    and checks its result with a host sync anyway; the copy is that one sync, and the
    host takes ~0.1 ms."""
    K_host = K.detach().to(dtype=torch.float64).cpu()
    with host_side():
        w = torch.linalg.eigvalsh(K_host)[..., -1]
    return w.to(device=K.device, dtype=K.dtype, non_blocking=True)

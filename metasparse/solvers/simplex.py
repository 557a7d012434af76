"""Batched Euclidean projections used by the dual solvers.

All functions act on the last dimension and are vectorised over every leading
dimension (episodes, samples), so one call projects every row of a batch.
"""
from __future__ import annotations

import torch

__all__ = ["project_simplex", "project_l1_ball"]


def project_simplex(v: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
    r"""Project each row of ``v`` onto the simplex ``{x >= 0, sum(x) = radius}``.

    Sort-based algorithm (Held et al. 1974; Duchi et al. 2008): with ``u`` the
    row sorted in decreasing order and ``c_j = sum_{i<=j} u_i``,

        rho = max { j : u_j - (c_j - radius) / j > 0 },
        tau = (c_rho - radius) / rho,
        proj(v) = max(v - tau, 0).

    Entries outside the support come out exactly 0 (the solvers and the implicit
    backward read the active set from these zeros).  Differentiable a.e. through
    autograd (used by the unrolled backward).
    """
    k = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = torch.cumsum(u, dim=-1) - radius
    j = _arange(k, v.dtype, v.device)
    # the indices where u_j > (c_j - radius)/j form a prefix (Duchi et al. 2008, Lemma 2),
    # so the support size is their count (at least 1: u_1 - (u_1 - r) = r > 0)
    rho = (u * j > css).sum(-1, keepdim=True).clamp(min=1)
    tau = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return torch.clamp(v - tau, min=0.0)


_ARANGE = {}


def _arange(k, dtype, device):
    key = (k, dtype, str(device))
    if key not in _ARANGE:
        _ARANGE[key] = torch.arange(1, k + 1, dtype=dtype, device=device)
    return _ARANGE[key]


def project_l1_ball(v: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
    r"""Project each row of a non-negative ``v`` onto ``{x >= 0, sum(x) <= radius}``.

    Rows already inside are returned unchanged; the others go to the simplex of
    the given radius (the projection onto the l1 ball of non-negative vectors).
    """
    inside = v.sum(-1, keepdim=True) <= radius
    return torch.where(inside, v, project_simplex(v, radius))

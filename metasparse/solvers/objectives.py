r"""The group-sparse multiclass SVM: primal, (smoothed) dual and their pieces.

Notation of docs/maths.md section 3, batched over episodes (leading dimension B):
``X`` (B, n, d) support features, ``Y`` (B, n, k) one-hot labels, ``Delta = 1 - Y``,
``W`` (B, d, k), ``Lam`` (B, n, k) with rows in the probability simplex,
``lambda1``, ``lambda2``, ``dual_reg = rho`` per episode (B,).

    P(W)   = sum_i l_i(x_i^T W) + lambda1 ||W||_{2,1} + lambda2/2 ||W||_F^2
    D(Lam) = <Lam, Delta> - 1/(2 lambda2) sum_j max(0, ||V_j|| - lambda1)^2
             - rho/(2 lambda2) ||Lam - Y||^2,          V = X^T (Y - Lam)
    W(Lam) = BST_rows(V, lambda1) / lambda2            (primal-dual link)

with the (smoothed) Crammer-Singer hinge, ``c = rho / lambda2``,

    l_i(s) = max_{q in simplex} <q, Delta_i + s> - s_{y_i} - c/2 ||q - y_i||^2,

whose maximiser is ``q = proj_simplex(y_i + (Delta_i + s)/c)`` for c > 0 and the
plain ``max_l (Delta_il + s_l) - s_{y_i}`` for c = 0.  ``P(W(Lam)) - D(Lam) >= 0`` is
the duality gap, zero exactly at the optimum.
"""
from __future__ import annotations

from typing import Optional

import torch

from .simplex import project_simplex

__all__ = [
    "as_episode_vector", "one_hot", "row_norms", "column_norms", "bst_factor", "bst_jacobian", "zero_weight_dual",
    "group_soft_threshold",
    "crammer_singer_loss", "fenchel_young_gap", "primal_objective", "dual_objective", "dual_features",
    "weights_from_dual", "weights_from_features", "dual_gradient",
]


def as_episode_vector(value, batch: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """Broadcast a float / 0-d / (B,) value to a (B,) tensor of ``like``'s dtype and device."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(batch)
    elif t.shape != (batch,):
        raise ValueError(f"{name}: expected a scalar or a tensor of shape ({batch},), got {tuple(t.shape)}")
    return t


def one_hot(labels: torch.Tensor, n_way: int, dtype: torch.dtype, check: bool = True) -> torch.Tensor:
    """(B, n) int labels in 0..n_way-1 -> (B, n, n_way) one-hot of ``dtype``; ``check=False``
    when the caller has checked the range already (it costs a host read)."""
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"support_labels: expected an integer tensor, got {labels.dtype}")
    if check and labels.numel():
        lo, hi = torch.stack([labels.min(), labels.max()]).tolist()     # one transfer
        if lo < 0 or hi >= n_way:
            raise ValueError(f"support_labels: expected values in 0..{n_way - 1}, got range {lo}..{hi}")
    # by comparison: torch's one_hot checks the range again on the host
    return (labels.long()[..., None] == torch.arange(n_way, device=labels.device)).to(dtype)


def row_norms(V: torch.Tensor) -> torch.Tensor:
    r"""||V_j||_2 over the last dim, with a gradient that is 0 (not NaN) at V_j = 0."""
    sq = (V * V).sum(-1)
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def column_norms(Vt: torch.Tensor) -> torch.Tensor:
    """Norms of the columns of class-major ``Vt = V^T`` (B, k, m) -> (B, m) (the rows of V)."""
    return torch.sqrt((Vt * Vt).sum(-2))


def bst_factor(norms: torch.Tensor, lambda1: torch.Tensor) -> torch.Tensor:
    r"""Row factor of block soft-thresholding, ``max(0, 1 - lambda1/||v||)`` (0 at v = 0),
    from the row norms (B, m) and ``lambda1`` (B,); no autograd subtleties (see
    :func:`group_soft_threshold` for the differentiable form)."""
    tiny = torch.finfo(norms.dtype).tiny
    return torch.clamp(1.0 - lambda1[:, None] / torch.clamp(norms, min=tiny), min=0.0)


def bst_jacobian(norms: torch.Tensor, lambda1: torch.Tensor):
    r"""Coefficients of the Jacobian of block soft-thresholding on a row,
    ``a I + c v v^T`` with ``a = 1 - lambda1/||v||``, ``c = lambda1/||v||^3`` on active rows
    (``||v|| > lambda1``) and ``a = c = 0`` elsewhere.  Returns ``(a, c, active)``, each
    shaped like ``norms`` (B, m)."""
    on = norms > lambda1[:, None]
    safe = torch.where(on, norms, torch.ones_like(norms))
    a = torch.where(on, 1.0 - lambda1[:, None] / safe, torch.zeros_like(norms))
    c = torch.where(on, lambda1[:, None] / safe ** 3, torch.zeros_like(norms))
    return a, c, on


def zero_weight_dual(Y: torch.Tensor, lambda2: torch.Tensor, dual_reg: torch.Tensor) -> torch.Tensor:
    r"""The dual optimum at ``W = 0``: ``proj_simplex(Y + (lambda2/rho) Delta)`` per row for
    rho > 0; for rho = 0 (where the optimal set is ``{Lam_{i y_i} = 0}``) the uniform
    distribution over the wrong classes.  ``lambda_max`` and the solvers' default
    starting point both use it."""
    Delta = 1.0 - Y
    k = Y.shape[-1]
    if k == 1:
        return Y.clone()
    pos = dual_reg > 0
    ratio = torch.where(pos, lambda2 / torch.where(pos, dual_reg, torch.ones_like(dual_reg)),
                        torch.zeros_like(lambda2))
    smooth = project_simplex(Y + ratio[:, None, None] * Delta)
    return torch.where(pos[:, None, None], smooth, Delta / (k - 1))


def group_soft_threshold(V: torch.Tensor, lambda1: torch.Tensor, scale=None) -> torch.Tensor:
    r"""Row-wise block soft-thresholding ``BST(v, t) = max(0, 1 - t/||v||) v`` (0 at v = 0).

    ``V`` (B, d, k), ``lambda1`` (B,); optional per-episode ``scale`` (B,) multiplies
    the result (folded into the row factor).  Rows with ``||v|| <= t`` are exactly zero.
    Without autograd a lean path works on the (B, d) row norms only.
    """
    if not (torch.is_grad_enabled() and (V.requires_grad or lambda1.requires_grad
                                         or (isinstance(scale, torch.Tensor) and scale.requires_grad))):
        factor = bst_factor(torch.linalg.vector_norm(V, dim=-1), lambda1)
        if scale is not None:
            factor = factor * scale[:, None]
        return V * factor.unsqueeze(-1)
    nrm = row_norms(V)
    safe = torch.where(nrm > 0, nrm, torch.ones_like(nrm))
    factor = torch.clamp(1.0 - lambda1[:, None] / safe, min=0.0)
    factor = torch.where(nrm > 0, factor, torch.zeros_like(factor))
    if scale is not None:
        factor = factor * scale[:, None]
    return V * factor.unsqueeze(-1)


def dual_features(X: torch.Tensor, Y: torch.Tensor, Lam: torch.Tensor) -> torch.Tensor:
    """``V = X^T (Y - Lam)``, (B, d, k) (computed class-major as ``((Y - Lam)^T X)^T``: a
    k x n by n x d product is ~2x faster than d x n by n x k for these skinny shapes,
    and the transposed result makes ``query @ W`` fast too)."""
    return ((Y - Lam).transpose(1, 2) @ X).transpose(1, 2)


def weights_from_dual(X, Y, Lam, lambda1, lambda2) -> torch.Tensor:
    """Primal-dual link ``W = BST_rows(X^T (Y - Lam), lambda1) / lambda2``."""
    return weights_from_features(dual_features(X, Y, Lam), lambda1, lambda2)


def weights_from_features(V, lambda1, lambda2) -> torch.Tensor:
    """``BST_rows(V, lambda1) / lambda2``; plain ``V / lambda2`` when lambda1 = 0 (constant)."""
    if not lambda1.requires_grad and not bool((lambda1 != 0).any()):
        return V / lambda2[:, None, None]
    return group_soft_threshold(V, lambda1, 1.0 / lambda2)


def _smooth(c: torch.Tensor, smooth: Optional[bool]) -> Optional[bool]:
    """``smooth`` as given (True: every c > 0), else read from the device: False when no
    c > 0 (None: some are, some are not)."""
    if smooth is not None:
        return smooth
    return None if bool((c > 0).any()) else False


def crammer_singer_loss(S: torch.Tensor, Y: torch.Tensor, c: torch.Tensor,
                        smooth: Optional[bool] = None) -> torch.Tensor:
    r"""Sum over samples of the (smoothed, c = rho/lambda2) Crammer-Singer hinge; (B,).

    ``S`` (B, n, k) scores ``x_i^T W``.  See the module docstring.  ``smooth``: True when
    every ``c > 0``, False when none is, if the caller knows it on the host (else it is
    read from the device).
    """
    Delta = 1.0 - Y
    s_y = (S * Y).sum(-1)
    smooth = _smooth(c, smooth)
    plain = (Delta + S).amax(-1) - s_y if smooth is not True else None
    if smooth is False:
        return plain.sum(-1)
    cs = torch.where(c > 0, c, torch.ones_like(c))[:, None, None]
    q = project_simplex(Y + (Delta + S) / cs)
    value = (q * (Delta + S)).sum(-1) - s_y - 0.5 * cs[..., 0] * ((q - Y) ** 2).sum(-1)
    if smooth is True:
        return value.sum(-1)
    return torch.where(c[:, None] > 0, value, plain).sum(-1)


def fenchel_young_gap(S: torch.Tensor, Y: torch.Tensor, Lam: torch.Tensor, c: torch.Tensor,
                      smooth: Optional[bool] = None) -> torch.Tensor:
    r"""Duality gap ``P(W(Lam)) - D(Lam)`` per episode, (B,), from the scores ``S = X W(Lam)``.

    When ``W = W(Lam)`` (the primal-dual link) the regulariser's Fenchel-Young gap
    vanishes and, with ``h_i(q) = <q, Delta_i + s_i> - c/2 ||q - y_i||^2``,

        P(W) - D(Lam) = sum_i [ max_{q in simplex} h_i(q) - h_i(Lam_i) ]  (each term >= 0),

    which is evaluated as ``<q* - Lam_i, z_i> - c/2 (||q* - y_i||^2 - ||Lam_i - y_i||^2)``
    without the cancellation of the large quadratic terms of ``P`` and ``D`` (this is
    what makes a 1e-5 relative gap measurable in float32).
    """
    z = (1.0 - Y) + S
    z = z - z.amax(-1, keepdim=True)
    smooth = _smooth(c, smooth)
    if smooth is False:
        return (z.amax(-1) - (Lam * z).sum(-1)).sum(-1)
    c3 = c.view(-1, 1, 1)
    cs = c3 if smooth is True else torch.where(c3 > 0, c3, 1.0)
    q = project_simplex(Y + z / cs)
    if smooth is not True:
        hard = (z.argmax(-1, keepdim=True) == torch.arange(z.shape[-1], device=z.device)).to(z.dtype)
        q = torch.where(c3 > 0, q, hard)
    # <q - Lam, z> - c/2 (||q - y||^2 - ||Lam - y||^2) = <q - Lam, z - (c/2) (q + Lam - 2 y)>
    g = ((q - Lam) * (z - (0.5 * c3) * (q + Lam - 2.0 * Y))).sum(-1)
    return g.clamp(min=0.0).sum(-1)


def primal_objective(W, X, Y, lambda1, lambda2, dual_reg) -> torch.Tensor:
    """P(W) per episode, (B,)."""
    c = dual_reg / lambda2
    S = X @ W
    return (crammer_singer_loss(S, Y, c) + lambda1 * row_norms(W).sum(-1)
            + 0.5 * lambda2 * (W * W).sum((-1, -2)))


def dual_objective(Lam, X, Y, lambda1, lambda2, dual_reg) -> torch.Tensor:
    """D(Lam) per episode, (B,)."""
    V = dual_features(X, Y, Lam)
    excess = torch.clamp(row_norms(V) - lambda1[:, None], min=0.0)
    return ((Lam * (1.0 - Y)).sum((-1, -2)) - 0.5 / lambda2 * (excess ** 2).sum(-1)
            - 0.5 * dual_reg / lambda2 * ((Lam - Y) ** 2).sum((-1, -2)))


def dual_gradient(Lam, X, Y, lambda1, lambda2, dual_reg) -> torch.Tensor:
    r"""``grad D(Lam) = Delta + X W(Lam) + (rho/lambda2) (Y - Lam)``, (B, n, k).

    This is the map whose projected fixed point ``Lam = proj(Lam + eta grad D)``
    the implicit backward differentiates.
    """
    W = weights_from_dual(X, Y, Lam, lambda1, lambda2)
    return (1.0 - Y) + X @ W + (dual_reg / lambda2)[:, None, None] * (Y - Lam)

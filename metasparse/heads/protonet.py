r"""ProtoNet head (Snell et al. 2017, as in MetaOptNet).

    logits_{q,l} = - scale * ||x_q - c_l||^2 / d     (c_l = mean of class-l support)

``normalize=True`` divides by the feature dimension d, as MetaOptNet's ProtoNetHead.
"""
from __future__ import annotations

import torch

from ..solvers.objectives import one_hot
from .base import Head, HeadFit

__all__ = ["ProtoNetHead", "class_means"]


def class_means(support: torch.Tensor, support_labels: torch.Tensor, n_way: int, check: bool = True) -> torch.Tensor:
    """(B, n_way, d) prototypes; an empty class raises ValueError (``check=False``: the
    caller has checked, :meth:`Head.check_support`)."""
    Y = one_hot(support_labels, n_way, support.dtype, check=check)   # (B, n, k)
    counts = Y.sum(1)                                             # (B, k)
    if check and bool((counts == 0).any()):
        raise ValueError("support_labels: every class 0..n_way-1 needs at least one support example")
    return (Y.transpose(1, 2) @ support) / counts[..., None]


class ProtoNetHead(Head):
    def __init__(self, normalize: bool = True, init_scale: float = 1.0, learn_scale: bool = True):
        super().__init__(init_scale, learn_scale)
        self.normalize = bool(normalize)

    def fit(self, support, support_labels, n_way) -> HeadFit:
        self.check_support(support, support_labels, n_way)
        protos = class_means(support, support_labels, n_way, check=False)
        # the nearest-mean rule is linear in the query plus a class bias; W = 2 c^T (/d)
        W = 2.0 * protos.transpose(1, 2)
        if self.normalize:
            W = W / support.shape[-1]
        fit = HeadFit(weights=W, active=(W.detach() != 0).any(-1))
        fit.prototypes = protos
        return fit

    def _scores(self, query, support, support_labels, n_way, fit) -> torch.Tensor:
        c = fit.prototypes
        d2 = ((query * query).sum(-1, keepdim=True) - 2.0 * query @ c.transpose(1, 2)
              + (c * c).sum(-1).unsqueeze(1))
        return -d2 / query.shape[-1] if self.normalize else -d2

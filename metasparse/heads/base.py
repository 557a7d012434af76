"""Common pieces of the few-shot heads: input checks, the learnable logit scale, results,
and the warning / error raised when an iterative head stops short of its tolerance."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..errors import SolverConvergenceError

__all__ = ["HeadFit", "HeadOutput", "Head", "NonFiniteFeaturesError", "SolverConvergenceWarning",
           "SolverConvergenceError", "unconverged_message"]


class SolverConvergenceWarning(RuntimeWarning):
    """Some episodes' inner solve stopped short of its tolerance (iteration cap or stagnation):
    their classifier, logits and gradients are those of an approximate solution."""


class NonFiniteFeaturesError(ValueError):
    """Features (or the logits they give) that are NaN or Inf: a head cannot fit them."""




def unconverged_message(n_bad: int, n_total: int, worst_rel_gap: float, tol: Optional[float]) -> str:
    """``"3 of 80 episodes stopped short of the solver tolerance (...)"`` with a hint."""
    bound = f" > tol {tol:g}" if tol is not None else ""
    return (f"{n_bad} of {n_total} episodes stopped short of the solver tolerance (worst relative "
            f"duality gap {worst_rel_gap:.3g}{bound}); raise the head's max_iter or its tol")


def _all_finite(x: torch.Tensor) -> bool:
    """True when no entry is NaN/Inf (one reduction; the full check only if the sum is not finite)."""
    with torch.no_grad():
        if bool(torch.isfinite(x.sum())):
            return True
        return bool(torch.isfinite(x).all())


@dataclass
class HeadFit:
    """What a head learned from the support set of each episode (leading dim B).

    ``weights`` (B, d, n_way) linear classifier (None for ProtoNet, which is not
    linear in the query); ``active`` (B, d) bool: features whose row of W is non-zero.
    SVM heads also fill ``dual`` (B, n_support, n_way), ``lambda1`` (B,), ``gap`` (B,)
    (duality gap at the returned point), ``rel_gap``, ``n_iter`` and ``lambda_max``.

    Heads that solve their problem iteratively (the SVM heads, every solver) also fill
    ``converged`` (B,) bool, with ``rel_gap``: True when the episode's ``rel_gap <= tol``
    (``tol`` the relative-gap tolerance it was judged against), False when the solve
    stopped short (iteration cap or stagnation), so its W is an approximate solution.
    ``None`` (both) for closed-form heads (ridge, ProtoNet).
    """

    weights: Optional[torch.Tensor]
    active: torch.Tensor
    dual: Optional[torch.Tensor] = None
    lambda1: Optional[torch.Tensor] = None
    gap: Optional[torch.Tensor] = None
    rel_gap: Optional[torch.Tensor] = None
    n_iter: Optional[torch.Tensor] = None
    lambda_max: Optional[torch.Tensor] = None
    converged: Optional[torch.Tensor] = None
    tol: Optional[float] = None

    @property
    def unused_fraction(self) -> torch.Tensor:
        """(B,) fraction of features whose row of W is exactly zero."""
        return 1.0 - self.active.to(torch.float32).mean(-1)


@dataclass
class HeadOutput:
    """``logits`` (B, n_query, n_way) and the :class:`HeadFit` they came from."""

    logits: torch.Tensor
    fit: HeadFit


class LinearScores(torch.autograd.Function):
    """``query @ W`` whose backward computes ``grad_W`` class-major as ``(g^T query)^T``
    (a k x n_q by n_q x d product: ~3x faster on CPU than ``query^T g`` for k = 5)."""

    @staticmethod
    def forward(ctx, query, W):
        ctx.save_for_backward(query, W)
        return query @ W

    @staticmethod
    def backward(ctx, g):
        query, W = ctx.saved_tensors
        gq = g @ W.transpose(1, 2) if ctx.needs_input_grad[0] else None
        gW = (g.transpose(1, 2) @ query).transpose(1, 2) if ctx.needs_input_grad[1] else None
        return gq, gW


class Head(nn.Module):
    r"""Base class: ``logits = scale * score(query)`` with MetaOptNet's learnable scalar scale.

    Subclasses implement :meth:`fit` and :meth:`_scores`.
    """

    def __init__(self, init_scale: float = 1.0, learn_scale: bool = True):
        super().__init__()
        scale = torch.tensor([float(init_scale)])
        if learn_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    # ----------------------------------------------------------------- checks
    @staticmethod
    def check_support(support: torch.Tensor, support_labels: torch.Tensor, n_way: int) -> None:
        if not isinstance(support, torch.Tensor) or support.dim() != 3:
            raise ValueError(f"support: expected a (B, n_support, d) tensor, got "
                             f"{getattr(support, 'shape', type(support))}")
        if support.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"support: the heads take float32 or float64 features, got {support.dtype} "
                             f"(convert with .float(); half precision is too coarse for the inner solvers)")
        if support.shape[1] == 0:
            raise ValueError("support: no support examples (n_support = 0); an episode needs at least one per class")
        if support.shape[2] == 0:
            raise ValueError("support: features of dimension d = 0; the backbone must output at least one feature")
        if support_labels.shape != support.shape[:2]:
            raise ValueError(f"support_labels: expected shape {tuple(support.shape[:2])}, got "
                             f"{tuple(support_labels.shape)}")
        if int(n_way) < 2:
            raise ValueError(f"n_way: expected >= 2, got {n_way}")
        if support_labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"support_labels: expected an integer tensor, got {support_labels.dtype}")
        # one device-to-host transfer for everything the host must know about the inputs
        with torch.no_grad():
            labels = support_labels.long()
            counts = (labels.unsqueeze(-1) == torch.arange(int(n_way), device=labels.device)).sum(1)   # (B, k)
            finite, lo, hi, least = torch.stack([torch.isfinite(support.sum()).long(), labels.min(), labels.max(),
                                                 counts.min()]).tolist()
        if lo < 0 or hi >= n_way:
            raise ValueError(f"support_labels: expected values in 0..{n_way - 1}, got range {lo}..{hi}")
        if least == 0:
            raise ValueError(f"support_labels: every class 0..{n_way - 1} needs at least one support example "
                             f"in every episode; an episode has a class without one")
        if not finite and not bool(torch.isfinite(support).all()):   # the sum alone may overflow
            raise NonFiniteFeaturesError("support: features contain NaN or Inf (check the backbone output)")

    @staticmethod
    def check_query(query: torch.Tensor, support: torch.Tensor) -> None:
        if not isinstance(query, torch.Tensor) or query.dim() != 3 or query.shape[0] != support.shape[0] \
                or query.shape[2] != support.shape[2]:
            raise ValueError(f"query: expected a (B, n_query, d) tensor matching support "
                             f"{tuple(support.shape)}, got {getattr(query, 'shape', type(query))}")
        if query.dtype != support.dtype:
            raise ValueError(f"query: dtype {query.dtype} differs from support dtype {support.dtype}")
        # finiteness of the query is checked on the (much smaller) scores in predict():
        # a NaN or Inf query entry always makes its scores NaN or Inf

    # -------------------------------------------------------------------- API
    def fit(self, support, support_labels, n_way) -> HeadFit:  # pragma: no cover - abstract
        raise NotImplementedError

    def _scores(self, query, support, support_labels, n_way, fit: HeadFit) -> torch.Tensor:
        """Unscaled scores; default: the linear classifier ``query @ W``."""
        return LinearScores.apply(query, fit.weights)

    def predict(self, query, support, support_labels, n_way) -> HeadOutput:
        """Fit on the support set and score the queries: logits and the fit in one call."""
        self.check_query(query, support)
        fit = self.fit(support, support_labels, n_way)
        scores = self._scores(query, support, support_labels, n_way, fit)
        if not _all_finite(scores):
            if not _all_finite(query):
                raise NonFiniteFeaturesError("query: features contain NaN or Inf (check the backbone output)")
            raise NonFiniteFeaturesError("head: non-finite logits from finite features "
                                         "(overflow: rescale the features)")
        return HeadOutput(logits=self.scale.to(scores.dtype) * scores, fit=fit)

    def forward(self, query, support, support_labels, n_way) -> torch.Tensor:
        """``logits`` (B, n_query, n_way)."""
        return self.predict(query, support, support_labels, n_way).logits

"""A few-shot model = backbone (features) + head (base learner on the support set).

For one batch of ``B`` episodes:

    F_s = f_theta(support) in R^{B x NK x d},   F_q = f_theta(query) in R^{B x NQ x d},
    logits = head(F_q, F_s, support_labels, N) in R^{B x NQ x N}.

As in MetaOptNet, support and query images go through the backbone in two calls
(batch-norm statistics of training mode are those of each set). The backbone may
run under bf16 autocast (``amp=True``); the features are cast to ``head_dtype``
(float32 by default, float64 for a tighter solve) before the head.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
from torch import nn

__all__ = ["FewShotModel"]


class FewShotModel(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, amp: bool = False,
                 head_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.amp = bool(amp)
        self.head_dtype = head_dtype

    def _autocast(self, x: torch.Tensor):
        if not self.amp:
            return nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a (B, M, ...) batch of examples: (B, M, d) in ``head_dtype``."""
        b, m = x.shape[:2]
        with self._autocast(x):
            feats = self.backbone(x.reshape(b * m, *x.shape[2:]))
        return feats.reshape(b, m, -1).to(self.head_dtype)

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                n_way: int, head: Optional[nn.Module] = None):
        """Returns ``(logits (B, NQ, N), fit)`` with ``fit`` the head's ``HeadFit``.

        ``head`` overrides the model's own head (test-time head swap)."""
        f_s = self.embed(support)
        f_q = self.embed(query)
        out = (head if head is not None else self.head).predict(f_q, f_s, support_labels, n_way)
        return out.logits, out.fit

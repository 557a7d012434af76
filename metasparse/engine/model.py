"""A few-shot model = backbone (features) + head (base learner on the support set).

For one batch of ``B`` episodes:

    F_s = f_theta(support) in R^{B x NK x d},   F_q = f_theta(query) in R^{B x NQ x d},
    logits = head(F_q, F_s, support_labels, N) in R^{B x NQ x N}.

As in MetaOptNet, support and query images go through the backbone in two calls
(batch-norm statistics of training mode are those of each set). The backbone may
run under bf16 autocast (``amp=True``); the features are cast to ``head_dtype``
(float32 by default, float64 for a tighter solve) before the head.

GPU fast path (what :func:`metasparse.engine.train.train` turns on for CUDA):
:meth:`FewShotModel.use_channels_last` stores a convolutional backbone's weights in the
channels-last layout and feeds it images in that layout (cuDNN's fast NHWC kernels; the
features are the same up to float rounding, their order is unchanged: ``flatten`` is
logical); :meth:`FewShotModel.compile_backbone` runs the backbone through ``torch.compile``
with a dynamic batch dimension (support and query sets, training and evaluation batches
share one graph per mode). The compiled module is kept outside the module tree, so
``state_dict()`` (checkpoints) holds the plain backbone's keys, never ``_orig_mod.``.
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
        self.channels_last = False
        self.__dict__["_compiled_backbone"] = None   # not a submodule: no ``_orig_mod.`` keys

    def use_channels_last(self) -> bool:
        """Channels-last weights and 4-d inputs for a backbone with 2-d convolutions (True),
        else nothing (False). Parameters keep their identity (an optimizer stays valid)."""
        if not any(isinstance(m, nn.Conv2d) for m in self.backbone.modules()):
            return False
        self.backbone.to(memory_format=torch.channels_last)
        self.channels_last = True
        return True

    def compile_backbone(self, **options) -> None:
        """Run the backbone through ``torch.compile(backbone, **options)`` from now on (the
        batch dimension of every input is marked dynamic: one graph for all batch sizes).
        Imports ``torch._dynamo`` (seconds), so only call it when compiling is wanted."""
        import torch._dynamo  # noqa: F401  (lazy: importing it costs seconds)
        self.__dict__["_compiled_backbone"] = torch.compile(self.backbone, **options)

    def _backbone_fn(self, x: torch.Tensor):
        compiled = self.__dict__.get("_compiled_backbone")
        if compiled is None or compiled._orig_mod is not self.backbone:   # not compiled, or backbone replaced
            return self.backbone
        if x.shape[0] > 1:   # size 0 / 1 are specialised by torch.compile
            torch._dynamo.mark_dynamic(x, 0)
        return compiled

    def _autocast(self, x: torch.Tensor):
        if not self.amp:
            return nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a (B, M, ...) batch of examples: (B, M, d) in ``head_dtype``.  A plain
        batch of images (M, C, H, W) (4-d: no episode dimension) gives (M, d)."""
        if x.dim() == 4:
            return self.embed(x.unsqueeze(0))[0]
        b, m = x.shape[:2]
        flat = x.reshape(b * m, *x.shape[2:])
        if self.channels_last and flat.dim() == 4:
            flat = flat.contiguous(memory_format=torch.channels_last)
        with self._autocast(x):
            feats = self._backbone_fn(flat)(flat)
        return feats.reshape(b, m, -1).to(self.head_dtype)

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                n_way: int, head: Optional[nn.Module] = None):
        """Returns ``(logits (B, NQ, N), fit)`` with ``fit`` the head's ``HeadFit``.

        ``head`` overrides the model's own head (test-time head swap)."""
        f_s = self.embed(support)
        f_q = self.embed(query)
        out = (head if head is not None else self.head).predict(f_q, f_s, support_labels, n_way)
        return out.logits, out.fit

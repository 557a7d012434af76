r"""MetaOptNet-RR / R2D2 head: closed-form ridge regression on one-hot targets.

    W = argmin_W ||X W - Y||_F^2 + lambda ||W||_F^2 = X^T (X X^T + lambda I)^{-1} Y

(the dual form: an n x n solve, n = support size), ``logits = scale * query @ W``.
MetaOptNet's default ``lambda_reg = 50``.
"""
from __future__ import annotations

import math

import torch

from ..solvers.objectives import one_hot
from .base import Head, HeadFit

__all__ = ["RidgeHead"]


class RidgeHead(Head):
    def __init__(self, lambda_reg: float = 50.0, init_scale: float = 1.0, learn_scale: bool = True):
        super().__init__(init_scale, learn_scale)
        if not (float(lambda_reg) > 0 and math.isfinite(float(lambda_reg))):
            raise ValueError(f"lambda_reg: expected a finite value > 0, got {lambda_reg}")
        self.lambda_reg = float(lambda_reg)

    def fit(self, support, support_labels, n_way) -> HeadFit:
        self.check_support(support, support_labels, n_way)
        B, n, _ = support.shape
        Y = one_hot(support_labels, n_way, support.dtype, check=False)   # checked by check_support
        K = support @ support.transpose(1, 2)
        K = K + self.lambda_reg * torch.eye(n, dtype=support.dtype, device=support.device)
        # K is symmetric positive definite: Cholesky (differentiable; batched LU in
        # torch 2.14.1 returns corrupt pivots on CPU with several threads for n >~ 200)
        W = support.transpose(1, 2) @ torch.cholesky_solve(Y, torch.linalg.cholesky(K))
        return HeadFit(weights=W, active=(W.detach() != 0).any(-1))

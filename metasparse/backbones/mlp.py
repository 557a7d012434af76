"""A multilayer perceptron encoder for vector data (the synthetic source).

``f(x) = A_L s(... s(A_1 x + b_1) ...) + b_L`` with ``s`` = LeakyReLU(0.1) (invertible,
so an MLP can in principle undo an invertible-MLP mixing ``x = g(z)``). ``out_dim``
is the size of the learned representation (set it to the number of latent factors
m to score it against the ground truth z with MCC). Optional LayerNorm-free and
BatchNorm-free on purpose: every example is encoded independently, so results do not
depend on how episodes are batched or sharded across processes.

``unit_rows=True``: the last layer's weight rows are divided by their norms,
``f_i(x) = a_i^T h(x) / ||a_i|| + b_i``, so each learned feature is a unit-norm
functional of the last hidden layer (of ``x`` itself with no hidden layer).  This
removes the encoder's freedom to rescale features, which a sparse head's penalty
(relative to ``lambda_max``) otherwise lets it trade against sparsity; the demo uses it.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (128, 128),
                 negative_slope: float = 0.1, dropout: float = 0.0, unit_rows: bool = False):
        super().__init__()
        self.unit_rows = bool(unit_rows)
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"MLP: in_dim and out_dim must be positive, got {in_dim}, {out_dim}")
        if isinstance(hidden, (str, bytes)) or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1
                                                        for h in hidden):
            raise ValueError(f"MLP: hidden must be a list of layer widths >= 1, got {hidden!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"MLP: dropout must be in [0, 1), got {dropout}")
        dims = [int(in_dim), *[int(h) for h in hidden], int(out_dim)]
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.LeakyReLU(negative_slope))
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)

    def output_dim(self, image_size=None) -> int:
        return self.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.unit_rows:
            return self.net(x.flatten(1))
        h = self.net[:-1](x.flatten(1))
        last = self.net[-1]
        weight = last.weight / last.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return nn.functional.linear(h, weight, last.bias)

"""A multilayer perceptron encoder for vector data (the synthetic source).

``f(x) = A_L s(... s(A_1 x + b_1) ...) + b_L`` with ``s`` = LeakyReLU(0.1) (invertible,
so an MLP can in principle undo an invertible-MLP mixing ``x = g(z)``). ``out_dim``
is the size of the learned representation (set it to the number of latent factors
m to score it against the ground truth z with MCC). Optional LayerNorm-free and
BatchNorm-free on purpose: every example is encoded independently, so results do not
depend on how episodes are batched or sharded across processes.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (128, 128),
                 negative_slope: float = 0.1, dropout: float = 0.0):
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"MLP: in_dim and out_dim must be positive, got {in_dim}, {out_dim}")
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
        return self.net(x.flatten(1))

"""DropBlock (Ghiasi et al. 2018) as used in MetaOptNet's ResNet-12.

During training, seeds are drawn i.i.d. Bernoulli(gamma) on the ``(H-b+1) x (W-b+1)``
positions where a whole ``b x b`` block fits; every seed zeroes the ``b x b`` block it
starts, and the surviving activations are rescaled by ``numel / n_kept`` so that
the expected activation is unchanged:

    gamma = (1 - keep_rate) / b^2 * H W / ((H - b + 1) (W - b + 1)).

MetaOptNet ramps the drop rate linearly from 0 to ``drop_rate`` over the first
``ramp_steps`` forward passes (40000 = 20 * 2000 there):

    keep_rate(t) = max(1 - drop_rate * t / ramp_steps, 1 - drop_rate).

The step counter is a registered buffer, so it is saved in checkpoints and a resumed
run continues the ramp where it stopped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DropBlock"]


class DropBlock(nn.Module):
    def __init__(self, block_size: int, drop_rate: float, ramp_steps: int = 40000):
        super().__init__()
        if block_size < 1:
            raise ValueError(f"DropBlock: block_size must be >= 1, got {block_size}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"DropBlock: drop_rate must be in [0, 1), got {drop_rate}")
        self.block_size = int(block_size)
        self.drop_rate = float(drop_rate)
        self.ramp_steps = int(ramp_steps)
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def keep_rate(self) -> float:
        t = int(self.num_batches_tracked)
        if self.ramp_steps <= 0:
            return 1.0 - self.drop_rate
        return max(1.0 - self.drop_rate * t / self.ramp_steps, 1.0 - self.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_rate == 0.0:
            return x
        self.num_batches_tracked += 1
        b = self.block_size
        n, c, h, w = x.shape
        b_eff = min(b, h, w)
        keep = self.keep_rate()
        gamma = (1.0 - keep) / b_eff ** 2 * (h * w) / ((h - b_eff + 1) * (w - b_eff + 1))
        if gamma <= 0.0:
            return x
        seeds = torch.bernoulli(torch.full((n, c, h - b_eff + 1, w - b_eff + 1), min(gamma, 1.0),
                                           device=x.device, dtype=x.dtype))
        # a seed at (i, j) drops the block [i, i+b) x [j, j+b): dilate with a max-pool
        pad = b_eff - 1
        dropped = F.max_pool2d(F.pad(seeds, (pad, pad, pad, pad)), kernel_size=b_eff, stride=1)
        mask = 1.0 - dropped
        kept = mask.sum()
        scale = mask.numel() / kept.clamp_min(1.0)
        return x * mask * scale

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, drop_rate={self.drop_rate}, ramp_steps={self.ramp_steps}"

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

No host sync: ``keep_rate(t)`` and ``gamma`` are computed on the counter's device as
float64 tensors, with the arithmetic of the formulas above in the same order as Python
floats would do it (``1 - (drop_rate * t) / ramp_steps``, then ``(1 - keep) / b^2 * (H W)
/ ((H-b+1)(W-b+1))``, ``min(gamma, 1)``), and cast to ``x.dtype`` only for the Bernoulli
probabilities, which are therefore bit-identical to those of a Python-float computation;
the forward pass never reads the counter on the host (no ``int(tensor)``, no branch on its
value), so it neither stalls a GPU nor breaks a ``torch.compile`` graph. The seeds take one
``torch.bernoulli`` draw of the ``(n, c, H-b+1, W-b+1)`` probabilities at every training
forward pass. (A Python-side shortcut that skipped the draw when ``gamma == 0`` is gone: with
the counter incremented before use, ``gamma`` is positive from the first pass for every
``ramp_steps`` below ``drop_rate * 2**52``; at ``gamma == 0`` the draw keeps every unit and
the scale is 1, so the output is still ``x``.)
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
        """``keep_rate(t)`` at the current counter, as a Python float (reads the counter on
        the host: for inspection; :meth:`forward` uses :meth:`keep_rate_tensor`)."""
        return float(self.keep_rate_tensor())

    def keep_rate_tensor(self) -> torch.Tensor:
        """``keep_rate(t)`` as a float64 0-dim tensor on the counter's device (no host sync)."""
        t = self.num_batches_tracked
        floor = 1.0 - self.drop_rate
        if self.ramp_steps <= 0:
            return torch.full((), floor, dtype=torch.float64, device=t.device)
        return (1.0 - self.drop_rate * t.to(torch.float64) / self.ramp_steps).clamp_min(floor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_rate == 0.0:
            return x
        self.num_batches_tracked += 1
        b = self.block_size
        n, c, h, w = x.shape
        b_eff = min(b, h, w)
        keep = self.keep_rate_tensor()
        gamma = (1.0 - keep) / b_eff ** 2 * (h * w) / ((h - b_eff + 1) * (w - b_eff + 1))
        shape = (n, c, h - b_eff + 1, w - b_eff + 1)
        probs = gamma.clamp_max(1.0).to(x.dtype).expand(shape).contiguous()
        seeds = torch.bernoulli(probs)
        # a seed at (i, j) drops the block [i, i+b) x [j, j+b): dilate with a max-pool
        pad = b_eff - 1
        dropped = F.max_pool2d(F.pad(seeds, (pad, pad, pad, pad)), kernel_size=b_eff, stride=1)
        mask = 1.0 - dropped
        kept = mask.sum()
        scale = mask.numel() / kept.clamp_min(1.0)
        return x * mask * scale

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, drop_rate={self.drop_rate}, ramp_steps={self.ramp_steps}"

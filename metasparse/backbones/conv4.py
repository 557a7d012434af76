"""Conv-4 (Vinyals et al. 2016; Snell et al. 2017), MetaOptNet's "ProtoNet" embedding.

Four blocks ``maxpool_2x2(ReLU(BN(conv3x3(x))))`` of ``hidden`` channels (the last one
``out_channels``), flattened: 64 * 5 * 5 = 1600 features at 84x84, 64 * 2 * 2 = 256 at 32x32.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["Conv4"]


class Conv4(nn.Module):
    def __init__(self, in_channels: int = 3, hidden: int = 64, out_channels: int = 64, avg_pool: bool = False):
        super().__init__()
        chans = [in_channels, hidden, hidden, hidden, out_channels]
        blocks = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.encoder = nn.Sequential(*blocks)
        self.avg_pool = bool(avg_pool)
        self.out_channels = out_channels

    def output_dim(self, image_size: int) -> int:
        side = image_size
        for _ in range(4):
            side //= 2
        return self.out_channels * (1 if self.avg_pool else side * side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        return h.mean(dim=(2, 3)) if self.avg_pool else h.flatten(1)

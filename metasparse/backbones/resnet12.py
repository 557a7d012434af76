"""ResNet-12 as in MetaOptNet (Lee et al. 2019).

Four residual stages of widths ``(64, 160, 320, 640)``. A stage maps ``x`` to

    y = maxpool_2x2( LeakyReLU_0.1( BN(conv3(h2)) + BN(conv1x1(x)) ) ),
    h1 = LeakyReLU_0.1(BN(conv1(x))),  h2 = LeakyReLU_0.1(BN(conv2(h1))),

with 3x3 convolutions without bias, followed by dropout (stages 1-2) or DropBlock
(stages 3-4, block size 5 at 84x84 and 2 at 32x32). Features are flattened without
pooling by default (MetaOptNet): 640 * 5 * 5 = 16000 at 84x84, 640 * 2 * 2 = 2560 at
32x32; ``avg_pool=True`` averages the last map instead (640-d).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .dropblock import DropBlock

__all__ = ["ResNet12", "ResidualStage"]


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False)


class ResidualStage(nn.Module):
    """One ResNet-12 stage: three 3x3 conv-BN(-LeakyReLU) layers, a 1x1 shortcut, max-pool."""

    def __init__(self, cin: int, cout: int, drop_rate: float = 0.0, drop_block: bool = False,
                 block_size: int = 1, negative_slope: float = 0.1, ramp_steps: int = 40000):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.conv3, self.bn3 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.LeakyReLU(negative_slope)
        self.pool = nn.MaxPool2d(2)
        self.drop_rate = float(drop_rate)
        self.dropblock = DropBlock(block_size, drop_rate, ramp_steps) if (drop_block and drop_rate > 0) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn1(self.conv1(x)))
        h = self.act(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        out = self.pool(self.act(h + self.shortcut(x)))
        if self.dropblock is not None:
            out = self.dropblock(out)
        elif self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class ResNet12(nn.Module):
    """MetaOptNet's ResNet-12 feature extractor.

    Parameters
    ----------
    in_channels: image channels (3).
    widths:      stage widths, MetaOptNet's (64, 160, 320, 640) by default.
    drop_rate:   dropout rate (stages 1-2) and final DropBlock rate (stages 3-4); 0.1 in MetaOptNet.
    dropblock_size: DropBlock block size (5 for 84x84 images, 2 for 32x32).
    avg_pool:    average-pool the last feature map (640-d) instead of flattening it.
    ramp_steps:  forward passes over which DropBlock ramps up (MetaOptNet: 40000).
    """

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (64, 160, 320, 640),
                 drop_rate: float = 0.1, dropblock_size: int = 5, avg_pool: bool = False,
                 negative_slope: float = 0.1, ramp_steps: int = 40000):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4:
            raise ValueError(f"ResNet12: widths must have 4 entries, got {widths}")
        stages = []
        cin = in_channels
        for i, w in enumerate(widths):
            stages.append(ResidualStage(cin, w, drop_rate=drop_rate, drop_block=i >= 2,
                                        block_size=dropblock_size, negative_slope=negative_slope,
                                        ramp_steps=ramp_steps))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.avg_pool = bool(avg_pool)
        self.widths = widths
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def output_dim(self, image_size: int) -> int:
        """Feature dimension for square ``image_size`` inputs (four 2x2 floor-poolings)."""
        side = image_size
        for _ in range(4):
            side //= 2
        return self.widths[-1] * (1 if self.avg_pool else side * side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(x)
        if self.avg_pool:
            return h.mean(dim=(2, 3))
        return h.flatten(1)

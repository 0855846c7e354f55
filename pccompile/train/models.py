"""The default model of ``pccompile train --data digits``: a small residual CNN.

Its skip connection joins two paths of different depths, so converting it inserts identity
vertices (levelling) and Z-IL's exactness on it is not trivial.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ResidualCNN"]


class ResidualCNN(nn.Module):
    """conv stem, one residual block with BatchNorm, global average pool, linear head.

    Args:
        in_channels: image channels (1 for digits and MNIST, 3 for CIFAR-10).
        num_classes: outputs of the head.
        width: channels of the convolutions.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        c = width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()
        )
        self.block = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1),
        )
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = F.relu(h + self.block(h))
        return self.head(h.mean((2, 3)))

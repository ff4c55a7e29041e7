"""Models written for the training recipes (recipes.py), sized for a 2-core CPU."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["FmnistResNet"]


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class _Stage(nn.Module):
    """conv (widen) -> 2x2 max pool -> residual pair of convs: x + conv(conv(x))."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
                                  nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.res = nn.Sequential(*_conv_bn(cout, cout), *_conv_bn(cout, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)                 # (N, cin, H, W) -> (N, cout, H/2, W/2)
        return x + self.res(x)


class FmnistResNet(nn.Module):
    """A small residual CNN for 28x28 greyscale (the fmnist-94 recipe), ResNet-9 style:
    stem conv, then stages of conv -> pool -> residual pair, global max pool, linear.

    Default widths (32, 64, 128): 28 -> 14 -> 7 -> 3 spatially; about 0.5 M parameters.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1,
                 widths: tuple[int, ...] = (32, 64, 128), dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_chans, widths[0]))
        chans = [widths[0], *widths]
        self.stages = nn.Sequential(*[_Stage(a, b) for a, b in zip(chans, chans[1:])])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))                   # (N, 1, 28, 28) -> (N, W, 3, 3)
        x = self.pool(x).flatten(1)                     # (N, W, 3, 3) -> (N, W)
        return self.fc(self.dropout(x))                 # (N, W) -> (N, classes)

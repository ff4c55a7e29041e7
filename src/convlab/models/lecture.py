"""The lecture's own models, written as the lecture writes them."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["MnistLinear", "MnistMLP", "MnistCNN", "LeNet5", "SmallCNN"]


class MnistLinear(nn.Module):
    """mnist1: one linear layer from the pixels to the classes (784 -> 10: 7,850 weights)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, input_size: int = 28) -> None:
        super().__init__()
        self.network = nn.Linear(in_chans * input_size * input_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.flatten(1))  # (N, C, H, W) -> (N, C*H*W) -> (N, classes)


class MnistMLP(nn.Module):
    """mnist2: 784 -> 20 hidden units with BatchNorm and ReLU -> 10."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, input_size: int = 28,
                 hidden: int = 20) -> None:
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(in_chans * input_size * input_size, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.flatten(1))


class MnistCNN(nn.Module):
    """mnist3 (the lecture's OneConvLayer): 32 5x5 kernels, BatchNorm, ReLU, 2x2 max pool, linear.

    For 28x28 greyscale and 10 classes: 832 + 64 + 62,730 = 63,626 parameters.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, input_size: int = 28,
                 nkernels: int = 32) -> None:
        super().__init__()
        self.network1 = nn.Sequential(
            nn.Conv2d(in_chans, nkernels, kernel_size=5, stride=1, padding=2),
            nn.BatchNorm2d(nkernels),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2),
        )
        side = input_size // 2
        self.network2 = nn.Linear(nkernels * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network1(x)                  # (N, C, 28, 28) -> (N, 32, 14, 14)
        return self.network2(out.flatten(1))    # (N, 32*14*14) -> (N, classes)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) on 32x32 input: C1-S2-C3-S4-C5-F6-output.

    Subsampling is 2x2 average pooling and the squashing function tanh, as in the
    paper; C3 is fully connected to S2 (the usual simplification). 61,706 parameters
    for 10 classes.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, kernel_size=5), nn.Tanh(),   # C1: 32 -> 28
            nn.AvgPool2d(2),                                    # S2: 28 -> 14
            nn.Conv2d(6, 16, kernel_size=5), nn.Tanh(),         # C3: 14 -> 10
            nn.AvgPool2d(2),                                    # S4: 10 -> 5
            nn.Conv2d(16, 120, kernel_size=5), nn.Tanh(),       # C5: 5 -> 1
        )
        self.classifier = nn.Sequential(nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))  # (N, 120, 1, 1) -> (N, 120)


class SmallCNN(nn.Module):
    """The lecture's Keras example: four conv(3x3)+max-pool blocks (32, 64, 128, 128),
    dropout 0.5, dense 512 and 128, then the classes. 'same' padding, so any input of
    at least 16x16 works; the flattened size follows from `input_size`.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, input_size: int = 64,
                 dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = [in_chans, 32, 64, 128, 128]
        for cin, cout in zip(chans, chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        side = input_size
        for _ in range(4):
            side //= 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(128 * side * side, 512), nn.ReLU(),
            nn.Linear(512, 128), nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (N, 128, H/16, W/16) -> (N, classes)
